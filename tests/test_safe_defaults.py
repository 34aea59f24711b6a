"""Safe by default: a small upload cannot take the server down.

Defaults bound the image, the body and the queue; a request whose estimated memory exceeds
the budget is a 413 before anything is decoded; an allocation that still fails is a 413, and
the next request gets a 200."""

import io
import json
import platform
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from service.server.memory import MemoryGuard, load_costs, load_image_costs
from service.server.settings import Settings

from .servers import SubprocessServer, png_bytes, random_image


def flat_png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def test_default_limits_and_zero_lifts_them():
    settings = Settings()
    assert settings.max_image_pixels == 4096 * 4096
    assert settings.max_queue == 256
    assert settings.max_body_mb * 2**20 >= 2 * (4096 * 4096 * 3 * 2)  # two 16-bit RGB 4096² images, uncompressed
    for lifted in ("0", "none", 0):
        assert Settings(max_image_pixels=lifted, max_queue=lifted, max_body_mb=lifted).max_queue is None
    assert Settings(max_image_pixels="none").max_image_pixels is None and Settings(max_body_mb="0").max_body_mb is None


def test_every_metric_has_a_measured_cost():
    from losses import REGISTRY

    costs, image_costs = load_costs(), load_image_costs()
    # Clip metrics are bounded by --max-clip-pixels and their frames by the image metrics' costs.
    assert set(costs) | set(image_costs) == {name for name, metric in REGISTRY.items() if metric.kind != "clip"} and all(
        value > 0 for value in [*costs.values(), *image_costs.values()]
    )
    assert set(image_costs) == {name for name, metric in REGISTRY.items() if metric.dataset is not None}


def test_memory_guard_names_metric_size_estimate_budget_and_largest_fit():
    import torch

    guard = MemoryGuard(torch.device("cpu"), max_memory_gb=1.0, costs={"psnr": 100.0, "perceptual": 1500.0})
    guard.check(["psnr", "perceptual"], 256, 256, "sr")  # 256² fits in 1 GiB
    with pytest.raises(Exception) as info:
        guard.check(["psnr", "perceptual"], 4000, 4000, "sr")
    error = info.value
    per_pixel = 48 + 100 + 1500
    side = int((2**30 / per_pixel) ** 0.5)
    assert error.kind == "too_large" and error.field == "sr"
    assert "4000×4000" in error.message and "perceptual" in error.message and "1.0 GiB (--max-memory-gb)" in error.message
    assert f"{4000 * 4000 * per_pixel / 2**30:.1f} GiB" in error.message and f"about {side}×{side}" in error.message


