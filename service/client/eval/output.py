"""What an ``eval`` run writes, for every mode: the CSV, the JSON (the input of ``report``), the
results-store rows and the console summary."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..notes import grouped_warnings
from ..store import ResultsStore, Row, conventions_hash
from .folders import Pairing
from .options import EvalOptions

# The image name under which a dataset metric's (fid, kid) one value per set is stored.
SET_ROW_IMAGE = "(set)"


@dataclass
class Scored:
    """What one image-folder run collected, per model: results (resumed ones included) and failures."""

    results: dict[str, list[dict]]
    failures: dict[str, list[dict]]
    conventions: dict | None
    lower_is_better: dict[str, bool] = field(default_factory=dict)
    server: dict = field(default_factory=dict)
    sets: dict[str, dict] = field(default_factory=dict)  # model → dataset metrics (fid, kid) of its whole set


def write_csv(path: Path, results: dict[str, list[dict]]) -> None:
    """One row per image; with several models, a leading ``model`` column."""
    names = sorted({name for rows in results.values() for r in rows for name in r["scores"]})
    several = len(results) > 1
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model"] * several + ["image", *names])
        for model, rows in results.items():
            for result in sorted(rows, key=lambda r: r["image"]):
                writer.writerow(
                    [model] * several
                    + [result["image"], *("" if result["scores"].get(n) is None else repr(result["scores"][n]) for n in names)]
                )


def write_frames_csv(path: Path, results: dict[str, dict[str, dict]]) -> None:
    """Clips: one row per model, clip and frame; a temporal value sits on the frame t of its pair (t−1, t)."""
    metrics = sorted({m for clips in results.values() for clip in clips.values() for m in (*clip["per_frame"], *clip["temporal"])})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "clip", "frame", *metrics])
        for model, clips in results.items():
            for name, clip in clips.items():
                by_frame: dict[int, dict[str, float | None]] = {}
                for metric, values in {**clip["per_frame"], **clip["temporal"]}.items():
                    for frame, value in zip(clip["frames"][metric], values):
                        by_frame.setdefault(frame, {})[metric] = value
                for frame in sorted(by_frame):
                    writer.writerow([model, name, frame, *(by_frame[frame].get(m, "") for m in metrics)])


def write_json(path: str | None, report: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2, allow_nan=False))


def images_json(options: EvalOptions, models: dict[str, Path], pairings: dict[str, Pairing], scored: Scored, summaries: dict) -> dict:
    """The image-folder JSON: per model its results, summary, failures and what did not pair."""
    entries = {
        name: dict(
            sr_dir=str(models[name].resolve()),
            results=sorted(scored.results[name], key=lambda r: r["image"]),
            summary=summaries[name],
            failures=scored.failures[name],
            unpaired=pairings[name].unpaired,
            ambiguous=pairings[name].ambiguous,
            **({"dataset_metrics": scored.sets[name]} if name in scored.sets else {}),
        )
        for name in models
    }
    server = scored.server
    report = dict(
        format="loss-service-eval",
        version=2,
        dataset=options.dataset,
        scale=options.scale,
        metrics=options.metric_names,
        lower_is_better={name: scored.lower_is_better[name] for name in options.metric_names if name in scored.lower_is_better},
        server=dict(
            url=list(options.url),
            backend=options.backend,
            device=server.get("device"),
            precision=server.get("precision"),
            pretrained=server.get("pretrained"),
        ),
        options=options.metric_options,
        conventions=scored.conventions,
        models=entries,
    )
    if len(models) == 1:  # the one-model layout of earlier versions, kept for existing readers
        (single,) = models
        report.update({key: entries[single][key] for key in ("results", "summary", "failures", "unpaired", "ambiguous")})
    return report


def store_values(store_path: str, options: EvalOptions, conventions: dict, values) -> None:
    """``values``: (model, image, metric, value); one transaction under the run's conventions record
    (a clip's mean is stored under the clip's name, a set's value under ``(set)``)."""
    digest = conventions_hash(conventions)
    dataset, scale, checkpoint = options.dataset or options.preset or "", options.scale or 0, options.checkpoint or ""
    rows = [Row(model, dataset, scale, image, metric, value, digest, checkpoint=checkpoint) for model, image, metric, value in values]
    with ResultsStore(store_path) as store:
        store.add(rows, conventions)


def image_store_values(scored: Scored, previous: dict[str, list[dict]]):
    """The run's new per-image values (resumed ones are stored already) and each set's values."""
    for model, results in scored.results.items():
        for result in results[len(previous[model]) :]:
            for metric, value in result["scores"].items():
                yield model, result["image"], metric, value
    for model, entry in scored.sets.items():
        for metric, value in entry["values"].items():
            yield model, SET_ROW_IMAGE, metric, value


def print_model_summary(model: str, summary: dict, failures: list[dict], pairing: Pairing, console, results: list[dict] = ()) -> None:
    from rich.table import Column, Table

    # Two tables, so that on an 80-column terminal no number is cut short: the statistics, then
    # the worst images, which wrap.
    numbers = [Column(header, justify="right", no_wrap=True) for header in ("n", "mean", "std", "min", "max")]
    table = Table(Column("metric", no_wrap=True), *numbers, title=model)
    worst = Table(Column("metric", no_wrap=True), Column("worst images (up to 5)", overflow="fold"), title=f"{model}: worst images")
    for name, s in summary.items():
        table.add_row(name, str(s["count"]), f"{s['mean']:.6g}", f"{s['std']:.4g}", f"{s['min']:.6g}", f"{s['max']:.6g}")
        if not s.get("dataset"):  # a dataset metric has one value for the set: no worst images
            worst.add_row(name, ", ".join(f"{w['image']}={w['value']:.4g}" for w in s["worst"]))
    console.print(table)
    if worst.row_count:
        console.print(worst)
    for role, names in pairing.unpaired.items():
        console.print(f"[yellow]{model}: unpaired {role}[/yellow] ({len(names)}): {', '.join(names)}")
    for line in pairing.ambiguous:
        console.print(f"[yellow]{model}: ambiguous[/yellow]: {line}")
    for failure in failures:
        console.print(f"[red]{model}: failed[/red] {failure['image']}: HTTP {failure['status']}: {failure['message']}")
    for line in grouped_warnings(results):
        console.print(f"{model}: warning: {line}", markup=False, style="yellow")  # a warning may hold brackets


def print_clip_summary(model: str, clip_count: int, means: dict, unpaired: dict[str, list[str]], console) -> None:
    console.print(
        f"[bold]{model}[/bold]: {clip_count} clip(s); "
        + "; ".join(
            f"{name} {m['clip_mean']:.4f} (frame-weighted {m['frame_weighted_mean']:.4f})"
            for name, m in means.items()
            if m["clip_mean"] is not None
        )
    )
    for role, names in unpaired.items():
        if names:
            console.print(f"[yellow]{model}: {role} clips without a partner: {', '.join(names)}[/yellow]")
