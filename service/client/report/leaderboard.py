"""The leaderboard of a results store: per dataset, scale and metric, models ranked only among
numbers computed under the same conventions. Numbers computed otherwise (Y vs RGB, another crop,
other weight files, another precision) stand in separate groups, and each group says exactly what
differs from the first: no two unlike numbers share a ranking.

A metric's conventions are those its number depends on: its resolved options, the sha256 of each
weight file it reads, the precision, whether the weights were pretrained, and the pixel
conventions, all from the conventions record stored with the value.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field

from ..store import ResultsStore
from .data import PALETTE, arrow, decimals
from .tables import latex_escape, markdown_cell


@dataclass(frozen=True)
class Standing:
    """One model (at one checkpoint or step) on one metric: its mean over the images it scored."""

    label: str
    mean: float
    images: int
    names: frozenset = frozenset()  # the images averaged: only means over the same images rank together


@dataclass
class Group:
    """Numbers of one metric computed under one convention, best first."""

    convention: dict
    standings: list[Standing] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # from the first group of its metric


@dataclass
class Board:
    dataset: str
    scale: int
    metric: str
    lower_is_better: bool
    groups: list[Group]

    @property
    def title(self) -> str:
        return f"{self.dataset or 'unnamed'} ×{self.scale}" if self.scale else (self.dataset or "unnamed")


def metric_convention(record: dict, metric: str) -> dict:
    """What ``metric``'s number depends on, from a conventions record."""
    entry = record["metrics"][metric.split(".")[0]]
    reads = entry.get("weights", entry.get("backbones", []))
    return dict(
        options=entry["options"],
        weights={name: (record["weights"].get(name) or {}).get("sha256") for name in reads},
        precision=record.get("precision"),
        pretrained=record.get("pretrained"),
        pixels=record.get("pixels"),
    )


def describe_difference(first: dict, other: dict, metric: str) -> list[str]:
    """Each way ``other`` differs from ``first``, as a reader would say it: "Y vs RGB", "crop 4 vs 0",
    "FID clean-fid vs torch-fidelity"."""
    said = []
    for key in sorted(set(first["options"]) | set(other["options"])):
        a, b = other["options"].get(key), first["options"].get(key)
        if a == b:
            continue
        if key == "y_channel":
            said.append(f"{'Y' if a else 'RGB'} vs {'Y' if b else 'RGB'}")
        elif key == "crop_border":
            said.append(f"crop {a} vs {b}")
        elif key == "convention":
            said.append(f"{metric.split('.')[0].upper()} {a} vs {b}")
        else:
            said.append(f"{key} {json.dumps(a)} vs {json.dumps(b)}")
    for name in sorted(set(first["weights"]) | set(other["weights"])):
        a, b = other["weights"].get(name), first["weights"].get(name)
        if a != b:
            said.append(f"{name} weights sha {_short(a)} vs {_short(b)}")
    for key in ("precision", "pretrained", "pixels"):
        if other.get(key) != first.get(key):
            said.append(f"{key} {json.dumps(other.get(key))} vs {json.dumps(first.get(key))}")
    return said


def _short(sha: str | None) -> str:
    return f"{sha[:8]}…" if sha else "none (random weights)"


def boards(store: ResultsStore) -> list[Board]:
    """Every (dataset, scale, metric) of the store, its values grouped by convention, then by the
    images averaged: a mean over 4 of a dataset's 5 images does not rank beside means over all 5."""
    records = store.conventions()
    cells: dict[tuple, dict[tuple, dict[str, float]]] = {}  # (dataset, scale, metric, convention json) → label → image → value
    direction: dict[str, bool] = {}
    for row in store.rows():
        record = records[row.conventions_hash]
        base = row.metric.split(".")[0]
        direction.setdefault(row.metric, record["metrics"][base]["lower_is_better"])
        convention = json.dumps(metric_convention(record, row.metric), sort_keys=True)
        values = cells.setdefault((row.dataset, row.scale, row.metric, convention), {}).setdefault(
            (row.model, row.checkpoint, row.step), {}
        )
        if row.value is not None and math.isfinite(row.value):
            values[row.image] = row.value
    result: dict[tuple, Board] = {}
    for (dataset, scale, metric, convention), by_label in sorted(cells.items(), key=lambda item: item[0][:3]):
        board = result.setdefault((dataset, scale, metric), Board(dataset, scale, metric, direction[metric], []))
        standings = _best_step_only(board.lower_is_better, {key: v for key, v in by_label.items() if v})
        by_images: dict[frozenset, list[Standing]] = {}
        for standing in standings:
            by_images.setdefault(standing.names, []).append(standing)
        for same_images in by_images.values():
            same_images.sort(key=lambda s: s.mean, reverse=not board.lower_is_better)
            board.groups.append(Group(json.loads(convention), same_images))
    for board in result.values():
        # the largest group first (most models, then most images): the others say how they differ
        board.groups.sort(key=lambda g: (-len(g.standings), -len(g.standings[0].names)))
        first = board.groups[0]
        for group in board.groups[1:]:
            group.differs = describe_difference(first.convention, group.convention, board.metric)
            names, reference = group.standings[0].names, first.standings[0].names
            if names != reference:
                shared = len(names & reference)
                group.differs.append(
                    f"{len(names)} of {len(reference)} images"
                    if shared == len(names)
                    else f"other images ({shared} of {len(names)} shared)"
                )
    return list(result.values())


