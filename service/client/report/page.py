"""The self-contained HTML page: tables, plots, paired comparisons, gallery and conventions."""

from __future__ import annotations

import html
import json
import time

from ..stats import CONFIDENCE
from .data import DISTORTION_METRICS, PERCEPTION_METRICS, Report, arrow, decimals, finite, fmt
from .gallery import gallery_entry, worst_images
from .plots import color_of, distribution_plot, perception_distortion_plot
from .tables import PARTIAL_NOTE, mark

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:2px solid #d8dde6;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#5a6373}nav a{margin-right:14px;color:#2458b3}
.banner{background:#b42318;color:#fff;padding:12px 16px;border-radius:6px;font-weight:600;margin:12px 0}
.warn{background:#fff4e5;border:1px solid #f0c36d;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse;background:#fff;margin:6px 0 4px;box-shadow:0 1px 2px #0001}
th,td{padding:6px 12px;border-bottom:1px solid #e3e7ee;text-align:right;white-space:nowrap}
th{background:#e8eef7;font-weight:600}th:first-child,td:first-child{text-align:left}
td.best{background:#dff3e4;font-weight:700}.ci{color:#6b7485;font-size:11px;font-weight:400;margin-left:4px}
td.sig{color:#0a6b2f;font-weight:600}td.sigbad{color:#a3261b;font-weight:600}
.note{color:#5a6373;font-size:12px;margin:2px 0 14px}.plot{background:#fff;padding:10px;display:inline-block;box-shadow:0 1px 2px #0001}
.plots{display:flex;flex-wrap:wrap;gap:14px}.plots figure{margin:0}figcaption{font-size:12px;color:#5a6373}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.entry{background:#fff;padding:8px;box-shadow:0 1px 2px #0001}
.entry img{width:128px;height:auto;image-rendering:pixelated;display:block}.tiles{display:flex;gap:4px}
.tiles figure{margin:0}.strip td{text-align:center;font-size:11px;color:#5a6373}.strip img{width:192px;display:block}
details pre{background:#fff;padding:10px;overflow:auto;max-height:420px;font-size:12px}
"""


def _e(text) -> str:
    return html.escape(str(text))


def html_table(report: Report, group: str) -> str:
    head = "".join(f"<th>{_e(m)} {arrow(report.lower_is_better[m])}</th>" for m in report.metrics)
    rows = []
    for model in report.models_in(group):
        cells = []
        for metric in report.metrics:
            cell = report.cells.get((group, model, metric))
            if cell is None:
                cells.append("<td>–</td>")
                continue
            tip = f"{metric}: mean {cell.mean:.6g}, {CONFIDENCE:.0%} bootstrap CI [{cell.low:.6g}, {cell.high:.6g}], n = {cell.count}" + (
                f" of {cell.scored}: {PARTIAL_NOTE}" if cell.partial else ""
            )
            best = ' class="best"' if report.best(group, metric) == model else ""
            if cell.whole_set:
                tip = f"{metric}: one value for the set of {cell.count} images (a dataset metric: no per-image interval)"
            interval = "" if cell.whole_set else f'<span class="ci">±{fmt(metric, (cell.high - cell.low) / 2)}</span>'
            cells.append(f'<td{best} title="{_e(tip)}">{mark(cell, fmt(metric, cell.mean), "†")}{interval}</td>')
        swatch = f'<span style="color:{color_of(report, model)}">■</span> '
        rows.append(f"<tr><td>{swatch}{_e(model)}</td>{''.join(cells)}</tr>")
    return f'<table class="results"><thead><tr><th>model</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def html_paired(report: Report, group: str) -> str:
    blocks = []
    for metric in report.metrics:
        rows = []
        for a, b, c in report.paired(group, metric):
            excludes_zero = c.ci_low > 0 or c.ci_high < 0
            significant = excludes_zero and c.p_value is not None and c.p_value < 0.05
            a_better = (c.mean_diff < 0) == report.lower_is_better[metric]
            verdict = (f"{a} better" if a_better else f"{b} better") if significant else "no clear difference"
            klass = ' class="sig"' if significant else ""
            p = "–" if c.p_value is None else f"{c.p_value:.3g}"
            d = decimals(metric) + 1
            rows.append(
                f"<tr><td>{_e(a)} vs {_e(b)}</td><td>{c.count}</td><td>{c.mean_diff:+.{d}f}</td>"
                f"<td>[{c.ci_low:+.{d}f}, {c.ci_high:+.{d}f}]</td><td>{c.wins} / {c.ties} / {c.losses}</td>"
                f"<td>{p}</td><td{klass}>{_e(verdict)}</td></tr>"
            )
        if rows:
            blocks.append(
                f"<h3>{_e(metric)} {arrow(report.lower_is_better[metric])}</h3>"
                "<table><thead><tr><th>A vs B</th><th>images</th><th>mean(A − B)</th>"
                f"<th>{CONFIDENCE:.0%} CI</th><th>A wins / ties / losses</th><th>Wilcoxon p</th><th>reading</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>"
            )
    return "".join(blocks)


def html_gallery(report: Report, metric: str, k: int, crop: int) -> str:
    entries = []
    lower = report.lower_is_better[metric]
    for model in report.models:
        for run, image, value in worst_images([r for r in report.runs if r.model == model], metric, lower, k):
            entry = gallery_entry(run, image, value, crop)
            others = ", ".join(
                f"{m} {fmt(m, run.scores[image][m])}" for m in report.metrics if m != metric and finite(run.scores[image].get(m))
            )
            tiles = "".join(f'<figure><img alt="{_e(c)}" src="{uri}"><figcaption>{_e(c)}</figcaption></figure>' for c, uri in entry.tiles)
            entries.append(
                f'<div class="entry"><b>{_e(run.model)}</b> · {_e(run.group)} · <b>{_e(image)}</b><br>'
                f"{_e(metric)} = {fmt(metric, value)}<br><span class='note'>{_e(others)}</span>"
                f'<div class="tiles">{tiles}</div><span class="note">{_e(entry.note)}</span></div>'
            )
    return f'<div class="gallery">{"".join(entries)}</div>'


def conventions_block(report: Report) -> str:
    distinct: dict[str, list[str]] = {}
    for run in report.runs:
        record = {k: v for k, v in run.conventions.items() if k != "date"}
        distinct.setdefault(json.dumps(record, indent=2, sort_keys=True), []).append(f"{run.model} · {run.group} ({run.source})")
    parts = []
    for text, users in distinct.items():
        parts.append(
            f"<details{' open' if len(distinct) > 1 else ''}><summary>{_e('; '.join(users))}</summary><pre>{_e(text)}</pre></details>"
        )
    if len(distinct) > 1:
        parts.insert(0, '<p class="warn">The runs were scored under different conventions: compare their numbers with care.</p>')
    return "".join(parts)


def render_html(
    report: Report,
    *,
    x: str | None = None,
    y: str | None = None,
    worst: int = 3,
    crop: int = 128,
    title: str = "Model comparison",
    leaderboard: list[tuple[str, str, str]] = (),
) -> str:
    """The page; ``leaderboard`` sections (from a results store) go first."""
    x = x or next((m for m in DISTORTION_METRICS if m in report.metrics), None)
    y = y or next((m for m in PERCEPTION_METRICS if m in report.metrics), None)
    notes = []
    sections = []
    tables = "".join(f"<h3>{_e(g)}</h3>{html_table(report, g)}" for g in report.groups)
    sections.append(
        (
            "table",
            "Results",
            tables + f'<p class="note">Mean over images, the best per column highlighted; ± is half the '
            f"{CONFIDENCE:.0%} percentile bootstrap interval ({report.resamples} resamples, seed {report.seed}); "
            "hover a cell for the interval and the image count. ↑/↓: higher/lower is better.</p>",
        )
    )
    if x in report.metrics and y in report.metrics:
        sections.append(
            (
                "pd",
                "Perception–distortion",
                f'<div class="plot">{perception_distortion_plot(report, x, y)}</div>'
                '<p class="note">One point per model per dataset; bars are the bootstrap intervals of the means.</p>',
            )
        )
    else:
        notes.append(
            f"no perception–distortion plot: the results lack {x if x not in report.metrics else y} "
            "(choose two reported metrics with --x and --y)"
        )
    if len(report.models) > 1:
        paired = "".join(f"<h3>{_e(g)}</h3>{html_paired(report, g)}" for g in report.groups if len(report.models_in(g)) > 1)
        sections.append(
            (
                "paired",
                "Paired comparisons",
                paired + '<p class="note">On the images both models scored: mean '
                f"difference with its seeded bootstrap {CONFIDENCE:.0%} interval, per-image wins/ties/losses of A in the "
                "metric's direction, and the two-sided Wilcoxon signed-rank p-value (SciPy; zero differences dropped). "
                "“Better” needs both an interval that excludes 0 and p &lt; 0.05.</p>",
            )
        )
    plots = "".join(f'<figure class="plot">{distribution_plot(report, m)}<figcaption>{_e(m)}</figcaption></figure>' for m in report.metrics)
    sections.append(
        (
            "dist",
            "Distributions",
            f'<div class="plots">{plots}</div><p class="note">Box: quartiles; line: median; triangle: mean; whiskers 1.5 IQR.</p>',
        )
    )
    if worst > 0:
        gallery = "".join(
            f"<h3>{_e(m)} {arrow(report.lower_is_better[m])}: the {worst} worst per model</h3>{html_gallery(report, m, worst, crop)}"
            for m in report.metrics
        )
        sections.append(
            (
                "worst",
                "Worst images",
                gallery + f'<p class="note">{crop}×{crop} crops centred on the largest local '
                "error (|SR − GT| smoothed by a Gaussian of σ = 4 px), read from the paths in the results files.</p>",
            )
        )
    warnings = [*report.warnings, *notes]
    extra = f'<ul class="warn">{"".join(f"<li>{_e(w)}</li>" for w in warnings)}</ul>' if warnings else "<p>None.</p>"
    sections.append(
        ("conventions", "Conventions and warnings", "<h3>Warnings</h3>" + extra + "<h3>Conventions</h3>" + conventions_block(report))
    )

    banner = ""
    if report.random_weights:
        banner = (
            f'<div class="banner">RANDOM BACKBONE WEIGHTS in {_e(", ".join(report.random_weights))}: their feature '
            "metrics (perceptual, LPIPS, DISTS, CLP) are not comparable with anything.</div>"
        )
    summary = f"{len(report.models)} model(s) · {len(report.groups)} dataset/scale group(s) · metrics: {', '.join(report.metrics)}"
    return html_page(title, summary, [*leaderboard, *sections], banner)


def html_page(title: str, summary: str, sections: list[tuple[str, str, str]], banner: str = "") -> str:
    """The self-contained page: title, summary line, navigation and (key, heading, HTML) sections."""
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(name)}</h2>{content}</section>' for key, name, content in sections)
    summary = f"{summary} · built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
        f'<body><main><h1>{_e(title)}</h1><p class="meta">{_e(summary)}</p>{banner}<nav>{nav}</nav>{body}</main></body></html>'
    )
