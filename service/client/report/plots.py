"""The report's plots as inline SVG (matplotlib): perception–distortion and distributions."""

from __future__ import annotations

import io
import re

from ..stats import CONFIDENCE
from .data import MARKERS, PALETTE, Report, arrow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"svg.fonttype": "none", "svg.hashsalt": "loss-service", "font.size": 10, "axes.spines.top": False, "axes.spines.right": False}
    )
    return plt


def svg(fig) -> str:
    """The figure as inline SVG markup: no XML prolog, no metadata, no namespace URLs."""
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)


def color_of(report: Report, model: str) -> str:
    return PALETTE[report.models.index(model) % len(PALETTE)]


def perception_distortion_plot(report: Report, x: str, y: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for gi, group in enumerate(report.groups):
        for model in report.models_in(group):
            cx, cy = report.cells.get((group, model, x)), report.cells.get((group, model, y))
            if cx is None or cy is None:
                continue
            ax.errorbar(
                cx.mean,
                cy.mean,
                xerr=[[cx.mean - cx.low], [cx.high - cx.mean]],
                yerr=[[cy.mean - cy.low], [cy.high - cy.mean]],
                fmt=MARKERS[gi % len(MARKERS)],
                color=color_of(report, model),
                markersize=8,
                capsize=2,
                elinewidth=0.8,
            )
            ax.annotate(model, (cx.mean, cy.mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"{x} {arrow(report.lower_is_better[x])}")
    ax.set_ylabel(f"{y} {arrow(report.lower_is_better[y])}")
    handles = [plt.Line2D([], [], color=color_of(report, m), marker="o", linestyle="", label=m) for m in report.models]
    if len(report.groups) > 1:
        handles += [
            plt.Line2D([], [], color="#444", marker=MARKERS[i % len(MARKERS)], linestyle="", label=g) for i, g in enumerate(report.groups)
        ]
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="best")
    ax.grid(alpha=0.3)
    ax.set_title(f"perception–distortion: {x} vs {y} (mean, {CONFIDENCE:.0%} CI)", fontsize=10)
    return svg(fig)


def distribution_plot(report: Report, metric: str) -> str:
    """Box plots of the per-image values: one box per model, grouped by dataset/scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(report.runs) + 1.8), 3.2))
    positions, data, colors, centres = [], [], [], []
    slot = 0
    for group in report.groups:
        first = slot
        for model in report.models_in(group):
            run = next(r for r in report.runs if r.group == group and r.model == model)
            values = run.values(metric)
            if values.size:
                positions.append(slot)
                data.append(values)
                colors.append(color_of(report, model))
            slot += 1
        centres.append((first + slot - 1) / 2)
        slot += 1
    if data:
        boxes = ax.boxplot(
            data,
            positions=positions,
            widths=0.7,
            patch_artist=True,
            showmeans=True,
            flierprops=dict(markersize=2, alpha=0.5),
            medianprops=dict(color="black"),
            meanprops=dict(marker="^", markerfacecolor="white", markeredgecolor="black", markersize=5),
        )
        for patch, color in zip(boxes["boxes"], colors):
            patch.set_facecolor(color)
            patch.set_alpha(0.75)
        ax.set_xticks(centres, report.groups, fontsize=8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=color_of(report, m), alpha=0.75, label=m) for m in report.models]
        ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylabel(f"{metric} {arrow(report.lower_is_better[metric])}")
    ax.grid(axis="y", alpha=0.3)
    return svg(fig)
