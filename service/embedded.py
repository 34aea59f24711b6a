"""``eval`` without ``--url``: the server's own app, started in this process on a free port of
127.0.0.1 and stopped when the run ends. Every value is computed by the steps a server runs
(plan, batcher, ``registry.compute``, encode), so it equals a remote server's bit for bit when
both batch alike (float32 networks' last bits follow the batch size), and nothing listens
beyond the loopback interface. Only the backbones the metrics read are loaded.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

READY_TIMEOUT_S = 600.0


def backbones_for(metrics: list[str]) -> list[str]:
    """The backbones the metrics read with their default options (any kind of metric)."""
    from losses.plan import make_plan
    from losses.registry import KINDS

    plan = make_plan(metrics, {}, kinds=KINDS)
    return sorted(plan.backbones())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def embedded_server(
    metrics: list[str], device: str = "auto", weights_dir: str | None = None, random_weights: bool = False
) -> Iterator[str]:
    """The URL of a server running in this process for the duration of the block."""
    import uvicorn

    from .server.app import create_app
    from .server.settings import Settings

    port = _free_port()
    models = backbones_for(metrics)
    settings = Settings(
        host="127.0.0.1", port=port, device=device, weights_dir=weights_dir, random_weights=random_weights, models=",".join(models)
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="embedded-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start (its log says why)")
            time.sleep(0.05)
        httpx.get(f"{url}/healthz", timeout=10).raise_for_status()
        yield url
    finally:
        server.should_exit = True
        thread.join(60)
