"""``eval`` of image folders: SR/GT(/LR/teacher) paired by stem → scored per image (several models'
candidates against one reference in one request) → rows → a summary per model. Dataset metrics
(fid, kid) asked for in the same run are scored on the same folders as sets (``sets.py``)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from losses.sets.statistics import DatasetMetricError

from ..errors import LossServiceError, describe
from ..store import ResultsStore, StoreError
from ..sync import LossClient
from . import output, sets
from .folders import Pairing, pair_folders
from .options import EvalOptions

WORST_SHOWN = 5


@dataclass
class Request:
    """One reference image with the models' candidates for it."""

    image: str
    models: list[str]


def read_done(csv_path: Path | None, json_path: Path | None) -> dict[tuple[str, str], dict]:
    """Results already written by an earlier run (for --resume): (model, image) → result.

    A CSV without a ``model`` column (one model) gives model ``None``: it matches the only model."""
    if json_path is not None and json_path.exists():
        data = json.loads(json_path.read_text())
        models = data.get("models") or {None: data}
        return {(model, r["image"]): r for model, entry in models.items() for r in entry.get("results", [])}
    if csv_path is not None and csv_path.exists():
        with open(csv_path, newline="") as handle:
            return {
                (row.get("model"), row["image"]): {
                    "image": row["image"],
                    "scores": {k: _number(v) for k, v in row.items() if k not in ("model", "image")},
                    "warnings": [],
                }
                for row in csv.DictReader(handle)
            }
    return {}


def _number(text: str) -> float | None:
    return float(text) if text not in ("", "None") else None


def component_direction(name: str, lower_is_better: dict[str, bool]) -> bool:
    """Whether lower is better for a score: a metric's own direction; a component named after a
    metric (``ntire2025_perceptual.niqe``, ``hybrid.l1``) takes that metric's, any other
    component (``niqe.flat_spread``) its metric's."""
    if name in lower_is_better:
        return lower_is_better[name]
    metric, _, part = name.partition(".")
    return lower_is_better.get(part, lower_is_better.get(metric, True))


def summarise(results: list[dict], lower_is_better: dict[str, bool]) -> dict[str, dict]:
    """Per score: mean, std, min, max (finite values) and the worst images."""
    columns: dict[str, list[tuple[float, str]]] = {}
    for result in results:
        for name, value in result["scores"].items():
            if value is not None and math.isfinite(value):
                columns.setdefault(name, []).append((value, result["image"]))
    summary = {}
    for name, pairs in sorted(columns.items()):
        values = [v for v, _ in pairs]
        lower = component_direction(name, lower_is_better)
        worst = sorted(pairs, key=lambda p: p[0], reverse=lower)[:WORST_SHOWN]
        summary[name] = dict(
            count=len(values),
            mean=statistics.fmean(values),
            std=statistics.pstdev(values) if len(values) > 1 else 0.0,
            min=min(values),
            max=max(values),
            lower_is_better=lower,
            worst=[dict(image=i, value=v) for v, i in worst],
        )
    return summary


def score_requests(
    options: EvalOptions,
    metrics: list[str],
    requests: list[Request],
    pairings: dict[str, Pairing],
    metric_options: dict,
    scored: output.Scored,
) -> None:
    """Score every request (each model's candidate against one reference), adding to ``scored``."""

    def score(request: Request) -> dict:
        first = pairings[request.models[0]].pairs[request.image]
        candidates = [pairings[m].pairs[request.image]["sr"] for m in request.models]
        return client.score_candidates(candidates, first.get("gt"), first.get("lr"), first.get("teacher"), metrics, **metric_options)

    with LossClient(list(options.url), api_key=options.api_key, timeout=options.timeout) as client:
        scored.lower_is_better = {m["name"]: m["lower_is_better"] for m in client.metrics()}
        scored.server = client.ready()
        if not metrics:
            return
        outcomes = client.imap(
            score, requests, concurrency=options.concurrency, progress=not options.quiet, return_exceptions=True, total=len(requests)
        )
        for request, outcome in zip(requests, outcomes, strict=True):  # strict: runs the generator to its end (bar stopped)
            if isinstance(outcome, LossServiceError):
                for model in request.models:
                    scored.failures[model].append(
                        dict(image=request.image, status=outcome.status, message=str(outcome), detail=outcome.detail)
                    )
                continue
            scored.conventions = scored.conventions or outcome["conventions"]
            for model, item in zip(request.models, outcome["results"]):
                if "error" in item:
                    error = item["error"]
                    scored.failures[model].append(
                        dict(image=request.image, status=error["status"], message=describe(error["detail"]), detail=error["detail"])
                    )
                else:
                    paths = {role: str(path.resolve()) for role, path in pairings[model].pairs[request.image].items()}
                    scored.results[model].append(dict(image=request.image, scores=item["scores"], warnings=item["warnings"], paths=paths))


