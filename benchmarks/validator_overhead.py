"""What validating through the server costs a training loop: a toy SR model trained on CPU for the
same number of steps without and with ``Validator`` every K steps (8 images of 128² each time),
the two alternated in rounds against one server started here, on 127.0.0.1.

`uv run python benchmarks/validator_overhead.py [STEPS] [K] [ROUNDS] [METRICS]` prints one JSON line.
The server runs on the same CPUs as the loop, so with feature metrics its compute competes with
training; with pixel metrics the figure is the validator's own cost (clone, encode, send).
"""

import json
import statistics
import sys
import time

import torch
from torch import nn

from service.client import Validator
from tests.servers import SubprocessServer


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))


def train(steps: int, every: int, validator: Validator | None) -> float:
    """Seconds per training step (validation calls included)."""
    model = toy_model()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    for step in range(steps):
        gt = torch.rand(8, 3, 128, 128, generator=g)
        sr = model(nn.functional.avg_pool2d(gt, 3, stride=1, padding=1))
        loss = nn.functional.l1_loss(sr, gt)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if validator is not None and step % every == 0:
            validator(step, sr.clamp(0, 1), gt)
    seconds = (time.perf_counter() - started) / steps
    if validator is not None:
        validator.close()
    return seconds


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown")


def main() -> None:
    steps, every, rounds = (int(sys.argv[i]) if len(sys.argv) > i else default for i, default in ((1, 100), (2, 10), (3, 3)))
    metrics = sys.argv[4] if len(sys.argv) > 4 else "psnr,ssim"
    plain, validated = [], []
    with SubprocessServer("--models", "vgg16", "--random-weights") as server:
        for _ in range(rounds):
            plain.append(train(steps, every, None))
            validated.append(train(steps, every, Validator(server.url, metrics, max_in_flight=4)))
    base, with_validator = statistics.median(plain), statistics.median(validated)
    print(
        json.dumps(
            dict(
                cpu=cpu_model(),
                torch_threads=torch.get_num_threads(),
                steps=steps,
                every=every,
                rounds=rounds,
                images_per_validation=8,
                size=128,
                metrics=metrics,
                plain_ms_per_step=round(base * 1e3, 2),
                validated_ms_per_step=round(with_validator * 1e3, 2),
                overhead_percent=round(100 * (with_validator / base - 1), 1),
                plain_rounds_ms=[round(s * 1e3, 2) for s in plain],
                validated_rounds_ms=[round(s * 1e3, 2) for s in validated],
            )
        )
    )


if __name__ == "__main__":
    main()
