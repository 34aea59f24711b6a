"""Page faults and time of the library's VGG16 pass in this process, as its environment allocates.

`uv run python benchmarks/page_faults.py SIZE BATCH [main|thread]` prints one JSON line: the
median time of a `perceptual` call on a BATCH×3×SIZE×SIZE batch (random weights) and the minor
page faults it took, after two warm-up calls, run on the main thread or (as the server's device
thread does) on another. Compare glibc's defaults with what `serve` sets (service/server/allocator.py):

    uv run python benchmarks/page_faults.py 256 1 thread
    MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 \\
        uv run python benchmarks/page_faults.py 256 1 thread
"""

import json
import os
import resource
import statistics
import sys
import threading
import time

import torch

import losses


def main() -> None:
    size, batch = int(sys.argv[1]), int(sys.argv[2])
    where = sys.argv[3] if len(sys.argv) > 3 else "main"
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(batch, 3, size, size, generator=generator)
    sr = (gt + 0.05 * torch.rand(gt.shape, generator=generator)).clamp(0, 1)
    times, faults = [], []

    def passes() -> None:
        with torch.inference_mode():
            for i in range(10):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                losses.score(sr, gt, metrics=("perceptual",), pretrained=False)
                if i >= 2:
                    times.append((time.perf_counter() - start) * 1e3)
                    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    if where == "thread":
        worker = threading.Thread(target=passes)
        worker.start()
        worker.join()
    else:
        passes()
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}
    print(
        json.dumps(
            dict(
                size=size,
                batch=batch,
                thread=where,
                malloc_environment=malloc,
                n=len(times),
                ms_p50=round(statistics.median(times), 2),
                minor_faults_p50=statistics.median(faults),
            )
        )
    )


if __name__ == "__main__":
    main()
