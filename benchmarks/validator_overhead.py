"""What validating through the server costs a training loop: a toy SR model trained on CPU for the
same number of steps without and with ``Validator`` every K steps (8 images of 128² each time),
the two alternated in rounds against one server started here, on 127.0.0.1.

`uv run python benchmarks/validator_overhead.py [STEPS] [K] [ROUNDS] [METRICS] [--pin]` prints one
JSON line with two measures of what the training process pays:

- wall time per step, the server sharing the loop's CPUs (unless ``--pin``), which charges the
  server's compute to training;
- the training process's own CPU time per step (``time.process_time``: the loop and the
  validator's thread, never the server's process), the cost a loop pays wherever the server runs.

``--pin`` puts every thread of the server on the last core and the loop (one torch thread) on
the others, so the wall-time figure no longer counts the server's compute either.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from service.client import Validator
from tests.servers import SubprocessServer


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))


def train(steps: int, every: int, validator: Validator | None) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds per training step (validation calls included)."""
    model = toy_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    for step in range(steps):
        gt = torch.rand(8, 3, 128, 128, generator=g)
        sr = model(nn.functional.avg_pool2d(gt, 3, stride=1, padding=1))
        loss = nn.functional.l1_loss(sr, gt)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if validator is not None and step % every == 0:
            validator(step, sr.clamp(0, 1), gt)
    if validator is not None:
        validator.close()  # the last validations finish inside the measured time
    return (time.perf_counter() - started) / steps, (time.process_time() - cpu_started) / steps


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown")


def pin(server_pid: int) -> str:
    """The server's threads on the last core, this process on the others with one torch thread."""
    cores = sorted(os.sched_getaffinity(0))
    subprocess.run(["taskset", "-a", "-p", "-c", str(cores[-1]), str(server_pid)], check=True, capture_output=True)
    os.sched_setaffinity(0, cores[:-1])
    torch.set_num_threads(len(cores) - 1)
    return f"server on core {cores[-1]}, loop on {cores[:-1]}"


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg != "--pin"]
    steps, every, rounds = (int(args[i]) if len(args) > i else default for i, default in ((0, 100), (1, 10), (2, 3)))
    metrics = args[3] if len(args) > 3 else "psnr,ssim"
    plain, validated = [], []
    with SubprocessServer("--models", "vgg16", "--random-weights") as server:
        placement = pin(server.process.pid) if "--pin" in sys.argv else "server and loop share every core"
        for _ in range(rounds):
            plain.append(train(steps, every, None))
            validated.append(train(steps, every, Validator(server.url, metrics, max_in_flight=4)))
    wall = [statistics.median(s[0] for s in runs) for runs in (plain, validated)]
    cpu = [statistics.median(s[1] for s in runs) for runs in (plain, validated)]
    print(
        json.dumps(
            dict(
                cpu=cpu_model(),
                placement=placement,
                torch_threads=torch.get_num_threads(),
                steps=steps,
                every=every,
                rounds=rounds,
                images_per_validation=8,
                size=128,
                metrics=metrics,
                plain_ms_per_step=round(wall[0] * 1e3, 2),
                validated_ms_per_step=round(wall[1] * 1e3, 2),
                overhead_percent=round(100 * (wall[1] / wall[0] - 1), 1),
                plain_cpu_ms_per_step=round(cpu[0] * 1e3, 2),
                validated_cpu_ms_per_step=round(cpu[1] * 1e3, 2),
                cpu_overhead_percent=round(100 * (cpu[1] / cpu[0] - 1), 1),
                plain_rounds_ms=[round(s[0] * 1e3, 2) for s in plain],
                validated_rounds_ms=[round(s[0] * 1e3, 2) for s in validated],
            )
        )
    )


if __name__ == "__main__":
    main()