@dataclass
class Curve:
    """One model's validation metric against the training step (the validator's runs)."""

    model: str
    dataset: str
    metric: str
    lower_is_better: bool
    points: list[tuple[int, float]]  # (step, mean over the images), by step

    @property
    def best(self) -> tuple[int, float]:
        pick = min if self.lower_is_better else max
        return pick(self.points, key=lambda point: point[1])


def curves(store: ResultsStore) -> list[Curve]:
    """Every (model, dataset, metric) with values at two or more steps."""
    records = store.conventions()
    values: dict[tuple, dict[int, list[float]]] = {}
    direction: dict[str, bool] = {}
    for row in store.rows():
        if row.step < 0 or row.value is None or not math.isfinite(row.value):
            continue
        direction.setdefault(row.metric, records[row.conventions_hash]["metrics"][row.metric.split(".")[0]]["lower_is_better"])
        values.setdefault((row.model, row.dataset, row.metric), {}).setdefault(row.step, []).append(row.value)
    return [
        Curve(model, dataset, metric, direction[metric], sorted((step, sum(v) / len(v)) for step, v in by_step.items()))
        for (model, dataset, metric), by_step in sorted(values.items())
        if len(by_step) > 1
    ]


# The training curves' look, in one place: a line with small dots per model, a star at its best step.
CURVE_FIGURE_SIZE = (5.2, 3.2)
CURVE_LINE = dict(marker="o", markersize=3)
BEST_STEP_MARK = dict(marker="*", markersize=14, linestyle="none")
BEST_STEP_LABEL = dict(textcoords="offset points", xytext=(6, 6), fontsize=8)


def curves_html(found: list[Curve]) -> str:
    """One plot per dataset and metric, a line per model, its best step marked."""
    from html import escape

    from .plots import svg

    figures = []
    for (dataset, metric), group in itertools.groupby(found, key=lambda c: (c.dataset, c.metric)):
        figure = curve_figure(list(group))
        figures.append(f'<figure class="plot">{svg(figure)}<figcaption>{escape(dataset)} · {escape(metric)}</figcaption></figure>')
    note = "Mean over the validation images at each step; ★ marks each model's best step."
    return f'<div class="plots">{"".join(figures)}</div><p class="note">{note}</p>'


def curve_figure(group: list[Curve]):
    """The matplotlib figure of one dataset and metric's curves: a line per model in its palette
    colour, a star and a label at its best step."""
    from .plots import _pyplot

    fig, ax = _pyplot().subplots(figsize=CURVE_FIGURE_SIZE)
    for index, curve in enumerate(group):
        steps, means = zip(*curve.points)
        color = PALETTE[index % len(PALETTE)]
        ax.plot(steps, means, color=color, label=curve.model, **CURVE_LINE)
        best_step, best_value = curve.best
        ax.plot([best_step], [best_value], color=color, **BEST_STEP_MARK)
        ax.annotate(f"best: step {best_step}", (best_step, best_value), **BEST_STEP_LABEL)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{group[0].metric} {arrow(group[0].lower_is_better)}")
    ax.legend(fontsize=BEST_STEP_LABEL["fontsize"], frameon=False)
    return fig


