"""Does ``eval --ray`` stream? Its memory at three folder sizes, up to 16× apart.

For each of SIZES (or the counts given as arguments) pairs of 384² PNGs (scikit-image photo crops and degraded copies) it runs
``loss-service eval --ray --metrics psnr`` in a fresh process (a fresh local Ray instance) and
samples, every 0.25 s, the proportional set size (PSS: shared pages split among their users, so
Ray's shared-memory object store is counted once) summed over the driver and every process it
started (Ray's GCS, raylet, decode and actor workers), and the driver's own peak RSS. If the
pipeline held the dataset, the peak would grow with it: 1600 pairs' decoded pixels are 5.4 GiB
(float32). What does grow is the driver's list of items and rows (paths and scores).

`PYTHONPATH=. uv run --extra ray python benchmarks/ray_memory.py [COUNT ...]` prints one JSON line.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.ray_throughput import write_pairs
from service.bench.machine import cpu_model

SIZES, SIZE = (100, 800, 1600), 384
MIB = 2**20


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc's parent links)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def kib_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measured_run(root: Path) -> dict:
    argv = ["eval", "--ray", "--random-weights", "--sr", str(root / "sr"), "--gt", str(root / "gt"), "--metrics", "psnr", "--quiet"]
    argv += ["--out", str(root / "run.csv")]
    code = f"from service.cli import main; raise SystemExit(main({argv!r}))"
    started = time.perf_counter()
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_tree, peak_driver = 0, 0
    while driver.poll() is None:
        peak_tree = max(peak_tree, sum(kib_field(f"/proc/{pid}/smaps_rollup", "Pss") for pid in descendants(driver.pid)))
        peak_driver = max(peak_driver, kib_field(f"/proc/{driver.pid}/status", "VmHWM"))
        time.sleep(0.25)
    return dict(
        seconds=round(time.perf_counter() - started, 1),
        status=driver.returncode,
        peak_pss_all_processes_mib=round(peak_tree / MIB),
        peak_rss_driver_mib=round(peak_driver / MIB),
        decoded_pixels_of_the_folder_mib=round(count_pairs(root) * 2 * SIZE * SIZE * 3 * 4 / MIB),
    )


def count_pairs(root: Path) -> int:
    return sum(1 for _ in (root / "gt").iterdir())


def main() -> None:
    result = dict(cpu=cpu_model(), cpus=os.cpu_count(), metrics="psnr", image=f"{SIZE}² pairs")
    with tempfile.TemporaryDirectory() as tmp:
        for count in [int(arg) for arg in sys.argv[1:]] or SIZES:
            root = Path(tmp) / str(count)
            write_pairs(root, count, SIZE, compress_level=1)
            result[f"{count}_pairs"] = measured_run(root)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
