"""``loss-service report``: combine ``eval`` JSON files (models × datasets × scales) into one
self-contained HTML page, a Markdown table and a LaTeX (booktabs) table.

The page fetches nothing: plots are inline SVG (matplotlib), crops are inline PNG, styles are
inline. Torch-free: it needs the ``report`` extra (matplotlib, SciPy) and the eval JSON.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decode import decode
from .errors import ServiceError
from .stats import BOOTSTRAP_RESAMPLES, CONFIDENCE, PairedComparison, bootstrap_mean_ci, compare_paired

DISTORTION_METRICS = ("psnr", "ssim", "ms_ssim")
PERCEPTION_METRICS = ("lpips_alex", "lpips_vgg", "dists", "perceptual")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


# --- the data ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One model on one dataset at one scale: per-image scores and the files they came from."""

    model: str
    dataset: str
    scale: int | None
    source: str
    scores: dict[str, dict[str, float | None]]  # image → metric → value
    paths: dict[str, dict[str, str]]  # image → role → file
    metrics: list[str]
    lower_is_better: dict[str, bool]
    pretrained: bool | None
    conventions: dict
    warnings: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        return f"{self.dataset} ×{self.scale}" if self.scale else self.dataset

    def values(self, metric: str, images=None) -> np.ndarray:
        images = self.scores if images is None else images
        found = (self.scores[i].get(metric) for i in images)
        return np.array([v for v in found if v is not None and math.isfinite(v)], dtype=np.float64)


def load_runs(path: Path) -> list[Run]:
    """The runs in one eval JSON: one per model (an older single-model file is one run)."""
    data = json.loads(Path(path).read_text())
    models = data.get("models") or {data.get("model") or Path(path).stem: data}
    server = data.get("server") or {}
    runs = []
    for name, entry in models.items():
        results = entry.get("results", [])
        runs.append(Run(
            model=name,
            dataset=data.get("dataset") or Path(path).stem,
            scale=data.get("scale"),
            source=str(path),
            scores={r["image"]: r["scores"] for r in results},
            paths={r["image"]: r.get("paths", {}) for r in results},
            metrics=_names(data.get("metrics")),
            lower_is_better=data.get("lower_is_better", {}),
            pretrained=(data.get("conventions") or {}).get("pretrained", server.get("pretrained")),
            conventions=data.get("conventions") or {},
            warnings=[*data.get("warnings", []), *(f"{name}: {f['image']} failed: {f['message']}" for f in entry.get("failures", []))],
        ))
    return runs


def _names(metrics) -> list[str]:
    if isinstance(metrics, str):
        return [m.strip() for m in metrics.split(",") if m.strip()]
    return list(metrics or [])


@dataclass(frozen=True)
class Cell:
    """Mean of one metric for one run, with its bootstrap CI."""

    mean: float
    low: float
    high: float
    count: int  # images with a finite value: the mean is over these
    scored: int  # images the run scored for this metric (a value of null, ±inf or NaN included)

    @property
    def partial(self) -> bool:
        """Some images had no finite value (e.g. PSNR of an image identical to its reference)."""
        return self.count < self.scored


