"""Through the service: ``loss-service serve`` subprocesses driven by concurrent HTTP clients,
batched against unbatched, the lone request's added latency, and per-metric throughput."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from .inprocess import unsupported_size

# The metrics the service section also times end to end, one server, at every size.
SERVICE_METRICS = ("ms_ssim", "lr_psnr", "lpips_alex", "dists", "clipiqa")


def start_server(flags: list[str], env: dict[str, str] | None = None):
    """A ``loss-service serve`` subprocess on 127.0.0.1 with a free port, with ``env`` added to
    this process's environment; returns (process, url)."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--random-weights", *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise TimeoutError("server did not become ready")


async def drive_load(url: str, files: list, metric: str, concurrency: int, total: int) -> dict:
    import httpx

    from ..client.core import RequestSpec

    form = RequestSpec.form("/v1/score", files, {"metrics": metric})  # encoded as LossClient sends it
    latencies, computes = [], []
    remaining = total

    async def worker(client):
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            response = await client.post(form.path, content=form.content, headers=form.headers)
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            computes.append(response.json()["timing_ms"]["compute"] / 1e3)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await client.post(form.path, content=form.content, headers=form.headers)  # warm the connection
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return dict(
        requests=total,
        seconds=wall,
        images_per_s=total / wall,
        p50_ms=1e3 * latencies[len(latencies) // 2],
        p99_ms=1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        compute_p50_ms=1e3 * statistics.median(computes),
    )


def png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_files(size: int) -> list:
    """A random SR/GT pair and a 4× smaller LR, as PNG form fields."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    sr = np.clip(gt.astype(int) + rng.integers(-12, 13, gt.shape), 0, 255).astype(np.uint8)
    lr = gt[::4, ::4].copy()
    return [(role, (f"{role}.png", png(image), "image/png")) for role, image in dict(sr=sr, gt=gt, lr=lr).items()]


def bench_service_metrics(url: str, metrics, sizes, log) -> list[dict]:
    """End-to-end throughput of each metric at concurrency 4 through a batching server."""
    rows = []
    for metric in metrics:
        for size in sizes:
            if unsupported_size(metric, size) is not None:
                continue
            result = asyncio.run(drive_load(url, upload_files(size), metric, 4, 16))
            result.update(metric=metric, size=size, concurrency=4)
            rows.append(result)
            log(f"service {metric} {size}² c=4: {result['images_per_s']:.2f} img/s, p50 {result['p50_ms']:.1f} ms")
    return rows


def bench_service(
    device_flag: str, metric: str, size: int, concurrencies, requests_for, inprocess: dict[int, float], per_metric, log
) -> tuple[list[dict], dict, list[dict]]:
    """``metric`` at each concurrency through a batching and a non-batching server, the lone
    request's added latency, and ``per_metric`` = (metrics, sizes) through the batching one, which
    loads the backbones of all of them (one server start fewer)."""
    from ..embedded import backbones_for

    files = upload_files(size)[:2]
    rows, lone, metric_rows = [], {}, []
    needed = ",".join(backbones_for([metric, *per_metric[0]]))  # not every backbone of the catalogue
    for mode, flags in (
        ("batched", ["--models", needed, "--max-batch-size", "16"]),
        ("unbatched", ["--models", "vgg16", "--max-batch-size", "1"]),
    ):
        process, url = start_server(["--device", device_flag, *flags])
        try:
            for concurrency in concurrencies:
                result = asyncio.run(drive_load(url, files, metric, concurrency, requests_for(concurrency)))
                result.update(
                    mode=mode,
                    concurrency=concurrency,
                    vs_inprocess_batch1=result["images_per_s"] / inprocess[1],
                    vs_inprocess_batched=result["images_per_s"] / inprocess[max(inprocess)],
                )
                rows.append(result)
                log(f"service {mode} c={concurrency}: {result['images_per_s']:.2f} img/s, p50 {result['p50_ms']:.1f} ms")
            if mode == "batched":
                single = asyncio.run(drive_load(url, files, metric, 1, 15))
                lone = dict(
                    p50_ms=single["p50_ms"], compute_p50_ms=single["compute_p50_ms"], added_ms=single["p50_ms"] - single["compute_p50_ms"]
                )
                metric_rows = bench_service_metrics(url, *per_metric, log)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return rows, lone, metric_rows
