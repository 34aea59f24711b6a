"""``eval --ray`` with 1 and 2 actors against the single-process path, side by side on this machine.

For each of two folder sizes (SMALL and LARGE pairs of 256² PNGs: scikit-image photo crops and
degraded copies) it times, with deterministic random weights:
- the single-process path: read, decode and ``losses.score`` in batches of 8, in this process;
- ``loss-service eval --ray --ray-actors A`` for A = 1, 2, each in a fresh process with a fresh
  local Ray instance (its start-up included).
The marginal rate, (LARGE − SMALL) images ÷ the time difference, leaves out the fixed start-up
cost. It also times the decode of one 512² PNG (the per-image CPU cost of the decode tasks).

`PYTHONPATH=. uv run --extra ray python benchmarks/ray_throughput.py [METRICS]` prints one JSON line.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

import losses
from benchmarks.timing import median_seconds
from service.bench.machine import cpu_model
from service.common.decode import decode
from tests.conftest import degrade

SMALL, LARGE, SIZE = 32, 96, 256


def write_pairs(root: Path, count: int, size: int = SIZE, compress_level: int = 6) -> None:
    """``count`` GT crops of size² from the photos at least that large, and degraded SR copies."""
    sources = [photo for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket()) if min(photo.shape[:2]) > size]
    for folder in ("sr", "gt"):
        (root / folder).mkdir(parents=True)
    for index in range(count):
        source = sources[index % len(sources)]
        top, left = (13 * index) % (source.shape[0] - size), (17 * index) % (source.shape[1] - size)
        gt = np.ascontiguousarray(source[top : top + size, left : left + size])
        Image.fromarray(gt).save(root / "gt" / f"{index:04d}.png", compress_level=compress_level)
        Image.fromarray(degrade(gt, index)).save(root / "sr" / f"{index:04d}.png", compress_level=compress_level)


def single_process(root: Path, metrics: list[str]) -> float:
    started = time.perf_counter()
    names = sorted(path.name for path in (root / "gt").iterdir())
    for start in range(0, len(names), 8):
        pixels = {
            role: torch.from_numpy(np.stack([decode((root / role / n).read_bytes(), role).pixels for n in names[start : start + 8]]))
            for role in ("sr", "gt")
        }
        with torch.inference_mode():
            losses.score(*(pixels[r].permute(0, 3, 1, 2) for r in ("sr", "gt")), metrics=metrics, pretrained=False)
    return time.perf_counter() - started


def on_ray(root: Path, metrics: str, actors: int) -> float:
    argv = ["eval", "--ray", "--random-weights", "--sr", str(root / "sr"), "--gt", str(root / "gt"), "--metrics", metrics, "--quiet"]
    argv += ["--ray-actors", str(actors), "--out", str(root / f"ray{actors}.csv"), "--parquet", str(root / f"ray{actors}.parquet")]
    code = f"from service.cli import main; raise SystemExit(main({argv!r}))"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    metrics = sys.argv[1] if len(sys.argv) > 1 else "psnr,ssim,lpips_alex"
    result = dict(cpu=cpu_model(), torch_threads=torch.get_num_threads(), metrics=metrics, image=f"{SIZE}² pairs")
    with tempfile.TemporaryDirectory() as tmp:
        roots = {count: Path(tmp) / str(count) for count in (SMALL, LARGE)}
        for count, root in roots.items():
            write_pairs(root, count)
        single_process(roots[SMALL], metrics.split(","))  # warm-up: the models are built once per process
        for name, run in [("single_process", lambda r: single_process(r, metrics.split(",")))] + [
            (f"ray_{a}_actors", lambda r, a=a: on_ray(r, metrics, a)) for a in (1, 2)
        ]:
            seconds = {count: run(root) for count, root in roots.items()}
            result[name] = dict(
                seconds={str(c): round(s, 2) for c, s in seconds.items()},
                marginal_images_per_s=round((LARGE - SMALL) / (seconds[LARGE] - seconds[SMALL]), 2),
            )
        png = Path(tmp) / "one.png"
        Image.fromarray(np.ascontiguousarray(data.astronaut()[:512, :512])).save(png)
        result["decode_512_png_ms"] = round(1000 * median_seconds(lambda: decode(png.read_bytes(), "sr"), 20)[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
