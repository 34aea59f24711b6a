"""Memory of FID/KID as the set grows: ``loss-service eval --metrics fid,kid`` on N generated
128² SR images against a fixed GT set, through a server started here (127.0.0.1), for each N.

`uv run python benchmarks/fid_memory.py [N ...]` (default 1000 10000) prints one JSON line per N:
the eval process's peak RSS (it holds FID's float64 sums and writes KID's features to a
memory-mapped file), the server's peak RSS, the KID feature file's size and the wall time. Then
one line comparing tr√(Σ1Σ2) by symmetric eigendecomposition with scipy's ``sqrtm`` at 2048-d.

The server runs with ``--random-weights`` (the memory does not depend on the weights' values).
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.servers import SubprocessServer

GT_IMAGES = 500
SIDE = 128


def write_images(folder: Path, count: int, seed: int) -> None:
    """Smooth random images (noise upsampled 8×), PNG."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = rng.integers(0, 256, (SIDE // 8, SIDE // 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((SIDE, SIDE), Image.BICUBIC).save(folder / f"{index:05d}.png", compress_level=1)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024


def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown")


# ``loss-service eval`` in a child that reports its own peak RSS (KiB) on its last stderr line.
EVAL_REPORTING_PEAK = (
    "import resource, sys; from service.cli import main; code = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def eval_run(url: str, sr: Path, gt: Path, work: Path) -> dict:
    """One eval in a child process, timed, with its peak RSS."""
    command = [sys.executable, "-c", EVAL_REPORTING_PEAK, "eval", "--url", url, "--sr", str(sr), "--gt", str(gt)]
    command += ["--metrics", "fid,kid", "--options", '{"subset_size": 100}', "--feature-cache", str(work / "cache")]
    command += ["--out", str(work / "out.csv"), "--json", str(work / "out.json"), "--quiet"]
    started = time.perf_counter()
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_kib = int(finished.stderr.strip().splitlines()[-1])
    result = json.loads((work / "out.json").read_text())["models"][sr.name]["dataset_metrics"]
    return dict(seconds=seconds, eval_peak_rss_mib=peak_kib / 1024, gt_cached=result["gt_cached"], values=result["values"])


def sqrtm_comparison() -> dict:
    from scipy.linalg import sqrtm

    from losses.sets.statistics import trace_sqrt_product

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4096, 2048)), rng.normal(size=(4096, 2048)) * 0.9 + 0.1
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    started = time.perf_counter()
    ours = trace_sqrt_product(sigma_a, sigma_b)
    eigh_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = float(np.trace(sqrtm(sigma_a @ sigma_b)).real)
    sqrtm_s = time.perf_counter() - started
    return dict(
        what="tr sqrt(S1 S2), 2048-d, full rank",
        eigh_s=eigh_s,
        sqrtm_s=sqrtm_s,
        speedup=sqrtm_s / eigh_s,
        rel_diff=abs(ours - theirs) / theirs,
    )


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [1000, 10000]
    machine = dict(cpu=cpu_model(), cpus=__import__("os").cpu_count())
    with (
        tempfile.TemporaryDirectory(prefix="fid-memory-") as tmp,
        SubprocessServer("--models", "inception_v3_fid", "--random-weights") as server,
    ):
        root = Path(tmp)
        write_images(root / "gt", GT_IMAGES, 0)
        for count in sizes:
            sr = root / f"sr{count}"
            write_images(sr, count, count)
            run = eval_run(server.url, sr, root / "gt", root)
            features_file_mib = count * 2048 * 4 / 2**20
            print(
                json.dumps(
                    dict(
                        sr_images=count,
                        gt_images=GT_IMAGES,
                        side=SIDE,
                        **run,
                        server_peak_rss_mib=peak_rss_mib(server.process.pid),
                        kid_feature_file_mib=features_file_mib,
                        all_features_in_memory_mib=features_file_mib,
                        machine=machine,
                    )
                ),
                flush=True,
            )
    print(json.dumps(dict(**sqrtm_comparison(), machine=machine)), flush=True)


if __name__ == "__main__":
    main()
