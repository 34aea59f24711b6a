"""``loss-service eval --ray``: score image folders, sets and clips on a Ray cluster (or a local Ray instance).

Ray Data streams the work: listing the pairs is the driver's; reading and decoding each image is a
CPU task (``work.decode_pair``); scoring runs in a pool of actors that each load the models once
and call ``losses.score`` on the images of equal size in their batch (``work.Scorer``), one GPU per
actor where the cluster has GPUs. Every row goes to Parquet as its block finishes (``--parquet``),
keyed by model and image; a row that failed carries its error. The CSV, the JSON and the results
store are then written from the Parquet rows exactly as ``eval`` writes them, so ``report`` reads
either. Memory stays bounded: Ray Data holds a few blocks in flight, not the dataset. The set
metrics (fid, kid) take the same road with feature-extracting actors (``sets.py`` merges them);
clip datasets go to clip-scoring actors (``clips.py``).

Faults: an actor that dies is restarted and its batch runs again (Ray's actor and task retries);
the output holds each image once, because a block's rows are written only when it completes. A
driver stopped part way leaves the blocks written so far; ``--resume`` skips every (model, image)
the Parquet files hold and scores the rest. Needs the ``server`` and ``ray`` extras.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..client.eval import checked_models, output
from ..client.eval import clips as clip_eval
from ..client.eval.folders import Pairing, pair_folders
from ..client.eval.images import summarise
from ..client.eval.options import EvalOptions
from ..client.eval.presets import IMAGE_PRESETS
from .pipeline import SETS_DIR, check_weights_here, connect, has_rows, parquet_dir, read_rows, root_cause, stream
from .sets import score_sets


def work_items(options: EvalOptions, models: dict[str, Path], pairings: dict[str, Pairing], done: set[tuple[str, str]]) -> list[dict]:
    """One item per (model, image) not yet in the output: the files of every role, as paths."""
    items = []
    for model in models:
        for image, files in sorted(pairings[model].pairs.items()):
            if (model, image) not in done:
                items.append(dict(model=model, image=image, **{f"path_{role}": str(path.resolve()) for role, path in files.items()}))
    return items


def run(options: EvalOptions, console, weights_dir: str | None = None, random_weights: bool = False) -> int:
    """``eval --ray``: the exit status (0 all scored, 1 failures, 2 refused)."""
    from ..client.eval import sets
    from .work import Extractor, Scorer

    options = replace(options, backend="ray")
    models = checked_models(options, console)
    if models is None:
        return 2
    gt = options.references.get("gt")
    if options.preset not in IMAGE_PRESETS and gt is not None and (options.preset or clip_eval.is_clip_dataset(gt)):
        from .clips import run as run_clips

        return run_clips(options, models, console, weights_dir, random_weights)
    image_metrics, set_metrics = sets.split_metrics(options.metric_names)
    image_options, set_options = sets.split_options(options.metric_options, set_metrics)
    if set_metrics:
        if "gt" not in options.references:
            console.print(f"[red]{', '.join(set_metrics)} compare the --sr set with a reference set: give --gt DIR[/red]")
            return 2
        try:
            sets.check_sizes(options, models, set_metrics, set_options)
        except ValueError as exc:  # DatasetMetricError: a set too small for the reduction
            console.print(f"[red]{', '.join(set_metrics)}: {exc}[/red]")
            return 2
    pairings = {
        name: pair_folders({"sr": directory, **options.references}, options.suffixes) if image_metrics else Pairing()
        for name, directory in models.items()
    }
    directory = parquet_dir(options)
    if not options.resume and directory.exists() and has_rows(directory):
        console.print(f"[red]{directory} holds rows of an earlier run: pass --resume to add to them, or remove it[/red]")
        return 2
    done = {(row["model"], row["image"]) for row in read_rows(directory)} if options.resume else set()
    items = work_items(options, models, pairings, done) if image_metrics else []
    try:
        if options.ray == "local" and not random_weights:
            check_weights_here(options.metric_names, options.metric_options, weights_dir)
        connect(None if options.ray == "local" else options.ray)
    except (RuntimeError, ValueError, OSError) as exc:  # RayUnavailable, a missing or corrupt weight file
        console.print(f"[red]{exc}[/red]")
        return 2
    loading = dict(weights_dir=weights_dir, pretrained=not random_weights)
    pool = (options.ray_actors, options.ray_batch_size, not options.quiet)
    scored = output.Scored({name: [] for name in models}, {name: [] for name in models}, None)
    said: list[str] = []
    try:
        if items:
            stream(items, directory, Scorer, dict(loading, metrics=image_metrics, options=image_options), *pool)
        if set_metrics:

            def extract(set_items: list[dict], where: Path, resolved: dict) -> None:
                stream(set_items, where, Extractor, dict(loading, metrics=set_metrics, options=set_options), *pool)

            said = score_sets(options, models, set_metrics, set_options, directory / SETS_DIR, scored, extract)
    except Exception as exc:  # Ray wraps the workers' errors: say the innermost one in a line
        console.print(f"[red]eval --ray stopped: {root_cause(exc)}; the rows written so far are in {directory} (--resume)[/red]")
        return 1
    for line in said:
        console.print(f"[red]{line}[/red]")
    return write_outputs(options, models, pairings, read_rows(directory), len(items), done, scored, not random_weights, console)


def write_outputs(
    options: EvalOptions, models, pairings, rows: list[dict], scored_now: int, done: set, scored: output.Scored, pretrained: bool, console
) -> int:
    """The CSV, JSON, store and console summary of ``eval``, from the Parquet rows (and the sets'
    values already in ``scored``)."""
    import losses

    from ..client.eval import sets

    scored.lower_is_better = {name: losses.REGISTRY[name].lower_is_better for name in losses.REGISTRY}
    scored.conventions = losses.conventions(options.metric_names, **options.metric_options)
    scored.server = dict(backend="ray", address=options.ray, pretrained=pretrained)
    for row in sorted(rows, key=lambda r: (r["model"], r["image"])):
        if row["model"] not in models:
            continue
        if row["error"]:
            scored.failures[row["model"]].append(dict(image=row["image"], status=422, message=row["error"], detail=row["error"]))
        else:
            result = dict(image=row["image"], scores=json.loads(row["scores"]), warnings=json.loads(row["warnings"]))
            scored.results[row["model"]].append(dict(result, paths=json.loads(row["paths"])))
    if options.store:  # every value the store lacks: a stopped run stored nothing, its resume stores all
        store_new_values(options, models, scored)
    summaries = {
        name: {**summarise(rows, scored.lower_is_better), **sets.set_summary(scored.sets.get(name, {"values": {}}), scored.lower_is_better)}
        for name, rows in scored.results.items()
    }
    output.write_csv(Path(options.out), scored.results)
    output.write_json(options.json, output.images_json(options, models, pairings, scored, summaries))
    for name in models:
        output.print_model_summary(name, summaries[name], scored.failures[name], pairings[name], console, scored.results[name])
    failed = sum(len(f) for f in scored.failures.values())
    set_line = sets.counts_line(scored.sets, sets.split_metrics(options.metric_names)[1])
    console.print(f"scored {scored_now}, skipped (resume) {len(done)}, failed {failed}{set_line} → {options.out}, {parquet_dir(options)}")
    return 1 if failed else 0


def store_new_values(options: EvalOptions, models, scored: output.Scored) -> None:
    """The per-image values and the sets' values the store does not hold yet, under one record."""
    from ..client.eval import sets
    from ..client.store import ResultsStore

    image_metrics, set_metrics = sets.split_metrics(options.metric_names)
    dataset, scale = options.dataset or options.preset or "", options.scale or 0
    with ResultsStore(options.store) as stored:
        present = {model: stored.scored_images(model, dataset, scale, image_metrics) if image_metrics else set() for model in models}
        sets_present = {model: output.SET_ROW_IMAGE in stored.scored_images(model, dataset, scale, set_metrics) for model in models}
    values = [
        (model, result["image"], metric, value)
        for model, results in scored.results.items()
        for result in results
        if result["image"] not in present[model]
        for metric, value in result["scores"].items()
    ]
    values += [
        (model, output.SET_ROW_IMAGE, metric, value)
        for model, entry in scored.sets.items()
        if not sets_present[model]  # (no set metric asked for: no entry in scored.sets)
        for metric, value in entry["values"].items()
    ]
    output.store_values(options.store, options, scored.conventions, values)
