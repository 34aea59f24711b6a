"""``eval`` of dataset metrics (fid, kid): each model's SR folder against the GT folder as whole
sets, the GT features cached by content. One value per model and set."""

from __future__ import annotations

from pathlib import Path

from losses.sets.statistics import DATASET_METRICS

from ..datasets import FeatureCache, check_set_sizes, default_cache_dir, resolve_options, score_sets
from ..sync import LossClient
from .folders import set_paths
from .options import EvalOptions


def split_metrics(names: list[str]) -> tuple[list[str], list[str]]:
    """(per-image metrics, dataset metrics) of ``--metrics``."""
    return [name for name in names if name not in DATASET_METRICS], [name for name in names if name in DATASET_METRICS]


def split_options(options: dict, set_metrics: list[str]) -> tuple[dict, dict]:
    """(per-image options, the dataset metrics' options): KID's subset size never reaches an image request."""
    for_sets = {key: value for key, value in options.items() if any(key in DATASET_METRICS[m].options for m in set_metrics)}
    return {key: value for key, value in options.items() if key not in for_sets}, for_sets


def check_sizes(options: EvalOptions, models: dict[str, Path], set_metrics: list[str], set_options: dict) -> None:
    """Refused before any request: sets the reduction could not use (``DatasetMetricError``, ``ValueError``)."""
    check_set_sizes(
        {name: set_paths(directory, options.sr_suffix) for name, directory in models.items()},
        set_paths(Path(options.gt), ""),
        resolve_options(set_metrics, set_options),
    )


def score(options: EvalOptions, models: dict[str, Path], metrics: list[str], set_options: dict, say) -> dict[str, dict]:
    """fid/kid of every model's SR folder against the GT folder: model → values, counts, options, conventions."""
    cache_arg = options.feature_cache
    cache = None if cache_arg == "none" else FeatureCache(Path(cache_arg) if cache_arg else default_cache_dir())
    sets = {name: set_paths(directory, options.sr_suffix) for name, directory in models.items()}
    with LossClient(list(options.url), api_key=options.api_key, timeout=options.timeout) as client:
        return score_sets(
            client,
            sets,
            set_paths(Path(options.gt), ""),
            metrics,
            set_options,
            cache,
            log=say,
            concurrency=min(options.concurrency, 4),
            progress=not options.quiet,
        )


def merge_conventions(images: dict | None, sets: dict, set_options: dict[str, dict]) -> dict:
    """One record for the run: the per-image request's, with the dataset metrics and their weights
    added. The dataset metrics' options are the ones this client reduced with (KID's subset size,
    count, seed): the server that extracted the features recorded only their defaults."""
    metrics = {**(images or {}).get("metrics", {}), **sets.get("metrics", {})}
    for name, options in set_options.items():
        metrics[name] = {**metrics.get(name, {}), "options": dict(options)}
    if images is None:
        return {**sets, "metrics": metrics}
    return {**images, "metrics": metrics, "weights": {**images.get("weights", {}), **sets.get("weights", {})}}


def set_summary(result: dict, lower_is_better: dict[str, bool]) -> dict[str, dict]:
    """A dataset metric's summary entry: one value for the set (``kid`` carries its std over subsets)."""
    values = result["values"]
    return {
        name: dict(
            count=result["sr_count"],
            mean=value,
            std=values.get(f"{name}.std", 0.0),
            min=value,
            max=value,
            lower_is_better=lower_is_better.get(name, True),
            worst=[],
            dataset=True,
        )
        for name, value in values.items()
        if "." not in name
    }


def counts_line(entries: dict[str, dict], metrics: list[str]) -> str:
    """The end-of-run line's part for the sets: each model's set sizes."""
    names = ", ".join(metrics)
    return "".join(f"; {names} of {name}: {entry['sr_count']} sr vs {entry['gt_count']} gt images" for name, entry in entries.items())