@dataclass
class Report:
    runs: list[Run]
    metrics: list[str]
    lower_is_better: dict[str, bool]
    seed: int = 0
    resamples: int = BOOTSTRAP_RESAMPLES
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)  # (group, model, metric)

    @classmethod
    def build(cls, runs: list[Run], metrics: list[str] | None = None, seed: int = 0,
              resamples: int = BOOTSTRAP_RESAMPLES) -> "Report":
        if not runs:
            raise ValueError("no runs to report")
        seen = {(r.group, r.model) for r in runs}
        if len(seen) != len(runs):
            raise ValueError("two result files hold the same model on the same dataset and scale")
        lower = {k: v for r in runs for k, v in r.lower_is_better.items()}
        wanted = metrics or list(dict.fromkeys(m for r in runs for m in r.metrics))
        present = [m for m in wanted if any(r.values(m).size for r in runs)]
        unknown = [m for m in present if m not in lower]
        if unknown:
            raise ValueError(f"the results do not say which direction is better for {unknown}")
        report = cls(runs, present, lower, seed, resamples)
        for run in runs:
            for metric in present:
                values = run.values(metric)
                if values.size:
                    low, high = bootstrap_mean_ci(values, seed, resamples)
                    scored = sum(1 for image in run.scores.values() if metric in image)
                    report.cells[run.group, run.model, metric] = Cell(float(values.mean()), low, high, int(values.size), scored)
        return report

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(r.group for r in self.runs))

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.runs))

    def models_in(self, group: str) -> list[str]:
        return [r.model for r in self.runs if r.group == group]

    def best(self, group: str, metric: str) -> str | None:
        """The model with the best mean in ``group`` for ``metric`` (ties: the first listed)."""
        candidates = [(self.cells[group, m, metric].mean, m) for m in self.models_in(group) if (group, m, metric) in self.cells]
        if not candidates:
            return None
        pick = min if self.lower_is_better[metric] else max
        return pick(candidates, key=lambda c: c[0])[1]

    def paired(self, group: str, metric: str) -> list[tuple[str, str, PairedComparison]]:
        """Every pair of models in ``group``, on the images both scored with a finite value."""
        runs = [r for r in self.runs if r.group == group]
        out = []
        for a, b in itertools.combinations(runs, 2):
            common = [i for i in a.scores if i in b.scores and _finite(a.scores[i].get(metric)) and _finite(b.scores[i].get(metric))]
            if common:
                out.append((a.model, b.model, compare_paired(a.values(metric, common), b.values(metric, common),
                                                             self.lower_is_better[metric], self.seed, self.resamples)))
        return out

    @property
    def random_weights(self) -> list[str]:
        return sorted({f"{r.model} ({r.group})" for r in self.runs if r.pretrained is False})

    @property
    def warnings(self) -> list[str]:
        return list(dict.fromkeys(w for r in self.runs for w in r.warnings))


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def decimals(metric: str) -> int:
    """dB metrics print with 2 decimals, as SR papers do; the rest with 4."""
    return 2 if "psnr" in metric else 4


def fmt(metric: str, value: float) -> str:
    return f"{value:.{decimals(metric)}f}"


def arrow(metric: str, lower_is_better: bool) -> str:
    return "↓" if lower_is_better else "↑"


# --- Markdown and LaTeX -------------------------------------------------------------------------


PARTIAL_NOTE = ("mean over the images with a finite value only: the others scored ±inf or NaN, "
                "e.g. the PSNR of an image identical to its reference")


def _mark(cell: Cell | None, text: str, dagger: str) -> str:
    return text + dagger if cell is not None and cell.partial else text


def markdown(report: Report) -> str:
    """One table per dataset/scale: rows are models, columns metrics; best per column bold."""
    lines = [f"<!-- loss-service report: mean over images; best per column in bold; ↑/↓ = higher/lower is better; "
             f"{CONFIDENCE:.0%} bootstrap CIs ({report.resamples} resamples, seed {report.seed}) in the HTML report -->", ""]
    for group in report.groups:
        header = ["Model", *(f"{m} {arrow(m, report.lower_is_better[m])}" for m in report.metrics)]
        lines += [f"### {group}", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * len(report.metrics) + "|"]
        for model in report.models_in(group):
            row = [model.replace("|", r"\|")]  # a bare | in a model's name would end its cell
            for metric in report.metrics:
                cell = report.cells.get((group, model, metric))
                text = "–" if cell is None else fmt(metric, cell.mean)
                text = f"**{text}**" if cell is not None and report.best(group, metric) == model else text
                row.append(_mark(cell, text, "†"))
            lines.append("| " + " | ".join(row) + " |")
        partial = [f"{model}: {metric} n = {c.count} of {c.scored}" for model in report.models_in(group) for metric in report.metrics
                   if (c := report.cells.get((group, model, metric))) is not None and c.partial]
        lines += ["", f"† {PARTIAL_NOTE} ({'; '.join(partial)})."] if partial else []
        lines.append("")
    return "\n".join(lines)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "×": r"$\times$",
                 "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex(report: Report) -> str:
    """A booktabs table: rows are models, one column block per dataset/scale; best bold."""
    groups, metrics = report.groups, report.metrics
    arrows = {m: r"$\downarrow$" if report.lower_is_better[m] else r"$\uparrow$" for m in metrics}
    spec = "l" + "".join("r" * len(metrics) for _ in groups)
    lines = [
        "% loss-service report: mean over images; best per column in bold. Needs \\usepackage{booktabs}.",
        r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + spec + "}", r"\toprule",
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
                row.append(_mark(cell, text, r"$^\dagger$"))
        lines.append(" & ".join(row) + r" \\")
    partial = any(cell.partial for cell in report.cells.values())
    note = rf" $^\dagger${latex_escape(PARTIAL_NOTE)}." if partial else ""
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{Mean over images; best per column in bold; $\uparrow$/$\downarrow$: higher/lower is better." + note + "}",
              r"\end{table}", ""]
    return "\n".join(lines)


