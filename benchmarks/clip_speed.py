"""Frames per second for one clip (default 100 frames of 854×480, a pan over a photo) scored with
``psnr,ssim,lpips_alex,tof,tlp``: in-process (``losses.score_clip``) and through a server started
here (``POST /v1/score/clip`` with the frames as PNGs), with the peak RSS of each process.

`uv run python benchmarks/clip_speed.py [FRAMES] [WIDTH] [HEIGHT]` prints one JSON line.
Backbones use deterministic random weights (speed does not depend on the values). In-process,
tOF's flows on a worker thread (the default) and inline alternate, twice each.
"""

import json
import resource
import sys
import time

import numpy as np
import torch
from PIL import Image
from skimage import data

import losses
from service.client import LossClient
from tests.servers import SubprocessServer, png_bytes

METRICS = ["psnr", "ssim", "lpips_alex", "tof", "tlp"]


def clip(frames: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((width + frames * 2, height + frames)))
    gt = np.stack([photo[t : t + height, 2 * t : 2 * t + width] for t in range(frames)])
    sr = np.clip(gt.astype(int) + np.random.default_rng(0).integers(-8, 9, gt.shape), 0, 255).astype(np.uint8)
    return sr, gt


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown")


def server_peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM")) / 1024


def main() -> None:
    frames, width, height = (int(sys.argv[i]) if len(sys.argv) > i else d for i, d in ((1, 100), (2, 854), (3, 480)))
    sr, gt = clip(frames, width, height)
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)  # uint8: converted chunk by chunk  # noqa: E731
    losses.score_clip(to(sr[:6]), to(gt[:6]), metrics=METRICS, pretrained=False)  # warm-up: models built
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for overlap in (True, False, True, False):
        started = time.perf_counter()
        losses.score_clip(to(sr), to(gt), metrics=METRICS, pretrained=False, overlap_flow=overlap)
        seconds[overlap].append(time.perf_counter() - started)
    inprocess, inline = min(seconds[True]), min(seconds[False])
    inprocess_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with SubprocessServer("--models", "alexnet", "--random-weights") as server, LossClient(server.url, timeout=1800) as client:
        sr_png, gt_png = [png_bytes(f) for f in sr], [png_bytes(f) for f in gt]
        client.score_clip(sr_png[:6], gt_png[:6], metrics=",".join(METRICS))
        started = time.perf_counter()
        client.score_clip(sr_png, gt_png, metrics=",".join(METRICS))
        served = time.perf_counter() - started
        server_rss = server_peak_rss_mib(server.process.pid)
    print(
        json.dumps(
            dict(
                cpu=cpu_model(),
                torch_threads=torch.get_num_threads(),
                frames=frames,
                size=f"{width}x{height}",
                metrics=METRICS,
                inprocess_fps=round(frames / inprocess, 2),
                inprocess_fps_flows_inline=round(frames / inline, 2),
                overlap_speedup=round(inline / inprocess, 3),
                server_fps=round(frames / served, 2),
                inprocess_peak_rss_mib=round(inprocess_rss),
                server_peak_rss_mib=round(server_rss),
            )
        )
    )


if __name__ == "__main__":
    main()
