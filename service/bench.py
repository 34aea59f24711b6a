"""``loss-service bench``: throughput, latency, exactness-vs-peers and memory, measured side by
side in one run. Prints tables and writes JSON. Nothing here asserts a time.

Backbones use deterministic random weights: speed does not depend on the weight values.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

INPROCESS_METRICS = ("psnr", "ssim", "perceptual", "lpips_vgg", "clp_vgg19", "clp_dinov2")
GIB = 2**30
P4_BUDGET_BYTES = 8 * GIB


# --- helpers --------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device) -> dict:
    import torch

    info = dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                cpu=platform.processor() or platform.machine(), cpu_count=multiprocessing.cpu_count(),
                torch_threads=torch.get_num_threads(), device=str(device))
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
    return {k: v.to(device) for k, v in dict(sr=sr, gt=gt, lr=lr).items()}


def _backbone_getter(device):
    from losses.backbones import get_backbone

    return lambda name: get_backbone(name, device, pretrained=False)


def time_compute(metric: str, batch: int, size: int, device, repeats: int) -> float:
    """Median seconds of ``repeats`` batched ``compute`` calls, after a batch-1 warm-up at that size."""
    import torch

    from losses import registry

    metrics = registry.get_metrics([metric])
    options = registry.resolve_options(metrics, {})
    backbone = _backbone_getter(device)
    times = []
    with torch.inference_mode():
        registry.compute(metrics, _images(1, size, device), options, backbone)
        images = _images(batch, size, device)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            registry.compute(metrics, images, options, backbone)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- sections -------------------------------------------------------------------------------


# On a CPU, larger configurations than this (batch × images per triplet × pixels) exceed the
# 24 GB of the machine the benchmark was written on; CLP holds every layer of three images.
CPU_MAX_PIXELS_PER_BATCH = 32 * 2 * 512 * 512


def images_per_item(metric: str) -> int:
    from losses import registry

    return len(registry.REGISTRY[metric].needs)


def bench_inprocess(device, sizes, batches, metrics, repeats, log) -> list[dict]:
    rows = []
    for metric in metrics:
        for size in sizes:
            for batch in batches:
                if device.type == "cpu" and batch * images_per_item(metric) * size * size > CPU_MAX_PIXELS_PER_BATCH:
                    rows.append(dict(metric=metric, size=size, batch=batch, seconds=None, images_per_s=None,
                                     skipped=f"over {CPU_MAX_PIXELS_PER_BATCH} pixels per batch on a CPU (RAM)"))
                    log(f"in-process {metric} {size}² batch {batch}: skipped (RAM)")
                    continue
                seconds = time_compute(metric, batch, size, device, repeats)
                rows.append(dict(metric=metric, size=size, batch=batch, seconds=seconds, images_per_s=batch / seconds))
                log(f"in-process {metric} {size}² batch {batch}: {batch / seconds:.2f} img/s")
    return rows


def start_server(flags: list[str]):
    """A ``loss-service serve`` subprocess on 127.0.0.1 with a free port; returns (process, url)."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--random-weights", *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

    latencies, computes = [], []
    remaining = total

    async def worker(client):
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            response = await client.post("/v1/score", files=files, data={"metrics": metric})
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            computes.append(response.json()["timing_ms"]["compute"] / 1e3)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await client.post("/v1/score", files=files, data={"metrics": metric})  # warm the connection
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return dict(requests=total, seconds=wall, images_per_s=total / wall, p50_ms=1e3 * latencies[len(latencies) // 2],
                p99_ms=1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
                compute_p50_ms=1e3 * statistics.median(computes))


def png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def bench_service(device_flag: str, metric: str, size: int, concurrencies, requests_for, inprocess: dict[int, float], log) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    sr = np.clip(gt.astype(int) + rng.integers(-12, 13, gt.shape), 0, 255).astype(np.uint8)
    files = [("sr", ("sr.png", png(sr), "image/png")), ("gt", ("gt.png", png(gt), "image/png"))]
    rows, lone = [], {}
    for mode, batch_flag in (("batched", "16"), ("unbatched", "1")):
        process, url = start_server(["--device", device_flag, "--models", "vgg16", "--max-batch-size", batch_flag])
        try:
            for concurrency in concurrencies:
                result = asyncio.run(_load(url, files, metric, concurrency, requests_for(concurrency)))
                result.update(mode=mode, concurrency=concurrency,
                              vs_inprocess_batch1=result["images_per_s"] / inprocess[1],
                              vs_inprocess_batched=result["images_per_s"] / inprocess[max(inprocess)])
                rows.append(result)
                log(f"service {mode} c={concurrency}: {result['images_per_s']:.2f} img/s, p50 {result['p50_ms']:.1f} ms")
            if mode == "batched":
                single = asyncio.run(_load(url, files, metric, 1, 15))
                lone = dict(p50_ms=single["p50_ms"], compute_p50_ms=single["compute_p50_ms"],
                            added_ms=single["p50_ms"] - single["compute_p50_ms"])
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
    """SSIM/PSNR of ours and of peers set to the same convention, against scikit-image."""
    import torch
    from pytorch_msssim import ssim as msssim_ssim
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from losses import psnr, ssim

    photos = _real_photos(size)
    reference = {
        "ssim": [structural_similarity(gt.astype(float), sr.astype(float), gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=255, channel_axis=-1) for sr, gt in photos],
        "psnr": [peak_signal_noise_ratio(gt.astype(float), sr.astype(float), data_range=255) for sr, gt in photos],
    }
    unit = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255  # noqa: E731
    scaled = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double()  # noqa: E731
    candidates = {
        ("ssim", "loss-service"): lambda sr, gt: ssim(unit(sr), unit(gt)).item(),
        ("ssim", "scikit-image"): lambda sr, gt: structural_similarity(gt.astype(float), sr.astype(float), gaussian_weights=True, sigma=1.5,
                                                                        use_sample_covariance=False, data_range=255, channel_axis=-1),
        ("ssim", "torchmetrics"): lambda sr, gt: tm_ssim(scaled(sr), scaled(gt), gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0).item(),
        ("ssim", "pytorch-msssim"): lambda sr, gt: msssim_ssim(scaled(sr), scaled(gt), data_range=255, win_size=11, win_sigma=1.5).item(),
        ("psnr", "loss-service"): lambda sr, gt: psnr(unit(sr), unit(gt)).item(),
        ("psnr", "scikit-image"): lambda sr, gt: peak_signal_noise_ratio(gt.astype(float), sr.astype(float), data_range=255),
        ("psnr", "torchmetrics"): lambda sr, gt: tm_psnr(scaled(sr), scaled(gt), data_range=255.0).item(),
    }
    rows = []
    for (metric, peer), fn in candidates.items():
        values, times = [], []
        for sr, gt in photos:
            fn(sr, gt)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                value = fn(sr, gt)
            times.append((time.perf_counter() - start) / repeats)
            values.append(value)
        delta = max(abs(v - r) for v, r in zip(values, reference[metric]))
        rows.append(dict(metric=metric, peer=peer, ms_per_image=1e3 * statistics.mean(times), max_abs_delta_vs_skimage=delta))
        log(f"{metric} {peer}: {1e3 * statistics.mean(times):.2f} ms/img, max|Δ| {delta:.2e}")
    return rows


def current_rss() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


class PeakRSS:
    """Samples the RSS every millisecond while the block runs (ru_maxrss cannot be reset, and
    model construction sets it higher than inference does)."""

    def __enter__(self) -> "PeakRSS":
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

    from losses import registry

    device = torch.device(device_name)
    metrics = registry.get_metrics([metric])
    options = registry.resolve_options(metrics, {})
    backbone = _backbone_getter(device)
    model_bytes = sum(p.numel() * p.element_size() for view in metrics[0].views for p in backbone(view.backbone).parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    with PeakRSS() as rss, torch.inference_mode():
        images = _images(batch, size, device)
        registry.compute(metrics, images, options, backbone)
    result = dict(metric=metric, batch=batch, size=size, peak_rss_gib=rss.peak / GIB, rss_growth_gib=(rss.peak - rss.baseline) / GIB,
                  model_gib=model_bytes / GIB)
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


def bench_memory(device, configs, log) -> tuple[list[dict], list[dict]]:
    rows = []
    for metric, size, batch in configs:
        row = measure_memory(metric, batch, size, str(device))
        rows.append(row)
        log(f"memory {metric} {size}² batch {batch}: peak RSS {row['peak_rss_gib']:.2f} GiB" +
            (f", CUDA peak {row['cuda_peak_gib']:.2f} GiB" if "cuda_peak_gib" in row else ""))
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
            fits.append(dict(metric=metric, measured_size=size, size=target, per_image_gib=per_image * scale, fixed_gib=fixed,
                             largest_batch_in_8gib=largest, basis="measured CUDA peak" if key == "cuda_peak_gib" else "estimate from CPU RSS growth",
                             extrapolated_from_size=None if target == size else size))
    return fits


# --- entry point ----------------------------------------------------------------------------


def run(args) -> int:
    from rich.console import Console

    from .device import select_device

    console = Console()
    device = select_device(args.device)
    quick = args.quick
    log = (lambda message: console.log(message)) if not args.quiet else (lambda message: None)
    sizes = tuple(int(v) for v in args.sizes.split(",")) if args.sizes else ((256,) if quick else (256, 512))
    batches = tuple(int(v) for v in args.batches.split(",")) if args.batches else ((1, 8) if quick else (1, 8, 32))
    report: dict = dict(machine=machine_info(device), quick=quick, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    sections = args.sections.split(",")

    if "inprocess" in sections or "service" in sections:
        metrics = INPROCESS_METRICS if "inprocess" in sections else ("perceptual",)
        report["inprocess"] = bench_inprocess(device, sizes if "inprocess" in sections else sizes[:1], batches, metrics, 1, log)
    if "service" in sections:
        rates = {r["batch"]: r["images_per_s"] for r in report["inprocess"] if r["metric"] == "perceptual" and r["size"] == sizes[0]}
        concurrencies = (1, 4, 16) if quick else (1, 4, 16, 64)
        requests_for = (lambda c: max(4, 2 * c)) if quick else (lambda c: max(16, 4 * c))
        report["service"], report["lone_request"] = bench_service(args.device, "perceptual", sizes[0], concurrencies, requests_for, rates, log)
        report["service_inprocess_reference"] = dict(metric="perceptual", size=sizes[0], images_per_s_by_batch=rates)
    if "peers" in sections:
        report["peers"] = bench_peers(sizes[0] if quick else 512, 1 if quick else 5, log)
    if "memory" in sections:
        memory_metrics = ("perceptual",) if quick else ("perceptual", "lpips_vgg", "clp_vgg19", "clp_dinov2")
        configs = [(m, s, b) for m in memory_metrics for s in sizes for b in batches[:2]]
        report["memory"], report["budget"] = bench_memory(device, configs, log)

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
        table = Table("mode", "concurrency", "img/s", "p50 ms", "p99 ms", "× in-process b=1", f"× in-process b={batched}",
                      title=f"service, perceptual {size}²")
        for r in report["service"]:
            table.add_row(r["mode"], str(r["concurrency"]), f"{r['images_per_s']:.2f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                          f"{r['vs_inprocess_batch1']:.2f}", f"{r['vs_inprocess_batched']:.2f}")
        console.print(table)
        lone = report["lone_request"]
        console.print(f"lone request: p50 {lone['p50_ms']:.1f} ms, compute {lone['compute_p50_ms']:.1f} ms, added {lone['added_ms']:.1f} ms")
    if "peers" in report:
        table = Table("metric", "implementation", "ms/image", "max |Δ| vs scikit-image", title="SSIM/PSNR against peers")
        for r in report["peers"]:
            table.add_row(r["metric"], r["peer"], f"{r['ms_per_image']:.2f}", f"{r['max_abs_delta_vs_skimage']:.2e}")
        console.print(table)
    if "memory" in report:
        table = Table("metric", "size", "batch", "peak RSS GiB", "RSS growth GiB", "CUDA peak GiB", title="memory")
        for r in report["memory"]:
            table.add_row(r["metric"], f"{r['size']}²", str(r["batch"]), f"{r['peak_rss_gib']:.2f}", f"{r['rss_growth_gib']:.2f}",
                          f"{r['cuda_peak_gib']:.2f}" if "cuda_peak_gib" in r else "n/a (CPU)")
        console.print(table)
        table = Table("metric", "size", "GiB/image", "largest batch in 8 GiB", "basis", title="8 GiB (P4) budget")
        for r in report["budget"]:
            basis = r["basis"] + (f", extrapolated from {r['extrapolated_from_size']}²" if r["extrapolated_from_size"] else "")
            table.add_row(r["metric"], f"{r['size']}²", f"{r['per_image_gib']:.3f}", str(r["largest_batch_in_8gib"]), basis)
        console.print(table)
