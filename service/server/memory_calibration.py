"""Calibrate the memory guard: measure each metric's peak memory on synthetic batches, fit its
bytes per pixel, and write them to ``memory_costs.json``, the table ``memory.py`` reads.

Run by ``loss-service bench --sections memory --write-costs service/server/memory_costs.json``.
Each measurement runs in a fresh spawned process, so one metric's models and allocator state do
not inflate the next one's peak.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import sys
from pathlib import Path

GIB = 2**30


def synthetic_images(batch: int, size: int, device, seed: int = 0) -> dict:
    """A deterministic batch of every role (sr, gt, a 4× smaller lr, teacher)."""
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


def _measure_in_child(metric: str, batch: int, size: int, device_name: str, queue) -> None:
    import torch

    from losses import get_backbone, registry

    device = torch.device(device_name)
    views = registry.REGISTRY[metric].views
    model_bytes = sum(p.numel() * p.element_size() for view in views for p in get_backbone(view.backbone, device, False).parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    with PeakRSS() as rss, torch.inference_mode():
        score_batch(metric, synthetic_images(batch, size, device))
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
    child = context.Process(target=_measure_in_child, args=(metric, batch, size, device_name, queue))
    child.start()
    result = queue.get(timeout=1800)
    child.join()
    return result


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


def write_costs(path: Path, report: dict) -> None:
    """Update the measured metrics' bytes per pixel in ``path`` (the server's cost table), keeping
    the other metrics' figures; each metric records the run it came from."""
    table = json.loads(path.read_text()) if path.exists() else dict(bytes_per_pixel={}, measured_by={})
    run = dict(machine=report["machine"], started=report["started"], command="loss-service bench " + " ".join(sys.argv[2:]))
    for metric, cost in report["memory_costs"].items():
        table["bytes_per_pixel"][metric] = cost
        table.setdefault("measured_by", {})[metric] = run
    path.write_text(json.dumps(table, indent=2) + "\n")