# --- plots (inline SVG) -------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "loss-service", "font.size": 10,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def svg(fig) -> str:
    """The figure as inline SVG markup: no XML prolog, no metadata, no namespace URLs."""
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
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
            ax.errorbar(cx.mean, cy.mean, xerr=[[cx.mean - cx.low], [cx.high - cx.mean]],
                        yerr=[[cy.mean - cy.low], [cy.high - cy.mean]], fmt=MARKERS[gi % len(MARKERS)],
                        color=color_of(report, model), markersize=8, capsize=2, elinewidth=0.8)
            ax.annotate(model, (cx.mean, cy.mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"{x} {arrow(x, report.lower_is_better[x])}")
    ax.set_ylabel(f"{y} {arrow(y, report.lower_is_better[y])}")
    handles = [plt.Line2D([], [], color=color_of(report, m), marker="o", linestyle="", label=m) for m in report.models]
    if len(report.groups) > 1:
        handles += [plt.Line2D([], [], color="#444", marker=MARKERS[i % len(MARKERS)], linestyle="", label=g)
                    for i, g in enumerate(report.groups)]
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
        boxes = ax.boxplot(data, positions=positions, widths=0.7, patch_artist=True, showmeans=True,
                           flierprops=dict(markersize=2, alpha=0.5), medianprops=dict(color="black"),
                           meanprops=dict(marker="^", markerfacecolor="white", markeredgecolor="black", markersize=5))
        for patch, color in zip(boxes["boxes"], colors):
            patch.set_facecolor(color)
            patch.set_alpha(0.75)
        ax.set_xticks(centres, report.groups, fontsize=8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=color_of(report, m), alpha=0.75, label=m) for m in report.models]
        ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylabel(f"{metric} {arrow(metric, report.lower_is_better[metric])}")
    ax.grid(axis="y", alpha=0.3)
    return svg(fig)


# --- worst-K gallery ---------------------------------------------------------------------------


def read_image(path: str) -> np.ndarray:
    """An image as the server decoded it: float32 H×W×3 in [0, 1]."""
    try:
        return decode(Path(path).read_bytes(), Path(path).name).pixels
    except ServiceError as exc:
        raise ValueError(exc.message) from None


