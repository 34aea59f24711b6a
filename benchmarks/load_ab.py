"""Two server configurations side by side under concurrent load: images per second and latency.

`uv run python benchmarks/load_ab.py SIZE METRIC CONCURRENCY REQUESTS ROUNDS A B` prints one JSON
line per configuration. A and B are comma lists of NAME=VALUE added to the servers' environment,
as in `server_ab.py` (e.g. `GOMP_SPINCOUNT=300000` against nothing, the server's default). Each
round starts both servers fresh and sends REQUESTS requests from CONCURRENCY clients to each,
alternating A, B (B first in odd rounds); medians over the rounds.
"""

import asyncio
import json
import statistics
import sys

from service.bench.service import drive_load, start_server, upload_files


def main() -> None:
    size, metric, concurrency, requests, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    specs = sys.argv[6:8]
    envs = [dict(pair.split("=", 1) for pair in spec.split(",") if pair) for spec in specs]
    files = upload_files(size)[:2]  # SR and GT
    results: list[list[dict]] = [[], []]
    for round_ in range(rounds):
        servers = [start_server(["--device", "cpu", "--models", "vgg16"], env) for env in envs]
        try:
            for i in (0, 1) if round_ % 2 == 0 else (1, 0):
                results[i].append(asyncio.run(drive_load(servers[i][1], files, metric, concurrency, requests)))
        finally:
            for process, _ in servers:
                process.terminate()
                process.wait()
    median = statistics.median
    for spec, rows in zip(specs, results):
        print(
            json.dumps(
                dict(
                    env=spec,
                    size=size,
                    metric=metric,
                    concurrency=concurrency,
                    requests=requests,
                    rounds=rounds,
                    images_per_s=round(median(r["images_per_s"] for r in rows), 2),
                    p50_ms=round(median(r["p50_ms"] for r in rows), 2),
                    p99_ms=round(median(r["p99_ms"] for r in rows), 2),
                )
            )
        )


if __name__ == "__main__":
    main()
