"""``loss-service report``: combine ``eval`` JSON files (models × datasets × scales) into one
self-contained HTML page, a Markdown table and a LaTeX (booktabs) table.

The page fetches nothing: plots are inline SVG (matplotlib), crops are inline PNG, styles are
inline. Torch-free: it needs the ``report`` extra (matplotlib, SciPy) and the eval JSON.
"""

from __future__ import annotations

from pathlib import Path

from ..store import ResultsStore, StoreError
from . import clips, leaderboard
from .data import Report, decimals, load_runs, metric_names
from .gallery import largest_error_crop, worst_images
from .page import html_page, html_table, render_html
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
    if not (args.results or args.store):
        console.print("[red]give eval JSON files, --store, or both[/red]")
        return 2
    try:
        report = None
        clip_files = [path for path in args.results if clips.is_clip_results(Path(path))]
        image_files = [path for path in args.results if path not in clip_files]
        clip_runs = [run for path in clip_files for run in clips.load_clip_runs(Path(path))]
        if image_files:
            runs = [run for path in image_files for run in load_runs(Path(path))]
            report = Report.build(
                runs,
                metric_names(args.metrics) or None,
                seed=args.seed,
                **({} if args.resamples is None else {"resamples": args.resamples}),
            )
        tables, curves = [], []
        if args.store:
            with ResultsStore(args.store) as store:
                tables, curves = leaderboard.boards(store), leaderboard.curves(store)
    except (OSError, ValueError, KeyError, StoreError) as exc:
        console.print(f"[red]cannot build the report: {exc}[/red]")
        return 2
    for metric in (args.x, args.y) if report is not None else ():
        if metric is not None and metric not in report.metrics:
            console.print(f"[red]--x/--y {metric!r} is not among the reported metrics {report.metrics}[/red]")
            return 2
    outputs = {
        args.markdown: lambda: "\n".join(
            text
            for text in (tables and leaderboard.markdown(tables), report and markdown(report), clip_runs and clips.markdown(clip_runs))
            if text
        ),
        args.latex: lambda: "\n".join(
            text for text in (tables and leaderboard.latex(tables), report and latex(report), clip_runs and clips.latex(clip_runs)) if text
        ),
        args.html: lambda: html_report(report, tables, curves, args, clips.html_sections(clip_runs) if clip_runs else []),
    }
    written = []
    for path, render in outputs.items():
        if path:
            Path(path).write_text(render())
            written.append(path)
    described = f"{len(report.runs)} run(s), {len(report.models)} model(s), {len(report.groups)} group(s)" if report else ""
    clip_line = clip_runs and f"{len(clip_runs)} clip run(s), {len(clips.clip_names(clip_runs))} clip(s)"
    parts = (described, clip_line, tables and f"{len(tables)} leaderboard table(s)")
    console.print(", ".join(filter(None, parts)) + f" → {', '.join(written)}")
    return 0


def html_report(report: Report | None, tables: list, curves: list, args, clip_sections: list) -> str:
    sections = [("leaderboard", "Leaderboard", leaderboard.html(tables))] if tables else []
    if curves:
        sections.append(("curves", "Training curves", leaderboard.curves_html(curves)))
    sections += clip_sections
    if report is None:
        summary = f"leaderboard of {args.store}" if args.store else f"clips: {', '.join(args.results)}"
        return html_page(args.title, summary, sections)
    return render_html(report, x=args.x, y=args.y, worst=args.worst, crop=args.crop, title=args.title, leaderboard=sections)
