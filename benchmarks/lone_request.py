"""Lone-request overhead, alternating: one HTTP request, then the same call in-process, n times.
Each timed call starts after a pause (GAP_S), so it meets an idle machine as a lone request does:
threads left spinning by the previous call (OpenMP's, OpenBLAS's) would otherwise slow the next one.

`uv run python benchmarks/lone_request.py 128 perceptual 25` prints one JSON line of medians."""
import json, statistics, sys, time
import numpy as np, httpx, torch
from service.bench import start_server, png
import losses
size, metric, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 25
GAP_S = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
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
        for i in range(n + 3):
            time.sleep(GAP_S)
            t = time.perf_counter()
            body = client.post("/v1/score", files=files, data={"metrics": metric}).json()
            a = (time.perf_counter() - t) * 1e3
            time.sleep(GAP_S)
            t = time.perf_counter()
            losses.score(x, y, metrics=(metric,), pretrained=False)
            b = (time.perf_counter() - t) * 1e3
            if i >= 3:
                e2e.append(a); server.append(body["timing_ms"]["compute"]); local.append(b)
finally:
    process.terminate(); process.wait()
m = statistics.median
print(json.dumps(dict(size=size, metric=metric, n=n, gap_s=GAP_S, e2e_p50=round(m(e2e), 2), server_compute_p50=round(m(server), 2),
                      inprocess_p50=round(m(local), 2), e2e_minus_inprocess=round(m(e2e) - m(local), 2),
                      paired_median=round(m([a - b for a, b in zip(e2e, local)]), 2))))
