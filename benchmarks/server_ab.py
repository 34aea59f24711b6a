"""Two server configurations side by side: end-to-end latency of one request at a time, and the
server-reported compute, for servers started with environment A and environment B.

`uv run python benchmarks/server_ab.py SIZE METRIC N ROUNDS A B` prints one JSON line per
configuration. A and B are comma lists of NAME=VALUE added to the servers' environment, e.g.
`PYTHONPATH=/tmp/old-checkout` against `PYTHONPATH=$PWD` (two commits), or
`GOMP_SPINCOUNT=10000` against `GOMP_SPINCOUNT=300000`. Each round starts both servers fresh and
times blocks of N requests (after two warm-up requests) alternating A, B, A, B (B first in odd
rounds), so both see the same machine state; medians over every round. `minor_faults_per_request`
is the server process's page faults (/proc/PID/stat) over the timed requests, per request.
"""

import json
import statistics
import sys
import time

import httpx

from service.bench.service import start_server, upload_files
from service.client import RequestSpec


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (field 10 of /proc/PID/stat, after the command name)."""
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[7])


def main() -> None:
    size, metric, n, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    specs = sys.argv[5:7]
    envs = [dict(pair.split("=", 1) for pair in spec.split(",") if pair) for spec in specs]
    files = upload_files(size)[:2]  # SR and GT
    form = RequestSpec.form("/v1/score", files, {"metrics": metric})  # one body, as LossClient sends it
    e2e, compute, path = ([[], []] for _ in range(3))  # path: per request, end to end − its own compute
    faults = [0, 0]
    for round_ in range(rounds):
        servers = [start_server(["--device", "cpu", "--models", "vgg16"], env) for env in envs]
        clients = [httpx.Client(base_url=url, timeout=120) for _, url in servers]
        try:
            for _ in range(2):
                for i in (0, 1) if round_ % 2 == 0 else (1, 0):
                    for k in range(n + 2):
                        if k == 2:
                            faults[i] -= minor_faults(servers[i][0].pid)
                        start = time.perf_counter()
                        body = clients[i].post(form.path, content=form.content, headers=form.headers).json()
                        if k >= 2:
                            e2e[i].append((time.perf_counter() - start) * 1e3)
                            compute[i].append(body["timing_ms"]["compute"])
                            path[i].append(e2e[i][-1] - compute[i][-1])
                    faults[i] += minor_faults(servers[i][0].pid)
                    time.sleep(0.3)
        finally:
            for (process, _), client in zip(servers, clients):
                client.close()
                process.terminate()
                process.wait()
    median = statistics.median
    for spec, times, computes, paths, faulted in zip(specs, e2e, compute, path, faults):
        print(
            json.dumps(
                dict(
                    env=spec,
                    size=size,
                    metric=metric,
                    n=len(times),
                    e2e_p50=round(median(times), 2),
                    compute_p50=round(median(computes), 2),
                    e2e_minus_compute=round(median(times) - median(computes), 2),
                    request_path_p50=round(median(paths), 2),
                    minor_faults_per_request=round(faulted / len(times)),
                )
            )
        )


if __name__ == "__main__":
    main()
