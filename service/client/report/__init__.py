"""``loss-service report``: combine ``eval`` JSON files (models × datasets × scales) into one
self-contained HTML page, a Markdown table and a LaTeX (booktabs) table.

The page fetches nothing: plots are inline SVG (matplotlib), crops are inline PNG, styles are
inline. Torch-free: it needs the ``report`` extra (matplotlib, SciPy) and the eval JSON.
"""

from __future__ import annotations

from pathlib import Path

from .data import Report, decimals, load_runs, metric_names
from .gallery import largest_error_crop, worst_images
from .page import html_table, render_html
from .tables import latex, markdown

__all__ = [
    "Report",
    "decimals",
    "html_table",
    "largest_error_crop",
    "latex",
    "load_runs",
    "markdown",
    "render_html",
    "run_report",
    "worst_images",
]


def run_report(args) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    if not (args.html or args.markdown or args.latex):
        console.print("[red]give at least one of --html, --markdown, --latex[/red]")
        return 2
    try:
        runs = [run for path in args.results for run in load_runs(Path(path))]
        report = Report.build(runs, metric_names(args.metrics) or None, seed=args.seed, resamples=args.resamples)
    except (OSError, ValueError, KeyError) as exc:
        console.print(f"[red]cannot build the report: {exc}[/red]")
        return 2
    for metric in (args.x, args.y):
        if metric is not None and metric not in report.metrics:
            console.print(f"[red]--x/--y {metric!r} is not among the reported metrics {report.metrics}[/red]")
            return 2
    written = []
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
        written.append(args.markdown)
    if args.latex:
        Path(args.latex).write_text(latex(report))
        written.append(args.latex)
    if args.html:
        Path(args.html).write_text(render_html(report, x=args.x, y=args.y, worst=args.worst, crop=args.crop, title=args.title))
        written.append(args.html)
    console.print(f"{len(report.runs)} run(s), {len(report.models)} model(s), {len(report.groups)} group(s) → {', '.join(written)}")
    return 0
