"""The results table as Markdown and as LaTeX (booktabs)."""

from __future__ import annotations

from ..stats import CONFIDENCE
from .data import Cell, Report, arrow, fmt

PARTIAL_NOTE = (
    "mean over the images with a finite value only: the others scored ±inf or NaN, e.g. the PSNR of an image identical to its reference"
)


def mark(cell: Cell | None, text: str, dagger: str) -> str:
    return text + dagger if cell is not None and cell.partial else text


def markdown(report: Report) -> str:
    """One table per dataset/scale: rows are models, columns metrics; best per column bold."""
    lines = [
        f"<!-- loss-service report: mean over images; best per column in bold; ↑/↓ = higher/lower is better; "
        f"{CONFIDENCE:.0%} bootstrap CIs ({report.resamples} resamples, seed {report.seed}) in the HTML report -->",
        "",
    ]
    for group in report.groups:
        header = ["Model", *(f"{m} {arrow(report.lower_is_better[m])}" for m in report.metrics)]
        lines += [f"### {group}", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * len(report.metrics) + "|"]
        for model in report.models_in(group):
            row = [markdown_cell(model)]
            for metric in report.metrics:
                cell = report.cells.get((group, model, metric))
                text = "–" if cell is None else fmt(metric, cell.mean)
                text = f"**{text}**" if cell is not None and report.best(group, metric) == model else text
                row.append(mark(cell, text, "†"))
            lines.append("| " + " | ".join(row) + " |")
        partial = [
            f"{model}: {metric} n = {c.count} of {c.scored}"
            for model in report.models_in(group)
            for metric in report.metrics
            if (c := report.cells.get((group, model, metric))) is not None and c.partial
        ]
        lines += ["", f"† {PARTIAL_NOTE} ({'; '.join(partial)})."] if partial else []
        lines.append("")
    return "\n".join(lines)


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",  # OT1, LaTeX's default font encoding, prints these three as other glyphs
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "×": r"$\times$",
    "±": r"$\pm$",
}


def markdown_cell(text: str) -> str:
    """``text`` as a Markdown table cell: a bare | would end the cell."""
    return text.replace("|", r"\|")


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex(report: Report) -> str:
    """A booktabs table: rows are models, one column block per dataset/scale; best bold."""
    groups, metrics = report.groups, report.metrics
    arrows = {m: r"$\downarrow$" if report.lower_is_better[m] else r"$\uparrow$" for m in metrics}
    spec = "l" + "".join("r" * len(metrics) for _ in groups)
    lines = [
        "% loss-service report: mean over images; best per column in bold. Needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join(["", *(rf"\multicolumn{{{len(metrics)}}}{{c}}{{{latex_escape(g)}}}" for g in groups)]) + r" \\",
        "".join(rf"\cmidrule(lr){{{2 + i * len(metrics)}-{1 + (i + 1) * len(metrics)}}}" for i in range(len(groups))),
        " & ".join(["Model", *(f"{latex_escape(m)} {arrows[m]}" for _ in groups for m in metrics)]) + r" \\",
        r"\midrule",
    ]
    for model in report.models:
        row = [latex_escape(model)]
        for group in groups:
            for metric in metrics:
                cell = report.cells.get((group, model, metric))
                text = "--" if cell is None else fmt(metric, cell.mean)
                text = rf"\textbf{{{text}}}" if cell is not None and report.best(group, metric) == model else text
                row.append(mark(cell, text, r"$^\dagger$"))
        lines.append(" & ".join(row) + r" \\")
    partial = any(cell.partial for cell in report.cells.values())
    note = rf" $^\dagger${latex_escape(PARTIAL_NOTE)}." if partial else ""
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{Mean over images; best per column in bold; $\uparrow$/$\downarrow$: higher/lower is better." + note + "}",
        r"\end{table}",
        "",
    ]
    return "\n".join(lines)
