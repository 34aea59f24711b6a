"""The Ray side shared by ``eval --ray``'s modes and ``filter --ray``: joining a cluster, the
streaming pipeline (decode tasks → a pool of actors → Parquet), reading the rows back, and the
workers' errors said in one line."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..client.eval.options import EvalOptions

SETS_DIR = "sets"  # under the Parquet folder: the set metrics' feature rows

DECODE_CPUS = 0.25
ITEMS_PER_BLOCK = 64


class RayUnavailable(RuntimeError):
    """The cluster at the given address could not be joined (or a local instance started)."""


def parquet_dir(options: EvalOptions) -> Path:
    return Path(options.parquet) if options.parquet else Path(options.out).with_suffix(".parquet")


def read_rows(directory: Path) -> list[dict]:
    """Every row the Parquet files under ``directory`` hold (a file cut short by a stopped driver
    is skipped: its rows are scored again)."""
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(directory.glob("*.parquet")) if directory.exists() else ():
        try:
            rows += pq.read_table(path).to_pylist()
        except OSError:
            path.unlink()
    return rows


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to ``[ray://]host:port`` within ``timeout_s``: Ray itself keeps retrying an
    address that refuses for minutes before it gives up."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise RayUnavailable(f"--ray {address}: not an address (host:port, ray://host:port or auto)") from None
    except OSError as exc:
        raise RayUnavailable(f"--ray {address}: no Ray cluster could be reached there ({exc})") from None


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """Join the cluster at ``address`` (``auto`` for the one this machine belongs to), or start a
    local instance; a cluster that cannot be reached is a ``RayUnavailable`` naming the address.

    Local workers run this interpreter: Ray would otherwise start them through ``uv run`` when the
    driver was started so, in an environment synced without the ``ray`` extra."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if address not in (None, "auto"):
        check_reachable(address)

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"--ray {address}: no Ray cluster could be reached there ({exc})") from exc


def stream(
    items: list[dict], directory: Path, actor, arguments: dict, actors: int, batch_size: int, progress: bool, decode: bool = True
) -> None:
    """The streaming pipeline: decode tasks (unless ``decode`` is false: the actor reads its
    items' files) → a pool of ``actors`` ``actor``s (built with ``arguments`` and the device,
    called on batches of ``batch_size``) → Parquet files under ``directory``; Ray Data's progress
    bars on the terminal unless ``progress`` is false."""
    import ray

    from .work import decode_pair

    ray.data.DataContext.get_current().enable_progress_bars = progress
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    # Decoding is light next to scoring: a quarter of a CPU per task. On CPUs the actors share three
    # quarters of the cluster's, so decoding always has room to feed them (whole CPUs would leave none).
    actor_cpus = 1 if gpus else max(0.1, round(0.75 * resources.get("CPU", 1) / actors, 2))
    # Enough blocks to keep every actor fed (4 each), and at most ITEMS_PER_BLOCK items in one, so a
    # million pairs become ~16,000 decode tasks spread over the cluster, not a handful of long ones.
    blocks = min(len(items), max(4 * actors, math.ceil(len(items) / ITEMS_PER_BLOCK)))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, blocks))
    if decode:
        dataset = dataset.map(decode_pair, num_cpus=DECODE_CPUS)
    dataset = dataset.map_batches(
        actor,
        fn_constructor_kwargs=dict(arguments, device="cuda" if gpus else "cpu"),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
        num_cpus=actor_cpus,
        batch_format="pandas",
    )  # Ray Data restarts a dead actor and retries its tasks by default (max_restarts = max_task_retries = -1)
    dataset.write_parquet(str(directory))


RAY_WRAPPERS = ("RayTaskError", "ActorDiedError", "SystemException", "UserCodeException", "RayActorError")


def root_cause(exc: BaseException) -> str:
    """The workers' own error inside Ray's wrappers, in one line (the first line of the chain's
    messages naming an error that is not Ray's), else the outermost message's first line."""
    import re

    texts, seen = [], exc
    while seen is not None and len(texts) < 20:
        texts.append(str(seen))
        seen = getattr(seen, "cause", None) or seen.__cause__
    for line in (line.strip() for text in texts for line in text.splitlines()):
        match = re.match(r"^[\w.]*?(\w+(?:Error|Exception)): (.+)", line)
        if match and not match.group(1).startswith(RAY_WRAPPERS):
            return f"{match.group(1)}: {match.group(2)}"
    return f"{type(exc).__name__}: {(texts[0].strip().splitlines() or [''])[0]}"


def check_weights_here(metrics: list[str], options: dict, weights_dir: str | None) -> None:
    """On a local instance the workers read this machine's weights: a missing file is named now,
    before any worker starts (a remote cluster's workers look in their own directories)."""
    from losses.nets import weights as W
    from losses.nets.backbones import backbone_spec
    from losses.plan import make_plan
    from losses.registry import KINDS

    plan = make_plan(metrics, options, kinds=KINDS)
    for spec in [backbone_spec(name).weights for name in sorted(plan.backbones())] + [w for m in plan.metrics for w in m.weights]:
        W.resolve(spec, weights_dir)


def has_rows(directory: Path) -> bool:
    return any(directory.glob("*.parquet")) or any((directory / SETS_DIR).glob("*.parquet"))