def _best_step_only(lower_is_better: bool, values: dict[tuple[str, str, int], dict[str, float]]) -> list[Standing]:
    """One standing per model and checkpoint: a training run (values at several steps) stands by
    its best step (the earliest of equal bests), named in its label; its other steps are its
    training curve."""
    sign = 1 if lower_is_better else -1
    runs: dict[tuple[str, str], list[tuple[float, int, frozenset]]] = {}
    for (model, checkpoint, step), found in values.items():
        runs.setdefault((model, checkpoint), []).append((sum(found.values()) / len(found), step, frozenset(found)))
    standings = []
    for (model, checkpoint), points in runs.items():
        mean, step, names = min(points, key=lambda point: (sign * point[0], point[1]))  # a tie: the earliest step
        label = model + (f" @ {checkpoint}" if checkpoint else "")
        if step >= 0:
            label += f" (step {step}, best of {len(points)})" if len(points) > 1 else f" (step {step})"
        standings.append(Standing(label, mean, len(names), names))
    return standings


def markdown(boards: list[Board]) -> str:
    lines = [
        "# Leaderboard",
        "",
        "Models are ranked only among numbers computed under the same conventions. "
        "values: the values averaged, one per image (fid and kid: one for the whole set).",
    ]
    for board in boards:
        lines += ["", f"## {board.title} · {board.metric} {arrow(board.lower_is_better)}"]
        for index, group in enumerate(board.groups):
            if index:
                lines += ["", f"Not comparable with the ranking above (this group vs it): {'; '.join(group.differs)}."]
            lines += ["", "| rank | model | mean | values |", "|---|---|---|---|"]
            lines += [f"| {rank} | {markdown_cell(label)} | {mean} | {images} |" for rank, label, mean, images in _rows(board, group)]
    return "\n".join(lines) + "\n"


def latex(boards: list[Board]) -> str:
    parts = []
    for board, index, group in _groups(boards):
        caption = f"{board.title}, {board.metric}" + (f" (differs: {'; '.join(group.differs)})" if index else "")
        rows = "\n".join(f"{rank} & {latex_escape(label)} & {mean} & {images} \\\\" for rank, label, mean, images in _rows(board, group))
        parts.append(
            f"\\begin{{table}}[t]\n\\centering\n\\caption{{{latex_escape(caption)}}}\n"
            f"\\begin{{tabular}}{{rlrr}}\n\\toprule\nrank & model & mean & values \\\\\n\\midrule\n{rows}\n"
            "\\bottomrule\n\\end{tabular}\n\\end{table}"
        )
    return "\n\n".join(parts) + "\n"


def _groups(boards: list[Board]):
    """Every group of every board, with its index in its board (0: the ranking the others differ from)."""
    for board in boards:
        for index, group in enumerate(board.groups):
            yield board, index, group


def _rows(board: Board, group: Group) -> list[tuple[int, str, str, int]]:
    """A group's table rows: rank, label, the formatted mean, images. Equal means share a rank;
    means that print alike but differ get the decimals that tell them apart (up to 8)."""
    places = decimals(board.metric)
    means = [s.mean for s in group.standings]
    while places < 8 and any(f"{a:.{places}f}" == f"{b:.{places}f}" and a != b for a, b in zip(means, means[1:])):
        places += 1
    rows, rank = [], 0
    for index, standing in enumerate(group.standings):
        if index == 0 or standing.mean != means[index - 1]:
            rank = index + 1
        rows.append((rank, standing.label, f"{standing.mean:.{places}f}", standing.images))
    return rows


LEFT = "style='text-align:left'"  # the model column reads as text


def html(boards: list[Board]) -> str:
    from html import escape

    sections = []
    for board in boards:
        tables = []
        for index, group in enumerate(board.groups):
            note = (
                f'<p class="warn">Not comparable with the ranking above (this group vs it): {escape("; ".join(group.differs))}.</p>'
                if index
                else ""
            )
            rows = "".join(
                f"<tr><td>{rank}</td><td {LEFT}>{escape(label)}</td><td>{mean}</td><td>{images}</td></tr>"
                for rank, label, mean, images in _rows(board, group)
            )
            tables.append(
                f"{note}<table><thead><tr><th>rank</th><th {LEFT}>model</th><th>mean</th><th>values</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
        sections.append(f"<h3>{escape(board.title)} · {escape(board.metric)} {arrow(board.lower_is_better)}</h3>" + "".join(tables))
    return (
        '<p class="note">Models are ranked only among numbers computed under the same conventions; a number computed '
        "otherwise stands in a group of its own, which says what differs. values: the values averaged, one per image "
        "(fid and kid: one for the whole set).</p>" + "".join(sections)
    )
