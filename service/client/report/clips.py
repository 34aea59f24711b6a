"""The report of clip evaluations (``eval`` on clip datasets): per-clip tables, each clip's
per-frame values over time with one line per model (where flicker and temporal failures show),
and a frame strip of the worst clip, side by side across models."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from .data import PALETTE, arrow, fmt
from .gallery import png_data_uri, read_image, to_uint8
from .plots import _pyplot, svg
from .tables import latex_escape, markdown_cell

CLIPS_FORMAT = "loss-service-eval-clips"
# Metrics whose direction eval's clip JSON does not carry (tof, tlp and vmaf are temporal or clip metrics).
HIGHER_IS_BETTER = {"psnr", "ssim", "ms_ssim", "lr_psnr", "vmaf", "vmaf_neg"}
STRIP_FRAMES = 5
STRIP_WIDTH = 192  # pixels per thumbnail
MAX_TIME_PLOTS = 40


def is_clip_results(path: Path) -> bool:
    return json.loads(Path(path).read_text()).get("format") == CLIPS_FORMAT


@dataclass
class ClipRun:
    """One model on one clip dataset: per clip its per-frame and temporal series and means."""

    model: str
    dataset: str
    clips: dict[str, dict]  # clip → {per_frame, temporal, frames, per_clip, sources?}
    means: dict[str, dict]  # metric → {clip_mean, frame_weighted_mean, clips, frames}
    gt_sources: dict[str, list[str]]


def load_clip_runs(path: Path) -> list[ClipRun]:
    data = json.loads(Path(path).read_text())
    dataset = data.get("dataset") or Path(path).stem
    return [
        ClipRun(model, dataset, entry.get("clips", {}), entry.get("dataset", {}), data.get("gt_sources", {}))
        for model, entry in data.get("models", {}).items()
    ]


def lower_is_better(metric: str) -> bool:
    return metric not in HIGHER_IS_BETTER


def metrics_of(runs: list[ClipRun]) -> list[str]:
    return list(dict.fromkeys(metric for run in runs for metric in run.means))


def frame_metric(runs: list[ClipRun]) -> str | None:
    """The metric plotted over time and used to pick the worst clip: psnr if scored, else the first per-frame one."""
    names = list(dict.fromkeys(m for run in runs for clip in run.clips.values() for m in clip["per_frame"]))
    return "psnr" if "psnr" in names else (names[0] if names else None)


def clip_names(runs: list[ClipRun]) -> list[str]:
    return sorted({name for run in runs for name in run.clips})


def _value(run: ClipRun, clip: str, metric: str) -> float | None:
    value = run.clips.get(clip, {}).get("per_clip", {}).get(metric)
    return value if value is not None and math.isfinite(value) else None


def _best(values: dict[str, float | None], metric: str) -> str | None:
    found = {model: v for model, v in values.items() if v is not None}
    if not found:
        return None
    return (min if lower_is_better(metric) else max)(found, key=found.get)


def per_clip_rows(runs: list[ClipRun], metric: str) -> list[tuple[str, dict[str, float | None]]]:
    """(row label, model → value): each clip's mean, then BasicSR's mean over clips and the frame-weighted mean."""
    rows = [(clip, {run.model: _value(run, clip, metric) for run in runs}) for clip in clip_names(runs)]
    for key, label in (("clip_mean", "mean over clips"), ("frame_weighted_mean", "frame-weighted mean")):
        rows.append((label, {run.model: run.means.get(metric, {}).get(key) for run in runs}))
    return rows


def html_clip_table(runs: list[ClipRun], metric: str) -> str:
    head = "".join(f"<th>{escape(run.model)}</th>" for run in runs)
    body = []
    for label, values in per_clip_rows(runs, metric):
        best = _best(values, metric)
        cells = "".join(
            "<td>–</td>"
            if values[run.model] is None
            else f"<td{' class=best' if run.model == best else ''}>{fmt(metric, values[run.model])}</td>"
            for run in runs
        )
        body.append(f"<tr><td>{escape(label)}</td>{cells}</tr>")
    return f'<table class="results"><thead><tr><th>clip</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def time_plot(runs: list[ClipRun], clip: str, metrics: list[str]) -> str:
    """One clip's values per frame, one line per model; a panel per metric (per-frame, then temporal)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(5.4, 1.5 * len(metrics) + 0.5), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for index, run in enumerate(runs):
            entry = run.clips.get(clip)
            if entry is None:
                continue
            series = entry["per_frame"].get(metric, entry["temporal"].get(metric))
            if series is None:
                continue
            values = [np.nan if v is None else v for v in series]
            ax.plot(entry["frames"][metric], values, color=PALETTE[index % len(PALETTE)], linewidth=1.2, marker=".", label=run.model)
        ax.set_ylabel(f"{metric} {arrow(lower_is_better(metric))}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(f"{clip}: per frame", fontsize=10)
    axes[0, 0].legend(fontsize=8, frameon=False, loc="best")
    axes[-1, 0].set_xlabel("frame")
    return svg(fig)


def worst_clip(runs: list[ClipRun], metric: str) -> str | None:
    """The clip whose value of ``metric``, averaged over the models that scored it, is worst."""
    scores = {}
    for clip in clip_names(runs):
        values = [v for run in runs if (v := _value(run, clip, metric)) is not None]
        if values:
            scores[clip] = sum(values) / len(values)
    if not scores:
        return None
    return (max if lower_is_better(metric) else min)(scores, key=scores.get)


def _thumbnail(path: str) -> str:
    from PIL import Image

    pixels = to_uint8(read_image(path))
    image = Image.fromarray(pixels)
    height = max(1, round(image.height * STRIP_WIDTH / image.width))
    return png_data_uri(np.asarray(image.resize((STRIP_WIDTH, height), Image.BICUBIC)))


def frame_strip(runs: list[ClipRun], clip: str, metric: str) -> str:
    """Frames of ``clip`` at STRIP_FRAMES evenly spaced positions: a row for GT, then one per model
    whose clip is a frame folder (the paths eval recorded); video clips are named in a note."""
    sources = {run.model: run.clips[clip].get("sources") for run in runs if clip in run.clips}
    gt = runs[0].gt_sources.get(clip)
    videos = [model for model, paths in sources.items() if not isinstance(paths, list)]
    note = f'<p class="note">Not shown (video clips): {escape(", ".join(videos))}.</p>' if videos else ""
    if not isinstance(gt, list) or len(videos) == len(sources):
        return f'<p class="note">{escape(clip)} was read from videos: no frame strip.</p>'
    picks = sorted({round(i * (len(gt) - 1) / max(1, STRIP_FRAMES - 1)) for i in range(STRIP_FRAMES)})
    rows = [("GT", gt, None)] + [(run.model, sources[run.model], run) for run in runs if isinstance(sources.get(run.model), list)]
    head = "".join(f"<th>frame {index}</th>" for index in picks)
    body = []
    for label, paths, run in rows:
        cells = []
        for index in picks:
            caption = ""
            frames = run.clips[clip]["frames"].get(metric, []) if run is not None else []
            if index in frames:
                value = run.clips[clip]["per_frame"][metric][frames.index(index)]
                caption = "" if value is None else f"<br>{escape(metric)} {fmt(metric, value)}"
            cells.append(f'<td><img src="{_thumbnail(paths[index])}" alt="{escape(label)} frame {index}">{caption}</td>')
        body.append(f"<tr><th>{escape(label)}</th>{''.join(cells)}</tr>")
    return f'<table class="strip"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{note}'


def html_sections(runs: list[ClipRun]) -> list[tuple[str, str, str]]:
    """The report's clip sections: per-clip tables, time plots, the worst clip's frame strip."""
    sections = []
    tables = "".join(
        f"<figure><h3>{escape(m)} {arrow(lower_is_better(m))}</h3>{html_clip_table(runs, m)}</figure>" for m in metrics_of(runs)
    )
    tables = f'<div class="plots">{tables}</div>'
    note = (
        '<p class="note">Each clip\'s mean over its frames (tof, tlp: over its frame pairs); "mean over clips" is '
        "BasicSR's dataset value (each clip first, then the clips), the frame-weighted mean beside it.</p>"
    )
    sections.append(("clips", "Per clip", tables + note))
    per_frame = list(dict.fromkeys(m for run in runs for c in run.clips.values() for m in (*c["per_frame"], *c["temporal"])))
    shown = clip_names(runs)[:MAX_TIME_PLOTS]
    plots = '<div class="plots">' + "".join(f'<div class="plot">{time_plot(runs, clip, per_frame)}</div>' for clip in shown) + "</div>"
    more = len(clip_names(runs)) - len(shown)
    sections.append(("time", "Over time", plots + (f'<p class="note">{more} more clip(s) not plotted.</p>' if more > 0 else "")))
    metric = frame_metric(runs)
    worst = worst_clip(runs, metric) if metric else None
    if worst is not None:
        sections.append(
            (
                "strip",
                f"Worst clip: {worst}",
                f'<p class="note">The clip with the worst mean {escape(metric)} over the models; frames evenly spaced '
                f"through it, GT first.</p>{frame_strip(runs, worst, metric)}",
            )
        )
    return sections


def markdown(runs: list[ClipRun]) -> str:
    lines = [f"<!-- loss-service clip report: {', '.join(sorted({r.dataset for r in runs}))} -->"]
    for metric in metrics_of(runs):
        lines += ["", f"### {metric} {arrow(lower_is_better(metric))}", ""]
        lines.append("| clip | " + " | ".join(markdown_cell(run.model) for run in runs) + " |")
        lines.append("|---|" + "---:|" * len(runs))
        for label, values in per_clip_rows(runs, metric):
            best = _best(values, metric)
            cells = [
                "–"
                if values[r.model] is None
                else (f"**{fmt(metric, values[r.model])}**" if r.model == best else fmt(metric, values[r.model]))
                for r in runs
            ]
            lines.append(f"| {markdown_cell(label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex(runs: list[ClipRun]) -> str:
    """A booktabs table per metric as VSR papers print them: a row per model, a column per clip,
    then the mean over clips (BasicSR's dataset value); best per column bold."""
    clips = clip_names(runs)
    lines = ["% loss-service clip report: per-clip means and the mean over clips; best per column in bold. Needs booktabs."]
    for metric in metrics_of(runs):
        rows = per_clip_rows(runs, metric)[: len(clips) + 1]  # the clips, then the mean over clips
        best = {label: _best(values, metric) for label, values in rows}
        direction = r"$\downarrow$" if lower_is_better(metric) else r"$\uparrow$"
        lines += [
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{tabular}{l" + "r" * len(rows) + "}",
            r"\toprule",
            " & ".join([f"{latex_escape(metric)} {direction}", *(latex_escape(c) for c in clips), "Average"]) + r" \\",
            r"\midrule",
        ]
        for run in runs:
            cells = []
            for label, values in rows:
                value = values[run.model]
                text = "--" if value is None else fmt(metric, value)
                cells.append(rf"\textbf{{{text}}}" if value is not None and best[label] == run.model else text)
            lines.append(" & ".join([latex_escape(run.model), *cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)