def test_memory_guard_accepts_on_a_recent_reading_and_refuses_only_on_a_fresh_one(monkeypatch):
    """The budget (available RAM, free CUDA memory) is read at most once a second for requests that
    fit; a request that would not fit the last reading is judged on a new one."""
    import torch

    from service.server import memory

    readings = iter([(2**30, "first"), (2**20, "second"), (2**20, "third"), (2**40, "fourth")])
    guard = MemoryGuard(torch.device("cpu"), None, costs={"psnr": 100.0})
    calls = []
    monkeypatch.setattr(guard, "budget", lambda: calls.append(1) or next(readings))
    clock = [100.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    for _ in range(5):
        guard.check(["psnr"], 256, 256, "sr")  # 9.2 MiB of 1 GiB: fits
    assert len(calls) == 1
    clock[0] += memory.BUDGET_FRESH_S + 0.1  # stale: read again (1 MiB), too small, so once more before refusing
    with pytest.raises(Exception) as info:
        guard.check(["psnr"], 256, 256, "sr")
    assert len(calls) == 3 and info.value.kind == "too_large" and "third" in info.value.message
    guard.check(["psnr"], 4000, 4000, "sr")  # over the recent 1 MiB: read anew (1 TiB), fits
    guard.check(["psnr"], 4000, 4000, "sr")  # fits the recent reading
    assert len(calls) == 4


GUARD_PROBE = r"""
import numpy as np, torch
from service.server import memory
from service.server.allocator import keep_freed_memory
keep_freed_memory()
np.ones(1 << 26, dtype=np.float32)  # 256 MiB, freed: kept by the allocator, not in MemAvailable
memory.available_ram_bytes = lambda: 1 << 30
print(memory.MemoryGuard(torch.device("cpu"), None).budget()[0])
"""


@pytest.mark.skipif(not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"), reason="glibc's malloc only")
def test_memory_guard_counts_the_freed_memory_the_server_keeps():
    """Memory the allocator keeps for reuse (service/server/allocator.py) is used RAM to /proc/meminfo;
    a budget without it would refuse a request that the kept memory could hold."""
    result = subprocess.run([sys.executable, "-c", GUARD_PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) >= 0.8 * ((1 << 30) + (1 << 28))


def test_flat_huge_png_gets_413_at_once_under_defaults(vgg16_server):
    """A flat 8000×8000 PNG compresses to a few hundred KB; the header alone refuses it."""
    upload = flat_png(8000, 8000)
    assert len(upload) < 400_000
    srv = vgg16_server  # the shared server: the default limits
    before = rss_mib(srv.process.pid)
    start = time.perf_counter()
    response = httpx.post(
        f"{srv.url}/v1/score",
        files=[("sr", ("sr.png", upload)), ("gt", ("gt.png", upload))],
        data=dict(metrics="perceptual"),
        timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert response.status_code == 413, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "sr"] and "64000000 pixels" in detail["msg"] and "--max-image-pixels" in detail["msg"]
    assert elapsed < 5.0  # header check only: milliseconds, with room for a busy CI machine
    assert rss_mib(srv.process.pid) - before < 64  # nothing decoded: no 768 MB float image
    ok = httpx.post(
        f"{srv.url}/v1/score",
        files=[("sr", png_bytes(random_image(32, 32, 1))), ("gt", png_bytes(random_image(32, 32, 2)))],
        data=dict(metrics="perceptual"),
        timeout=60,
    )
    assert ok.status_code == 200


def test_memory_estimate_refuses_before_decoding(weights_dir):
    upload = flat_png(2048, 2048)  # under the pixel limit
    with SubprocessServer("--models", "vgg16", "--max-memory-gb", "0.25") as srv:
        response = httpx.post(
            f"{srv.url}/v1/score",
            files=[("sr", ("sr.png", upload)), ("gt", ("gt.png", upload))],
            data=dict(metrics="psnr,perceptual"),
            timeout=60,
        )
        assert response.status_code == 413, response.text
        message = response.json()["detail"][0]["msg"]
        for part in ("2048×2048", "perceptual", "GiB", "0.2 GiB (--max-memory-gb)", "largest square image that fits"):
            assert part in message, (part, message)
        small = png_bytes(random_image(64, 64, 3))
        assert httpx.post(f"{srv.url}/v1/score", files=[("sr", small), ("gt", small)], data=dict(metrics="perceptual")).status_code == 200


def test_allocation_failure_is_413_and_the_server_keeps_serving(weights_dir):
    """Under an address-space limit (prlimit --as) a request that passes the estimate (lifted
    with --max-memory-gb) fails to allocate: 413, and the next request gets a 200."""
    with SubprocessServer("--models", "vgg16", "--max-memory-gb", "1000", "--max-image-pixels", "0") as srv:
        with open(f"/proc/{srv.process.pid}/status") as handle:
            virtual = next(int(line.split()[1]) for line in handle if line.startswith("VmSize:")) * 1024
        subprocess.run(["prlimit", f"--pid={srv.process.pid}", f"--as={virtual + 1536 * 2**20}"], check=True)
        big = flat_png(3000, 3000)  # VGG16's relu1_2 alone: 64 × 3000² × 4 B = 2.3 GB per image
        response = httpx.post(
            f"{srv.url}/v1/score", files=[("sr", ("sr.png", big)), ("gt", ("gt.png", big))], data=dict(metrics="perceptual"), timeout=120
        )
        assert response.status_code == 413, response.text
        assert "out of memory" in response.json()["detail"][0]["msg"]
        small = png_bytes(random_image(32, 32, 4))
        ok = httpx.post(f"{srv.url}/v1/score", files=[("sr", small), ("gt", small)], data=dict(metrics="perceptual"), timeout=60)
        assert ok.status_code == 200, ok.text
        assert srv.process.poll() is None


def test_calibration_fits_the_growth_per_pixel_and_updates_only_the_measured_metrics(tmp_path):
    """The cost of a metric, per pixel at the largest size measured: the peak's growth per added
    image, or the smallest batch's own peak per image where that is larger; writing it keeps every
    other metric's figure and records the run it came from."""
    from service.server.memory_calibration import GIB, fit_costs, write_costs

    rows = [
        dict(metric="ssim", size=128, batch=1, rss_growth_gib=0.5),  # a smaller size: not the basis
        dict(metric="ssim", size=256, batch=1, rss_growth_gib=1.0),
        dict(metric="ssim", size=256, batch=4, rss_growth_gib=2.5),  # 0.5 GiB per added image
        dict(metric="psnr", size=256, batch=1, rss_growth_gib=0.25),  # one batch: no slope, no cost
    ]
    assert fit_costs(rows) == {"ssim": round(max(0.5, 1.0) * GIB / 256**2, 1)}
    flat = [dict(metric="l1", size=64, batch=1, rss_growth_gib=0.5), dict(metric="l1", size=64, batch=3, rss_growth_gib=0.5)]
    assert fit_costs(flat) == {"l1": round(0.5 * GIB / 64**2, 1)}  # no growth: the first batch's own cost per image
    cuda = [dict(metric="lpips_alex", size=64, batch=b, rss_growth_gib=9.0, cuda_peak_gib=0.1 * b) for b in (1, 2)]
    assert fit_costs(cuda) == {"lpips_alex": round(0.1 * GIB / 64**2, 1)}  # the CUDA peak where there is one

    table = tmp_path / "costs.json"
    table.write_text(json.dumps(dict(bytes_per_pixel={"psnr": 173.0, "ssim": 1.0}, measured_by={})))
    write_costs(table, dict(machine={"cpu": "test"}, started="now", memory_costs={"ssim": 656.0}))
    written = json.loads(table.read_text())
    assert written["bytes_per_pixel"] == {"psnr": 173.0, "ssim": 656.0}
    assert written["measured_by"]["ssim"]["machine"] == {"cpu": "test"} and "psnr" not in written["measured_by"]
