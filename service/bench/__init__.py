"""``loss-service bench``: throughput, latency, exactness-vs-peers and memory, measured side by
side in one run. Prints tables and writes JSON. Nothing here asserts a time.

Backbones use deterministic random weights: speed does not depend on the weight values.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..common.errors import comma_list
from ..server import memory_calibration
from .inprocess import INPROCESS_METRICS, bench_inprocess, unsupported_size
from .machine import machine_info
from .memory import bench_memory
from .peers import MIN_TIMED_S, QUICK_TIMED_S, bench_peers
from .service import SERVICE_METRICS, bench_service
from .tables import print_tables

__all__ = ["INPROCESS_METRICS", "run"]


def run(args) -> int:
    from rich.console import Console

    from ..server.device import select_device

    console = Console()
    device = select_device(args.device)
    quick = args.quick
    log = (lambda message: console.log(message)) if not args.quiet else (lambda message: None)
    sizes = tuple(int(v) for v in comma_list(args.sizes)) if args.sizes else ((256,) if quick else (256, 512))
    batches = tuple(int(v) for v in comma_list(args.batches)) if args.batches else ((1, 8) if quick else (1, 8, 32))
    report: dict = dict(machine=machine_info(device), quick=quick, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    sections = comma_list(args.sections)

    if "inprocess" in sections or "service" in sections:
        metrics = INPROCESS_METRICS if "inprocess" in sections else ("perceptual",)
        report["inprocess"] = bench_inprocess(device, sizes if "inprocess" in sections else sizes[:1], batches, metrics, 1, log)
    if "service" in sections:
        rates = {r["batch"]: r["images_per_s"] for r in report["inprocess"] if r["metric"] == "perceptual" and r["size"] == sizes[0]}
        concurrencies = (1, 4, 16) if quick else (1, 4, 16, 64)
        requests_for = (lambda c: max(4, 2 * c)) if quick else (lambda c: max(16, 4 * c))
        report["service"], report["lone_request"], report["service_metrics"] = bench_service(
            args.device, "perceptual", sizes[0], concurrencies, requests_for, rates, (SERVICE_METRICS, sizes), log
        )
        report["service_inprocess_reference"] = dict(metric="perceptual", size=sizes[0], images_per_s_by_batch=rates)
    if "peers" in sections:
        report["peers"] = bench_peers(sizes[0] if quick else 512, 1 if quick else 5, log, QUICK_TIMED_S if quick else MIN_TIMED_S)
    if "memory" in sections:
        from losses import REGISTRY

        # Per-image metrics: fid and kid cost per image, not per pixel (bytes_per_image in memory_costs.json).
        per_image = tuple(name for name, metric in REGISTRY.items() if metric.kind == "image")
        memory_metrics = ("perceptual",) if quick else tuple(comma_list(args.memory_metrics)) if args.memory_metrics else per_image
        configs = [(m, s, b) for m in memory_metrics for s in sizes for b in batches[:2] if unsupported_size(m, s) is None]
        report["memory"], report["budget"] = bench_memory(device, configs, log)
        report["memory_costs"] = memory_calibration.fit_costs(report["memory"])
        if args.write_costs:
            memory_calibration.write_costs(Path(args.write_costs), report)

    print_tables(report, console)
    Path(args.json).write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")
    return 0
