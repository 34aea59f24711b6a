"""``loss-service bench``: throughput, latency, exactness-vs-peers and memory, measured side by
side in one run. Prints tables and writes JSON. Nothing here asserts a time.

Backbones use deterministic random weights: speed does not depend on the weight values.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common.errors import comma_list

INPROCESS_METRICS = ("psnr", "ssim", "ms_ssim", "lr_psnr", "perceptual", "lpips_vgg", "lpips_alex", "dists", "clp_vgg19", "clp_dinov2")
# The metrics the service section also times end to end, one server, at every size.
SERVICE_METRICS = ("ms_ssim", "lr_psnr", "lpips_alex", "dists")
GIB = 2**30
MIN_TIMED_S = 0.5  # each peer timing runs at least this long
P4_BUDGET_BYTES = 8 * GIB


# --- helpers --------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), so every table says where it was measured."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    """The BLAS behind torch and behind NumPy/SciPy (SSIM's CPU path does not use it)."""
    import re

    import torch

    torch_blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    numpy_blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return dict(torch=torch_blas.group(1) if torch_blas else "unknown", numpy=f"{numpy_blas.get('name')} {numpy_blas.get('version')}")


def machine_info(device) -> dict:
    import torch

    info = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        cpu=cpu_model(),
        blas=blas_info(),
        cpu_count=multiprocessing.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=str(device),
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / GIB, 1))
    return info


