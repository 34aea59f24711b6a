"""The report's data model: runs loaded from ``eval`` JSON, per-cell means with bootstrap
intervals, the best model per column and the paired comparisons."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...common.errors import comma_list
from ..notes import grouped_warnings
from ..stats import BOOTSTRAP_RESAMPLES, PairedComparison, bootstrap_mean_ci, compare_paired

DISTORTION_METRICS = ("psnr", "ssim", "ms_ssim")
PERCEPTION_METRICS = ("niqe", "fid", "lpips_alex", "lpips_vgg", "dists", "perceptual")  # the y axis: the first present
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


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
    set_values: dict[str, float] = field(default_factory=dict)  # dataset metrics (fid, kid): one value for the set
    set_size: int = 0

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
        runs.append(
            Run(
                model=name,
                dataset=data.get("dataset") or Path(path).stem,
                scale=data.get("scale"),
                source=str(path),
                scores={r["image"]: r["scores"] for r in results},
                paths={r["image"]: r.get("paths", {}) for r in results},
                metrics=metric_names(data.get("metrics")),
                lower_is_better=data.get("lower_is_better", {}),
                pretrained=(data.get("conventions") or {}).get("pretrained", server.get("pretrained")),
                conventions=data.get("conventions") or {},
                warnings=[
                    *data.get("warnings", []),
                    *(f"{name}: {line}" for line in grouped_warnings(results)),
                    *(f"{name}: {f['image']} failed: {f['message']}" for f in entry.get("failures", [])),
                ],
                set_values=(entry.get("dataset_metrics") or {}).get("values", {}),
                set_size=(entry.get("dataset_metrics") or {}).get("sr_count", 0),
            )
        )
    return runs


def metric_names(metrics) -> list[str]:
    if isinstance(metrics, str):
        return comma_list(metrics)
    return list(metrics or [])


@dataclass(frozen=True)
class Cell:
    """Mean of one metric for one run, with its bootstrap CI."""

    mean: float
    low: float
    high: float
    count: int  # images with a finite value: the mean is over these
    scored: int  # images the run scored for this metric (a value of null, ±inf or NaN included)
    whole_set: bool = False  # a dataset metric (fid, kid): one value of the whole set, no interval

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
    def build(cls, runs: list[Run], metrics: list[str] | None = None, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Report:
        if not runs:
            raise ValueError("no runs to report")
        seen = {(r.group, r.model) for r in runs}
        if len(seen) != len(runs):
            raise ValueError("two result files hold the same model on the same dataset and scale")
        lower = {k: v for r in runs for k, v in r.lower_is_better.items()}
        wanted = metrics or list(dict.fromkeys(m for r in runs for m in r.metrics))
        present = [m for m in wanted if any(r.values(m).size or m in r.set_values for r in runs)]
        unknown = [m for m in present if m not in lower]
        if unknown:
            raise ValueError(f"the results do not say which direction is better for {unknown}")
        report = cls(runs, present, lower, seed, resamples)
        for run in runs:
            for metric in present:
                values = run.values(metric)
                if metric in run.set_values and finite(run.set_values[metric]):
                    value = run.set_values[metric]
                    report.cells[run.group, run.model, metric] = Cell(value, value, value, run.set_size, run.set_size, whole_set=True)
                elif values.size:
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
            common = [i for i in a.scores if i in b.scores and finite(a.scores[i].get(metric)) and finite(b.scores[i].get(metric))]
            if common:
                out.append(
                    (
                        a.model,
                        b.model,
                        compare_paired(
                            a.values(metric, common), b.values(metric, common), self.lower_is_better[metric], self.seed, self.resamples
                        ),
                    )
                )
        return out

    @property
    def random_weights(self) -> list[str]:
        return sorted({f"{r.model} ({r.group})" for r in self.runs if r.pretrained is False})

    @property
    def warnings(self) -> list[str]:
        return list(dict.fromkeys(w for r in self.runs for w in r.warnings))


def finite(value) -> bool:
    return value is not None and math.isfinite(value)


def decimals(metric: str) -> int:
    """dB metrics print with 2 decimals, as SR papers do; the rest with 4."""
    return 2 if "psnr" in metric else 4


def fmt(metric: str, value: float) -> str:
    return f"{value:.{decimals(metric)}f}"


def arrow(lower_is_better: bool) -> str:
    return "↓" if lower_is_better else "↑"
