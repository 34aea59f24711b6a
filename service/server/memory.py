"""Refuse, before decoding or computing, a request that cannot fit in memory.

A request's peak is estimated from per-pixel costs that ``loss-service bench --sections memory``
measures (peak growth per image ÷ pixels, per metric) and keeps as data in
``memory_costs.json``; it is compared with what the device can give: free CUDA memory on a GPU,
a share of the available RAM on a CPU (with the freed memory the server's allocator keeps for
reuse, which /proc/meminfo counts as used), or ``--max-memory-gb``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..common.errors import too_large
from .allocator import retained_free_bytes

COSTS_PATH = Path(__file__).with_name("memory_costs.json")
CPU_RAM_SHARE = 0.8  # the safety margin: leave a fifth of the available RAM to everything else
DECODED_BYTES_PER_PIXEL = 3 * 4  # a decoded upload: H×W×3 float32
BUDGET_FRESH_S = 1.0  # how old a budget reading may be to accept a request (a refusal always reads anew)


def load_costs(path: Path = COSTS_PATH) -> dict[str, float]:
    return json.loads(path.read_text())["bytes_per_pixel"]


def load_image_costs(path: Path = COSTS_PATH) -> dict[str, float]:
    """Bytes per image whatever its size: the dataset metrics' InceptionV3 resizes every image to 299²."""
    return json.loads(path.read_text()).get("bytes_per_image", {})


def available_ram_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


class MemoryGuard:
    """``check(metrics, height, width, field)`` raises a 413 when the estimate exceeds the budget."""

    def __init__(self, device: torch.device, max_memory_gb: float | None, costs: dict[str, float] | None = None):
        self.device, self.max_memory_gb = device, max_memory_gb
        self.costs = load_costs() if costs is None else costs
        self.image_costs = load_image_costs()
        self._reading: tuple[float, tuple[int, str]] | None = None  # (when, budget())

    def budget(self) -> tuple[int, str]:
        if self.max_memory_gb is not None:
            return int(self.max_memory_gb * 2**30), "--max-memory-gb"
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0], f"free memory on {self.device}"
        return int((available_ram_bytes() + retained_free_bytes()) * CPU_RAM_SHARE), f"{CPU_RAM_SHARE:.0%} of the available RAM"

    def bytes_per_pixel(self, metrics: Sequence[str]) -> float:
        # Metrics in one request run one after another, but share cached features: the sum is an upper bound.
        return DECODED_BYTES_PER_PIXEL * 4 + sum(self.costs.get(name, 0.0) for name in metrics)

    def estimate(self, metrics: Sequence[str], pixels: int) -> float:
        """Estimated peak bytes of one image of ``pixels`` scored with ``metrics``."""
        return self.bytes_per_pixel(metrics) * pixels + max((self.image_costs.get(name, 0.0) for name in metrics), default=0.0)

    def recent_budget(self, fresh: bool = False) -> tuple[int, str]:
        """``budget()``, read again when the last reading is older than ``BUDGET_FRESH_S`` or when
        ``fresh``: reading /proc/meminfo or the CUDA allocator on every image cost ~0.1 ms a request."""
        now = time.monotonic()
        if fresh or self._reading is None or now - self._reading[0] > BUDGET_FRESH_S:
            self._reading = (now, self.budget())
        return self._reading[1]

    def check(self, metrics: Sequence[str], height: int, width: int, field: str) -> None:
        per_pixel = self.bytes_per_pixel(metrics)
        estimate = self.estimate(metrics, height * width)
        if estimate <= self.recent_budget()[0]:
            return
        budget, source = self.recent_budget(fresh=True)  # refuse only on what is free now
        if estimate <= budget:
            return
        costliest = max(metrics, key=lambda name: self.costs.get(name, 0.0) + self.image_costs.get(name, 0.0))
        side = math.isqrt(int(budget / per_pixel))
        raise too_large(
            field,
            f"{field}: {width}×{height} with metrics {list(metrics)} (costliest: {costliest}) needs an "
            f"estimated {estimate / 2**30:.1f} GiB; the budget is {budget / 2**30:.1f} GiB ({source}); "
            f"the largest square image that fits is about {side}×{side}",
        )