def _images(batch: int, size: int, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=g)
    sr = (gt + 0.05 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    lr = torch.nn.functional.interpolate(gt, scale_factor=0.25, mode="area")
    teacher = (gt + 0.02 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    return {k: v.to(device) for k, v in dict(sr=sr, gt=gt, lr=lr, teacher=teacher).items()}


def score_batch(metric: str, images: dict):
    """One ``losses.score`` call with deterministic random backbones (speed does not depend on
    weights), given the images the metric needs."""
    import losses

    needed = {role: image for role, image in images.items() if role in ("sr", "gt", *losses.REGISTRY[metric].needs)}
    return losses.score(**needed, metrics=(metric,), pretrained=False)


def time_compute(metric: str, batch: int, size: int, device, repeats: int) -> float:
    """Median seconds of ``repeats`` batched scoring calls, after a batch-1 warm-up at that size."""
    import torch

    times = []
    with torch.inference_mode():
        score_batch(metric, _images(1, size, device))
        images = _images(batch, size, device)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            score_batch(metric, images)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- sections -------------------------------------------------------------------------------


# On a CPU, larger configurations than this (batch × images per triplet × pixels) exceed the
# 24 GB of the machine the benchmark was written on; CLP holds every layer of three images.
CPU_MAX_PIXELS_PER_BATCH = 32 * 2 * 512 * 512


def unsupported_size(metric: str, size: int) -> str | None:
    """Why ``metric`` cannot score size×size images (e.g. MS-SSIM below 176²), or None."""
    from losses import registry

    return registry.size_problem(registry.REGISTRY[metric], size)


def images_per_item(metric: str) -> int:
    from losses import registry

    return len(registry.REGISTRY[metric].needs)


def bench_inprocess(device, sizes, batches, metrics, repeats, log) -> list[dict]:
    rows = []
    for metric in metrics:
        for size in sizes:
            for batch in batches:
                if (reason := unsupported_size(metric, size)) is not None:
                    rows.append(dict(metric=metric, size=size, batch=batch, seconds=None, images_per_s=None, skipped=reason))
                    continue
                if device.type == "cpu" and batch * images_per_item(metric) * size * size > CPU_MAX_PIXELS_PER_BATCH:
                    rows.append(
                        dict(
                            metric=metric,
                            size=size,
                            batch=batch,
                            seconds=None,
                            images_per_s=None,
                            skipped=f"over {CPU_MAX_PIXELS_PER_BATCH} pixels per batch on a CPU (RAM)",
                        )
                    )
                    log(f"in-process {metric} {size}² batch {batch}: skipped (RAM)")
                    continue
                seconds = time_compute(metric, batch, size, device, repeats)
                rows.append(dict(metric=metric, size=size, batch=batch, seconds=seconds, images_per_s=batch / seconds))
                log(f"in-process {metric} {size}² batch {batch}: {batch / seconds:.2f} img/s")
    return rows


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


async def _load(url: str, files: list, metric: str, concurrency: int, total: int) -> dict:
    import httpx

    from .client.core import RequestSpec

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


def bench_service_metrics(device_flag: str, metrics, sizes, log) -> list[dict]:
    """End-to-end throughput of each metric at concurrency 4 through one batching server."""
    rows = []
    process, url = start_server(["--device", device_flag, "--max-batch-size", "16"])
    try:
        for metric in metrics:
            for size in sizes:
                if unsupported_size(metric, size) is not None:
                    continue
                result = asyncio.run(_load(url, upload_files(size), metric, 4, 16))
                result.update(metric=metric, size=size, concurrency=4)
                rows.append(result)
                log(f"service {metric} {size}² c=4: {result['images_per_s']:.2f} img/s, p50 {result['p50_ms']:.1f} ms")
    finally:
        process.terminate()
        process.wait(timeout=60)
    return rows


def bench_service(
    device_flag: str, metric: str, size: int, concurrencies, requests_for, inprocess: dict[int, float], log
) -> tuple[list[dict], dict]:
    files = upload_files(size)[:2]
    rows, lone = [], {}
    for mode, batch_flag in (("batched", "16"), ("unbatched", "1")):
        process, url = start_server(["--device", device_flag, "--models", "vgg16", "--max-batch-size", batch_flag])
        try:
            for concurrency in concurrencies:
                result = asyncio.run(_load(url, files, metric, concurrency, requests_for(concurrency)))
                result.update(
                    mode=mode,
                    concurrency=concurrency,
                    vs_inprocess_batch1=result["images_per_s"] / inprocess[1],
                    vs_inprocess_batched=result["images_per_s"] / inprocess[max(inprocess)],
                )
                rows.append(result)
                log(f"service {mode} c={concurrency}: {result['images_per_s']:.2f} img/s, p50 {result['p50_ms']:.1f} ms")
            if mode == "batched":
                single = asyncio.run(_load(url, files, metric, 1, 15))
                lone = dict(
                    p50_ms=single["p50_ms"], compute_p50_ms=single["compute_p50_ms"], added_ms=single["p50_ms"] - single["compute_p50_ms"]
                )
        finally:
            process.terminate()
            process.wait(timeout=60)
    return rows, lone


def _real_photos(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from scipy.ndimage import gaussian_filter
    from skimage import data
    from skimage.transform import resize

    photos = []
    for index, image in enumerate((data.astronaut(), data.coffee(), data.chelsea())):
        if image.shape[:2] != (size, size):
            image = (resize(image, (size, size), anti_aliasing=True) * 255).round().astype(np.uint8)
        rng = np.random.default_rng(index)
        degraded = np.clip(gaussian_filter(image.astype(float), (1, 1, 0)) + rng.normal(0, 5, image.shape), 0, 255).round().astype(np.uint8)
        photos.append((degraded, image))
    return photos


def bench_peers(size: int, repeats: int, log) -> list[dict]:
    """SSIM/PSNR/MS-SSIM of ours and of peers set to the same convention, each against a reference:
    scikit-image for SSIM and PSNR, pytorch-msssim for MS-SSIM (at sizes divisible by 32 its
    avg-pool downsampling equals MATLAB's). Each implementation gets its natural input, made
    outside the timed region: float64 H×W×C on [0, 255] for scikit-image, contiguous float64
    (1, C, H, W) on [0, 1] for loss-service, the same on [0, 255] for the torch peers."""
    import piq
    import torch
    from pytorch_msssim import ms_ssim as pm_ms_ssim
    from pytorch_msssim import ssim as pm_ssim
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim
    from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from losses import ms_ssim, psnr, ssim

    photos = _real_photos(size)
    numpy255 = lambda a: a.astype(np.float64)  # noqa: E731
    unit = lambda a: (torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255).contiguous()  # noqa: E731
    scaled = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double().contiguous()  # noqa: E731
    sk_ssim = lambda sr, gt: structural_similarity(
        gt,
        sr,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,  # noqa: E731
        data_range=255,
        channel_axis=-1,
    )
    pm_msssim = lambda sr, gt: pm_ms_ssim(sr, gt, data_range=255, win_size=11, win_sigma=1.5).item()  # noqa: E731
    candidates = {  # (metric, implementation): (input maker, function)
        ("ssim", "loss-service"): (unit, lambda sr, gt: ssim(sr, gt).item()),
        ("ssim", "scikit-image"): (numpy255, sk_ssim),
        ("ssim", "torchmetrics"): (
            scaled,
            lambda sr, gt: tm_ssim(sr, gt, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0).item(),
        ),
        ("ssim", "pytorch-msssim"): (scaled, lambda sr, gt: pm_ssim(sr, gt, data_range=255, win_size=11, win_sigma=1.5).item()),
        ("psnr", "loss-service"): (unit, lambda sr, gt: psnr(sr, gt).item()),
        ("psnr", "scikit-image"): (numpy255, lambda sr, gt: peak_signal_noise_ratio(gt, sr, data_range=255)),
        ("psnr", "torchmetrics"): (scaled, lambda sr, gt: tm_psnr(sr, gt, data_range=255.0).item()),
        ("ms_ssim", "loss-service"): (unit, lambda sr, gt: ms_ssim(sr, gt).item()),
        ("ms_ssim", "pytorch-msssim"): (scaled, pm_msssim),
        ("ms_ssim", "piq"): (
            scaled,
            lambda sr, gt: piq.multi_scale_ssim(sr, gt, data_range=255.0, kernel_size=11, kernel_sigma=1.5).item(),
        ),
        ("ms_ssim", "torchmetrics"): (
            scaled,
            lambda sr, gt: tm_ms_ssim(sr, gt, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0, normalize=None).item(),
        ),
    }
    references = {
        "ssim": ("scikit-image", numpy255, sk_ssim),
        "psnr": ("scikit-image", numpy255, lambda sr, gt: peak_signal_noise_ratio(gt, sr, data_range=255)),
        "ms_ssim": ("pytorch-msssim", scaled, pm_msssim),
    }
    expected = {
        metric: [fn(make(sr), make(gt)) for sr, gt in photos]
        for metric, (_, make, fn) in references.items()
        if unsupported_size(metric, size) is None
    }
    rows = []
    for (metric, peer), (make, fn) in candidates.items():
        if unsupported_size(metric, size) is not None:
            continue
        values, times = [], []
        for sr, gt in photos:
            sr_in, gt_in = make(sr), make(gt)
            fn(sr_in, gt_in)  # warm-up
            calls, start = 0, time.perf_counter()
            while calls < repeats or time.perf_counter() - start < MIN_TIMED_S:  # sub-ms calls: many of them
                value = fn(sr_in, gt_in)
                calls += 1
            times.append((time.perf_counter() - start) / calls)
            values.append(value)
        delta = max(abs(v - r) for v, r in zip(values, expected[metric]))
        rows.append(
            dict(
                metric=metric,
                peer=peer,
                ms_per_image=1e3 * statistics.mean(times),
                reference=references[metric][0],
                max_abs_delta_vs_reference=delta,
            )
        )
        log(f"{metric} {peer}: {1e3 * statistics.mean(times):.2f} ms/img, max|Δ| vs {references[metric][0]} {delta:.2e}")
    return rows


def current_rss() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


class PeakRSS:
    """Samples the RSS every millisecond while the block runs (ru_maxrss cannot be reset, and
    model construction sets it higher than inference does)."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.baseline = self.peak = current_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, current_rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())


def _memory_child(metric: str, batch: int, size: int, device_name: str, queue) -> None:
    import torch

    from losses import get_backbone, registry

    device = torch.device(device_name)
    views = registry.REGISTRY[metric].views
    model_bytes = sum(p.numel() * p.element_size() for view in views for p in get_backbone(view.backbone, device, False).parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    with PeakRSS() as rss, torch.inference_mode():
        score_batch(metric, _images(batch, size, device))
    result = dict(
        metric=metric,
        batch=batch,
        size=size,
        peak_rss_gib=rss.peak / GIB,
        rss_growth_gib=(rss.peak - rss.baseline) / GIB,
        model_gib=model_bytes / GIB,
    )
    if device.type == "cuda":
        result.update(cuda_peak_gib=torch.cuda.max_memory_allocated(device) / GIB, cuda_models_gib=base_cuda / GIB)
    queue.put(result)


def measure_memory(metric: str, batch: int, size: int, device_name: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_memory_child, args=(metric, batch, size, device_name, queue))
    child.start()
    result = queue.get(timeout=1800)
    child.join()
    return result


def write_costs(path: Path, report: dict) -> None:
    """Update the measured metrics' bytes per pixel in ``path`` (the server's cost table), keeping
    the other metrics' figures; each metric records the run it came from."""
    table = json.loads(path.read_text()) if path.exists() else dict(bytes_per_pixel={}, measured_by={})
    run = dict(machine=report["machine"], started=report["started"], command="loss-service bench " + " ".join(sys.argv[2:]))
    for metric, cost in report["memory_costs"].items():
        table["bytes_per_pixel"][metric] = cost
        table.setdefault("measured_by", {})[metric] = run
    path.write_text(json.dumps(table, indent=2) + "\n")


def fit_costs(rows: list[dict]) -> dict[str, float]:
    """Bytes per pixel per image, per metric: the growth between the two batch sizes measured at
    the largest size, divided by that size's pixels (CUDA peak on a GPU, RSS growth on a CPU)."""
    costs = {}
    for metric in dict.fromkeys(row["metric"] for row in rows):
        largest = max(row["size"] for row in rows if row["metric"] == metric)
        group = sorted((r for r in rows if r["metric"] == metric and r["size"] == largest), key=lambda r: r["batch"])
        if len(group) < 2:
            continue
        key = "cuda_peak_gib" if "cuda_peak_gib" in group[0] else "rss_growth_gib"
        slope = (group[-1][key] - group[0][key]) / (group[-1]["batch"] - group[0]["batch"])
        costs[metric] = round(max(slope, group[0][key] / group[0]["batch"]) * GIB / largest**2, 1)
    return costs


def bench_memory(device, configs, log) -> tuple[list[dict], list[dict]]:
    rows = []
    for metric, size, batch in configs:
        row = measure_memory(metric, batch, size, str(device))
        rows.append(row)
        log(
            f"memory {metric} {size}² batch {batch}: peak RSS {row['peak_rss_gib']:.2f} GiB"
            + (f", CUDA peak {row['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in row else "")
        )
    return rows, fit_budget(rows)


def fit_budget(rows: list[dict]) -> list[dict]:
    """Largest batch per metric and size in an 8 GiB budget, from a linear fit of the growth
    between the measured batches (CUDA peak on a GPU; RSS growth on a CPU, an estimate)."""
    fits = []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["metric"], row["size"]), []).append(row)
    for (metric, size), group in groups.items():
        if len(group) < 2:
            continue
        key = "cuda_peak_gib" if "cuda_peak_gib" in group[0] else "rss_growth_gib"
        xs = np.array([r["batch"] for r in group], float)
        ys = np.array([r[key] for r in group], float)
        slope, intercept = np.polyfit(xs, ys, 1)
        # Fixed cost: the weights plus the fitted intercept (both measured); the per-image slope scales with pixels.
        fixed = group[0].get("cuda_models_gib", group[0]["model_gib"]) + max(intercept, 0.0)
        per_image = max(slope, 1e-9)
        for target in (size, 1024):
            scale = (target / size) ** 2
            largest = int((P4_BUDGET_BYTES / GIB - fixed) // (per_image * scale))
            fits.append(
                dict(
                    metric=metric,
                    measured_size=size,
                    size=target,
                    per_image_gib=per_image * scale,
                    fixed_gib=fixed,
                    largest_batch_in_8gib=largest,
                    basis="measured CUDA peak" if key == "cuda_peak_gib" else "estimate from CPU RSS growth",
                    extrapolated_from_size=None if target == size else size,
                )
            )
    return fits


# --- entry point ----------------------------------------------------------------------------


def run(args) -> int:
    from rich.console import Console

    from .server.device import select_device

    console = Console()
    device = select_device(args.device)
    quick = args.quick
    log = (lambda message: console.log(message)) if not args.quiet else (lambda message: None)
    sizes = tuple(int(v) for v in comma_list(args.sizes)) if args.sizes else ((256,) if quick else (256, 512))
    batches = tuple(int(v) for v in comma_list(args.batches)) if args.batches else ((1, 8) if quick else (1, 8, 32))
    report: dict = dict(machine=machine_info(device), quick=quick, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    sections = comma_list(args.sections)

    if "inprocess" in sections or "service" in sections:
        metrics = INPROCESS_METRICS if "inprocess" in sections else ("perceptual",)
        report["inprocess"] = bench_inprocess(device, sizes if "inprocess" in sections else sizes[:1], batches, metrics, 1, log)
    if "service" in sections:
        rates = {r["batch"]: r["images_per_s"] for r in report["inprocess"] if r["metric"] == "perceptual" and r["size"] == sizes[0]}
        concurrencies = (1, 4, 16) if quick else (1, 4, 16, 64)
        requests_for = (lambda c: max(4, 2 * c)) if quick else (lambda c: max(16, 4 * c))
        report["service"], report["lone_request"] = bench_service(
            args.device, "perceptual", sizes[0], concurrencies, requests_for, rates, log
        )
        report["service_inprocess_reference"] = dict(metric="perceptual", size=sizes[0], images_per_s_by_batch=rates)
        report["service_metrics"] = bench_service_metrics(args.device, SERVICE_METRICS, sizes, log)
    if "peers" in sections:
        report["peers"] = bench_peers(sizes[0] if quick else 512, 1 if quick else 5, log)
    if "memory" in sections:
        from losses import REGISTRY

        # Per-image metrics: fid and kid cost per image, not per pixel (bytes_per_image in memory_costs.json).
        per_image = tuple(name for name, metric in REGISTRY.items() if metric.kind == "image")
        memory_metrics = ("perceptual",) if quick else tuple(comma_list(args.memory_metrics)) if args.memory_metrics else per_image
        configs = [(m, s, b) for m in memory_metrics for s in sizes for b in batches[:2] if unsupported_size(m, s) is None]
        report["memory"], report["budget"] = bench_memory(device, configs, log)
        report["memory_costs"] = fit_costs(report["memory"])
        if args.write_costs:
            write_costs(Path(args.write_costs), report)

    print_tables(report, console)
    Path(args.json).write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")
    return 0


def print_tables(report: dict, console) -> None:
    from rich.table import Table

    machine = report["machine"]
    console.print(f"machine: {machine}")
    if "inprocess" in report:
        table = Table("metric", "size", "batch", "img/s", "ms/batch", title="in-process throughput")
        for r in report["inprocess"]:
            if r["seconds"] is None:
                table.add_row(r["metric"], f"{r['size']}²", str(r["batch"]), "not run", r["skipped"])
            else:
                table.add_row(r["metric"], f"{r['size']}²", str(r["batch"]), f"{r['images_per_s']:.2f}", f"{1e3 * r['seconds']:.1f}")
        console.print(table)
    if "service" in report:
        batched = max(report["service_inprocess_reference"]["images_per_s_by_batch"])
        size = report["service_inprocess_reference"]["size"]
        table = Table(
            "mode",
            "concurrency",
            "img/s",
            "p50 ms",
            "p99 ms",
            "× in-process b=1",
            f"× in-process b={batched}",
            title=f"service, perceptual {size}²",
        )
        for r in report["service"]:
            table.add_row(
                r["mode"],
                str(r["concurrency"]),
                f"{r['images_per_s']:.2f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['vs_inprocess_batch1']:.2f}",
                f"{r['vs_inprocess_batched']:.2f}",
            )
        console.print(table)
        lone = report["lone_request"]
        console.print(
            f"lone request: p50 {lone['p50_ms']:.1f} ms, compute {lone['compute_p50_ms']:.1f} ms, added {lone['added_ms']:.1f} ms"
        )
        table = Table("metric", "size", "img/s", "p50 ms", "compute p50 ms", title="service, concurrency 4, per metric")
        for r in report["service_metrics"]:
            table.add_row(r["metric"], f"{r['size']}²", f"{r['images_per_s']:.2f}", f"{r['p50_ms']:.1f}", f"{r['compute_p50_ms']:.1f}")
        console.print(table)
    if "peers" in report:
        table = Table(
            "metric",
            "implementation",
            "ms/image",
            "max |Δ| vs reference",
            "reference",
            title=f"SSIM/PSNR/MS-SSIM against peers on {report['machine']['cpu']}",
        )
        for r in report["peers"]:
            table.add_row(r["metric"], r["peer"], f"{r['ms_per_image']:.2f}", f"{r['max_abs_delta_vs_reference']:.2e}", r["reference"])
        console.print(table)
    if "memory" in report:
        table = Table("metric", "size", "batch", "peak RSS GiB", "RSS growth GiB", "CUDA peak GiB", title="memory")
        for r in report["memory"]:
            table.add_row(
                r["metric"],
                f"{r['size']}²",
                str(r["batch"]),
                f"{r['peak_rss_gib']:.2f}",
                f"{r['rss_growth_gib']:.2f}",
                f"{r['cuda_peak_gib']:.2f}" if "cuda_peak_gib" in r else "n/a (CPU)",
            )
        console.print(table)
        table = Table("metric", "size", "GiB/image", "largest batch in 8 GiB", "basis", title="8 GiB (P4) budget")
        for r in report["budget"]:
            basis = r["basis"] + (f", extrapolated from {r['extrapolated_from_size']}²" if r["extrapolated_from_size"] else "")
            table.add_row(r["metric"], f"{r['size']}²", f"{r['per_image_gib']:.3f}", str(r["largest_batch_in_8gib"]), basis)
        console.print(table)