def largest_error_crop(sr: np.ndarray, gt: np.ndarray, size: int) -> tuple[slice, slice]:
    """A size×size window centred on the largest local error: the peak of |SR − GT| (mean over
    channels) smoothed by a Gaussian of σ = 4 px, so a region outweighs an isolated pixel."""
    from scipy.ndimage import gaussian_filter

    error = gaussian_filter(np.abs(sr.astype(np.float64) - gt).mean(axis=2), sigma=4.0, mode="nearest")
    cy, cx = np.unravel_index(int(np.argmax(error)), error.shape)
    height, width = error.shape
    h, w = min(size, height), min(size, width)
    top, left = min(max(cy - h // 2, 0), height - h), min(max(cx - w // 2, 0), width - w)
    return slice(top, top + h), slice(left, left + w)


def png_data_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def heat_map(sr: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float]:
    """|SR − GT| (mean over channels, 0–255 scale) through the inferno colour map, scaled to its max."""
    from matplotlib import colormaps

    error = np.abs(sr.astype(np.float64) - gt).mean(axis=2) * 255.0
    peak = float(error.max())
    rgb = colormaps["inferno"](error / peak if peak > 0 else error)[..., :3]
    return to_uint8(rgb), peak


@dataclass
class GalleryEntry:
    run: Run
    image: str
    value: float
    tiles: list[tuple[str, str]]  # (caption, data URI)
    note: str = ""


def worst_images(runs: list[Run], metric: str, lower_is_better: bool, k: int) -> list[tuple[Run, str, float]]:
    """The ``k`` worst (run, image, value) over ``runs`` (one model's datasets and scales)."""
    found = [(run, image, s[metric]) for run in runs for image, s in run.scores.items() if _finite(s.get(metric))]
    return sorted(found, key=lambda f: f[2], reverse=lower_is_better)[:k]


def gallery_entry(run: Run, image: str, value: float, crop: int) -> GalleryEntry:
    paths = run.paths.get(image, {})
    if "sr" not in paths or "gt" not in paths:
        return GalleryEntry(run, image, value, [], "no image paths in the results file")
    try:
        sr, gt = read_image(paths["sr"]), read_image(paths["gt"])
    except (OSError, ValueError) as exc:
        return GalleryEntry(run, image, value, [], f"cannot read the images: {exc}")
    if sr.shape != gt.shape:
        return GalleryEntry(run, image, value, [], f"SR is {sr.shape[1]}×{sr.shape[0]} but GT is {gt.shape[1]}×{gt.shape[0]}")
    rows, cols = largest_error_crop(sr, gt, crop)
    heat, peak = heat_map(sr[rows, cols], gt[rows, cols])
    where = f"crop x {cols.start}–{cols.stop}, y {rows.start}–{rows.stop} of {gt.shape[1]}×{gt.shape[0]}"
    return GalleryEntry(run, image, value, [("GT", png_data_uri(to_uint8(gt[rows, cols]))),
                                            ("SR", png_data_uri(to_uint8(sr[rows, cols]))),
                                            (f"|SR − GT|, max {peak:.0f}/255", png_data_uri(heat))], where)


# --- HTML -------------------------------------------------------------------------------------

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
.tiles figure{margin:0}details pre{background:#fff;padding:10px;overflow:auto;max-height:420px;font-size:12px}
"""


def _e(text) -> str:
    return html.escape(str(text))


def html_table(report: Report, group: str) -> str:
    head = "".join(f"<th>{_e(m)} {arrow(m, report.lower_is_better[m])}</th>" for m in report.metrics)
    rows = []
    for model in report.models_in(group):
        cells = []
        for metric in report.metrics:
            cell = report.cells.get((group, model, metric))
            if cell is None:
                cells.append("<td>–</td>")
                continue
            tip = (f"{metric}: mean {cell.mean:.6g}, {CONFIDENCE:.0%} bootstrap CI [{cell.low:.6g}, {cell.high:.6g}], "
                   f"n = {cell.count}" + (f" of {cell.scored}: {PARTIAL_NOTE}" if cell.partial else ""))
            best = ' class="best"' if report.best(group, metric) == model else ""
            half = fmt(metric, (cell.high - cell.low) / 2)
            cells.append(f'<td{best} title="{_e(tip)}">{_mark(cell, fmt(metric, cell.mean), "†")}<span class="ci">±{half}</span></td>')
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
            rows.append(f"<tr><td>{_e(a)} vs {_e(b)}</td><td>{c.count}</td><td>{c.mean_diff:+.{d}f}</td>"
                        f"<td>[{c.ci_low:+.{d}f}, {c.ci_high:+.{d}f}]</td><td>{c.wins} / {c.ties} / {c.losses}</td>"
                        f"<td>{p}</td><td{klass}>{_e(verdict)}</td></tr>")
        if rows:
            blocks.append(f"<h3>{_e(metric)} {arrow(metric, report.lower_is_better[metric])}</h3>"
                          "<table><thead><tr><th>A vs B</th><th>images</th><th>mean(A − B)</th>"
                          f"<th>{CONFIDENCE:.0%} CI</th><th>A wins / ties / losses</th><th>Wilcoxon p</th><th>reading</th></tr></thead>"
                          f"<tbody>{''.join(rows)}</tbody></table>")
    return "".join(blocks)


def html_gallery(report: Report, metric: str, k: int, crop: int) -> str:
    entries = []
    lower = report.lower_is_better[metric]
    for model in report.models:
        for run, image, value in worst_images([r for r in report.runs if r.model == model], metric, lower, k):
            entry = gallery_entry(run, image, value, crop)
            others = ", ".join(f"{m} {fmt(m, run.scores[image][m])}" for m in report.metrics
                               if m != metric and _finite(run.scores[image].get(m)))
            tiles = "".join(f'<figure><img alt="{_e(c)}" src="{uri}"><figcaption>{_e(c)}</figcaption></figure>'
                            for c, uri in entry.tiles)
            entries.append(f'<div class="entry"><b>{_e(run.model)}</b> · {_e(run.group)} · <b>{_e(image)}</b><br>'
                           f"{_e(metric)} = {fmt(metric, value)}<br><span class='note'>{_e(others)}</span>"
                           f'<div class="tiles">{tiles}</div><span class="note">{_e(entry.note)}</span></div>')
    return f'<div class="gallery">{"".join(entries)}</div>'


def conventions_block(report: Report) -> str:
    distinct: dict[str, list[str]] = {}
    for run in report.runs:
        record = {k: v for k, v in run.conventions.items() if k != "date"}
        distinct.setdefault(json.dumps(record, indent=2, sort_keys=True), []).append(f"{run.model} · {run.group} ({run.source})")
    parts = []
    for text, users in distinct.items():
        parts.append(f"<details{' open' if len(distinct) > 1 else ''}><summary>{_e('; '.join(users))}</summary><pre>{_e(text)}</pre></details>")
    if len(distinct) > 1:
        parts.insert(0, '<p class="warn">The runs were scored under different conventions: compare their numbers with care.</p>')
    return "".join(parts)


def render_html(report: Report, *, x: str | None = None, y: str | None = None, worst: int = 3, crop: int = 128,
                title: str = "Model comparison") -> str:
    x = x or next((m for m in DISTORTION_METRICS if m in report.metrics), None)
    y = y or next((m for m in PERCEPTION_METRICS if m in report.metrics), None)
    notes = []
    sections = []
    tables = "".join(f"<h3>{_e(g)}</h3>{html_table(report, g)}" for g in report.groups)
    sections.append(("table", "Results", tables + f'<p class="note">Mean over images, the best per column highlighted; ± is half the '
                     f"{CONFIDENCE:.0%} percentile bootstrap interval ({report.resamples} resamples, seed {report.seed}); "
                     "hover a cell for the interval and the image count. ↑/↓: higher/lower is better.</p>"))
    if x in report.metrics and y in report.metrics:
        sections.append(("pd", "Perception–distortion", f'<div class="plot">{perception_distortion_plot(report, x, y)}</div>'
                         '<p class="note">One point per model per dataset; bars are the bootstrap intervals of the means.</p>'))
    else:
        notes.append(f"no perception–distortion plot: the results lack {x if x not in report.metrics else y} "
                     "(choose two reported metrics with --x and --y)")
    if len(report.models) > 1:
        paired = "".join(f"<h3>{_e(g)}</h3>{html_paired(report, g)}" for g in report.groups if len(report.models_in(g)) > 1)
        sections.append(("paired", "Paired comparisons", paired + '<p class="note">On the images both models scored: mean '
                         f"difference with its seeded bootstrap {CONFIDENCE:.0%} interval, per-image wins/ties/losses of A in the "
                         "metric's direction, and the two-sided Wilcoxon signed-rank p-value (SciPy; zero differences dropped). "
                         "“Better” needs both an interval that excludes 0 and p &lt; 0.05.</p>"))
    plots = "".join(f'<figure class="plot">{distribution_plot(report, m)}<figcaption>{_e(m)}</figcaption></figure>'
                    for m in report.metrics)
    sections.append(("dist", "Distributions", f'<div class="plots">{plots}</div><p class="note">Box: quartiles; line: median; '
                     "triangle: mean; whiskers 1.5 IQR.</p>"))
    if worst > 0:
        gallery = "".join(f"<h3>{_e(m)} {arrow(m, report.lower_is_better[m])}: the {worst} worst per model</h3>"
                          f"{html_gallery(report, m, worst, crop)}" for m in report.metrics)
        sections.append(("worst", "Worst images", gallery + f'<p class="note">{crop}×{crop} crops centred on the largest local '
                         "error (|SR − GT| smoothed by a Gaussian of σ = 4 px), read from the paths in the results files.</p>"))
    warnings = [*report.warnings, *notes]
    extra = f'<ul class="warn">{"".join(f"<li>{_e(w)}</li>" for w in warnings)}</ul>' if warnings else "<p>None.</p>"
    sections.append(("conventions", "Conventions and warnings", "<h3>Warnings</h3>" + extra + "<h3>Conventions</h3>"
                     + conventions_block(report)))

    banner = ""
    if report.random_weights:
        banner = (f'<div class="banner">RANDOM BACKBONE WEIGHTS in {_e(", ".join(report.random_weights))}: their feature '
                  "metrics (perceptual, LPIPS, DISTS, CLP) are not comparable with anything.</div>")
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(name)}</h2>{content}</section>' for key, name, content in sections)
    summary = (f"{len(report.models)} model(s) · {len(report.groups)} dataset/scale group(s) · metrics: {', '.join(report.metrics)} · "
               f"built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><main><h1>{_e(title)}</h1><p class="meta">{_e(summary)}</p>{banner}<nav>{nav}</nav>{body}</main></body></html>')


# --- the command --------------------------------------------------------------------------------


def run_report(args) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    if not (args.html or args.markdown or args.latex):
        console.print("[red]give at least one of --html, --markdown, --latex[/red]")
        return 2
    try:
        runs = [run for path in args.results for run in load_runs(Path(path))]
        report = Report.build(runs, _names(args.metrics) or None, seed=args.seed, resamples=args.resamples)
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
