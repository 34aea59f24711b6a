"""Real servers for tests: a uvicorn subprocess (``loss-service serve``) or a uvicorn thread
running ``create_app(settings)``; both on 127.0.0.1 with a free port, both stopped by the test."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer

import httpx
import numpy as np
from PIL import Image


class StubHTTPServer(ThreadingHTTPServer):
    """A threaded ``http.server`` for stand-in servers whose clients may leave mid-answer (a
    timeout, a truncated download): that disconnect is expected, so it is not printed to stderr,
    where it would land in whichever test runs next. Any other handler error still is."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if (
                httpx.get(f"{url}/readyz", timeout=2).status_code in (200, 503)
                and httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            ):
                if httpx.get(f"{url}/readyz", timeout=2).json().get("device"):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not up after {timeout} s")


class SubprocessServer:
    """``python -m service.cli serve`` with the given flags, as users run it."""

    def __init__(self, *flags: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *flags]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> SubprocessServer:
        """Start the process without waiting for it, so that several servers start side by side."""
        # A file, not a pipe: an unread pipe fills up under load and stalls the server's logging.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        return self

    def __enter__(self) -> SubprocessServer:
        if self.process is None:
            self.start()
        wait_ready(self.url, process=self.process)
        return self

    @property
    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()


class ThreadServer:
    """uvicorn serving an app object in a background thread (lets tests patch the app)."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=10)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def metric_value(metrics_text: str, name: str, labels: str = "") -> float:
    """Sum the samples of a Prometheus metric whose name and label text match."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
