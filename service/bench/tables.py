"""The tables ``bench`` prints from its report."""

from __future__ import annotations


def print_tables(report: dict, console) -> None:
    from rich.table import Table

    machine = report["machine"]
    console.print(f"machine: {machine}")
    if "inprocess" in report:
        table = Table("metric", "size", "batch", "img/s", "ms/batch", title="in-process throughput")
        for r in report["inprocess"]:
            if r["seconds"] is None:
                table.add_row(r["metric"], f"{r['size']}²", str(r["batch"]), "not run", r["skipped"])
            else:
                table.add_row(r["metric"], f"{r['size']}²", str(r["batch"]), f"{r['images_per_s']:.2f}", f"{1e3 * r['seconds']:.1f}")
        console.print(table)
    if "service" in report:
        batched = max(report["service_inprocess_reference"]["images_per_s_by_batch"])
        size = report["service_inprocess_reference"]["size"]
        table = Table(
            "mode",
            "concurrency",
            "img/s",
            "p50 ms",
            "p99 ms",
            "× in-process b=1",
            f"× in-process b={batched}",
            title=f"service, perceptual {size}²",
        )
        for r in report["service"]:
            table.add_row(
                r["mode"],
                str(r["concurrency"]),
                f"{r['images_per_s']:.2f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['vs_inprocess_batch1']:.2f}",
                f"{r['vs_inprocess_batched']:.2f}",
            )
        console.print(table)
        lone = report["lone_request"]
        console.print(
            f"lone request: p50 {lone['p50_ms']:.1f} ms, compute {lone['compute_p50_ms']:.1f} ms, added {lone['added_ms']:.1f} ms"
        )
        table = Table("metric", "size", "img/s", "p50 ms", "compute p50 ms", title="service, concurrency 4, per metric")
        for r in report["service_metrics"]:
            table.add_row(r["metric"], f"{r['size']}²", f"{r['images_per_s']:.2f}", f"{r['p50_ms']:.1f}", f"{r['compute_p50_ms']:.1f}")
        console.print(table)
    if "peers" in report:
        table = Table(
            "metric",
            "implementation",
            "ms/image",
            "max |Δ| vs reference",
            "reference",
            title=f"SSIM/PSNR/MS-SSIM against peers on {report['machine']['cpu']}",
        )
        for r in report["peers"]:
            table.add_row(r["metric"], r["peer"], f"{r['ms_per_image']:.2f}", f"{r['max_abs_delta_vs_reference']:.2e}", r["reference"])
        console.print(table)
    if "memory" in report:
        table = Table("metric", "size", "batch", "peak RSS GiB", "RSS growth GiB", "CUDA peak GiB", title="memory")
        for r in report["memory"]:
            table.add_row(
                r["metric"],
                f"{r['size']}²",
                str(r["batch"]),
                f"{r['peak_rss_gib']:.2f}",
                f"{r['rss_growth_gib']:.2f}",
                f"{r['cuda_peak_gib']:.2f}" if "cuda_peak_gib" in r else "n/a (CPU)",
            )
        console.print(table)
        table = Table("metric", "size", "GiB/image", "largest batch in 8 GiB", "basis", title="8 GiB (P4) budget")
        for r in report["budget"]:
            basis = r["basis"] + (f", extrapolated from {r['extrapolated_from_size']}²" if r["extrapolated_from_size"] else "")
            table.add_row(r["metric"], f"{r['size']}²", f"{r['per_image_gib']:.3f}", str(r["largest_batch_in_8gib"]), basis)
        console.print(table)
