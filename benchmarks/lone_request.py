"""Lone-request overhead: end-to-end latency of one request at a time minus the same call in-process.

`uv run python benchmarks/lone_request.py SIZE METRIC N ROUNDS` prints one JSON line of medians.

Each round starts a fresh server (random weights, --models vgg16) and a fresh worker process that
calls `losses.score` on the same pixels, then times N sequential requests to the server, pauses,
times N calls in the worker, and pauses again. Blocks, not alternation: when one process computes
right after the other, each finds the caches filled with the other's weights, which on a 2-core
machine made the server's compute look 6–15% slower. Fresh processes each round: two identical
worker processes differ by up to ~2 ms on a 90 ms call (memory placement is per process), a bias
that one server and one worker would report as the server's overhead; medians over several pairs
average it out. The worker allocates with glibc's defaults, as a user's script does, and the
server with what `serve` sets (service/server/allocator.py): from 256² up its pass takes no page faults
and is the faster one. For both on the server's allocator, run the bench with
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`
(`serve` keeps MALLOC_* settings it is given).
"""

import json
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np

from service.bench.service import png, start_server
from service.client import RequestSpec

WORKER = r"""
import sys, time
import numpy as np, torch
import losses
size, metric = int(sys.argv[1]), sys.argv[2]
sr, gt = np.load(sys.argv[3]), np.load(sys.argv[4])
as_batch = lambda a: torch.from_numpy(np.stack([a]).astype(np.float32) / 255).permute(0, 3, 1, 2)
x, y = as_batch(sr), as_batch(gt)
with torch.inference_mode():
    for line in sys.stdin:
        times = []
        for i in range(int(line) + 2):  # the first two warm the caches
            start = time.perf_counter()
            losses.score(x, y, metrics=(metric,), pretrained=False)
            if i >= 2:
                times.append((time.perf_counter() - start) * 1e3)
        print(" ".join(f"{t:.4f}" for t in times), flush=True)
"""


def main() -> None:
    import tempfile

    size, metric = int(sys.argv[1]), sys.argv[2]
    n, rounds = (int(sys.argv[3]) if len(sys.argv) > 3 else 8), (int(sys.argv[4]) if len(sys.argv) > 4 else 4)
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    sr = np.clip(gt.astype(int) + rng.integers(-12, 13, gt.shape), 0, 255).astype(np.uint8)
    files = [("sr", ("sr.png", png(sr), "image/png")), ("gt", ("gt.png", png(gt), "image/png"))]
    form = RequestSpec.form("/v1/score", files, {"metrics": metric})  # one body, as LossClient sends it
    e2e, server, local, path = [], [], [], []  # path: per request, end to end − its own compute
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/sr.npy", sr)
        np.save(f"{tmp}/gt.npy", gt)
        for _ in range(rounds):
            process, url = start_server(["--device", "cpu", "--models", "vgg16"])
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(size), metric, f"{tmp}/sr.npy", f"{tmp}/gt.npy"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                worker.stdin.write("0\n")  # imports, loads the backbone and warms up before any timing
                worker.stdin.flush()
                worker.stdout.readline()
                with httpx.Client(base_url=url, timeout=120) as client:
                    for _block in range(2):
                        for i in range(n + 2):  # the first two of a block warm the connection and the caches
                            start = time.perf_counter()
                            body = client.post(form.path, content=form.content, headers=form.headers).json()
                            if i >= 2:
                                e2e.append((time.perf_counter() - start) * 1e3)
                                server.append(body["timing_ms"]["compute"])
                                path.append(e2e[-1] - server[-1])
                        time.sleep(0.5)
                        worker.stdin.write(f"{n}\n")
                        worker.stdin.flush()
                        local.extend(float(t) for t in worker.stdout.readline().split())
                        time.sleep(0.5)
            finally:
                worker.stdin.close()
                worker.wait()
                process.terminate()
                process.wait()
    median = statistics.median
    print(
        json.dumps(
            dict(
                size=size,
                metric=metric,
                n=len(e2e),
                processes=rounds,
                e2e_p50=round(median(e2e), 2),
                server_compute_p50=round(median(server), 2),
                inprocess_p50=round(median(local), 2),
                e2e_minus_inprocess=round(median(e2e) - median(local), 2),
                e2e_minus_server_compute=round(median(e2e) - median(server), 2),
                request_path_p50=round(median(path), 2),
            )
        )
    )


if __name__ == "__main__":
    main()
