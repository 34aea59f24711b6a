"""Lone-request overhead: end-to-end latency of one request at a time minus the same call in-process.

`uv run python benchmarks/lone_request.py SIZE METRIC N ROUNDS` prints one JSON line of medians.

Each round sends N sequential requests to a server (random weights, --models vgg16), pauses, then
makes N in-process `losses.score` calls on the same pixels, and pauses again. Blocks, not
alternation: when one process computes right after the other, each finds the caches filled with
the other's weights and its threads competing with the other's spinning OpenMP/OpenBLAS threads,
which on a 2-core machine made the server's compute look 6–15% slower than the same call in the
server process itself.
"""
import json
import statistics
import sys
import time

import httpx
import numpy as np
import torch

import losses
from service.bench import png, start_server

size, metric = int(sys.argv[1]), sys.argv[2]
n, rounds = (int(sys.argv[3]) if len(sys.argv) > 3 else 8), (int(sys.argv[4]) if len(sys.argv) > 4 else 4)
rng = np.random.default_rng(0)
gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
sr = np.clip(gt.astype(int) + rng.integers(-12, 13, gt.shape), 0, 255).astype(np.uint8)
files = [("sr", ("sr.png", png(sr), "image/png")), ("gt", ("gt.png", png(gt), "image/png"))]
x = torch.from_numpy(np.stack([sr]).astype(np.float32) / 255).permute(0, 3, 1, 2)
y = torch.from_numpy(np.stack([gt]).astype(np.float32) / 255).permute(0, 3, 1, 2)
process, url = start_server(["--device", "cpu", "--models", "vgg16"])
e2e, server, local = [], [], []
try:
    with httpx.Client(base_url=url, timeout=120) as client, torch.inference_mode():
        for _ in range(rounds):
            for i in range(n + 2):  # the first two of a block warm the connection and the caches
                start = time.perf_counter()
                body = client.post("/v1/score", files=files, data={"metrics": metric}).json()
                if i >= 2:
                    e2e.append((time.perf_counter() - start) * 1e3)
                    server.append(body["timing_ms"]["compute"])
            time.sleep(0.5)
            for i in range(n + 2):
                start = time.perf_counter()
                losses.score(x, y, metrics=(metric,), pretrained=False)
                if i >= 2:
                    local.append((time.perf_counter() - start) * 1e3)
            time.sleep(0.5)
finally:
    process.terminate()
    process.wait()
median = statistics.median
print(json.dumps(dict(size=size, metric=metric, n=len(e2e), e2e_p50=round(median(e2e), 2),
                      server_compute_p50=round(median(server), 2), inprocess_p50=round(median(local), 2),
                      e2e_minus_inprocess=round(median(e2e) - median(local), 2),
                      e2e_minus_server_compute=round(median(e2e) - median(server), 2))))