def run(options: EvalOptions, models: dict[str, Path], console) -> int:
    references = options.references
    image_metrics, set_metrics = sets.split_metrics(options.metric_names)
    if set_metrics and "gt" not in references:
        console.print(f"[red]{', '.join(set_metrics)} compare the --sr set with a reference set: give --gt DIR[/red]")
        return 2
    # Dataset metrics alone compare whole folders: nothing is paired (or unpaired).
    pairings = {
        name: pair_folders({"sr": directory, **references}, options.suffixes) if image_metrics else Pairing()
        for name, directory in models.items()
    }
    out_csv, out_json = Path(options.out), Path(options.json) if options.json else None
    done = read_done(out_csv, out_json) if options.resume else {}
    single = next(iter(models)) if len(models) == 1 else None
    previous = {name: [r for (m, image), r in done.items() if (m or single) == name and image in pairings[name].pairs] for name in models}
    finished = {(name, r["image"]) for name, rows in previous.items() for r in rows}
    if options.store:  # checked before any request: a file that is not a results store is refused
        try:
            with ResultsStore(options.store) as stored:
                if options.resume and image_metrics:
                    dataset, scale = options.dataset or "", options.scale or 0
                    finished |= {(name, image) for name in models for image in stored.scored_images(name, dataset, scale, image_metrics)}
        except StoreError as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
    stems = sorted({stem for pairing in pairings.values() for stem in pairing.pairs})
    requests = [
        Request(stem, todo) for stem in stems if (todo := [m for m in models if stem in pairings[m].pairs and (m, stem) not in finished])
    ]
    image_options, set_options = sets.split_options(options.metric_options, set_metrics)
    if set_metrics:
        try:
            sets.check_sizes(options, models, set_metrics, set_options)
        except (DatasetMetricError, ValueError) as exc:
            console.print(f"[red]{', '.join(set_metrics)}: {exc}[/red]")
            return 2
    conventions = json.loads(out_json.read_text()).get("conventions") if options.resume and out_json and out_json.exists() else None
    scored = output.Scored({name: list(rows) for name, rows in previous.items()}, {name: [] for name in models}, conventions)
    requests = requests if image_metrics else []
    score_requests(options, image_metrics, requests, pairings, image_options, scored)
    if set_metrics:
        say = (lambda line: None) if options.quiet else console.print
        try:
            scored.sets = sets.score(options, models, set_metrics, set_options, say)
        except (DatasetMetricError, LossServiceError, ValueError) as exc:
            console.print(f"[red]{', '.join(set_metrics)}: {exc}[/red]")
            return 1
        first = next(iter(scored.sets.values()))
        scored.conventions = sets.merge_conventions(scored.conventions, first["conventions"], first["options"])
        for entry in scored.sets.values():
            del entry["conventions"]

    if options.store and scored.conventions is not None:
        output.store_values(options.store, options, scored.conventions, output.image_store_values(scored, previous))
    summaries = {
        name: {**summarise(rows, scored.lower_is_better), **sets.set_summary(scored.sets.get(name, {"values": {}}), scored.lower_is_better)}
        for name, rows in scored.results.items()
    }
    output.write_csv(out_csv, scored.results)
    output.write_json(options.json, output.images_json(options, models, pairings, scored, summaries))
    for name in models:
        output.print_model_summary(name, summaries[name], scored.failures[name], pairings[name], console, scored.results[name])
    failed = sum(len(f) for f in scored.failures.values())
    scored_count = sum(len(r.models) for r in requests) - failed
    set_line = sets.counts_line(scored.sets, set_metrics)
    console.print(
        f"scored {scored_count}, skipped (resume) {len(finished)}, failed {failed}{set_line} → {out_csv}"
        + (f", {out_json}" if out_json else "")
    )
    return 1 if failed else 0
