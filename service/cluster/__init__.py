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
import math
import os
from dataclasses import replace
from pathlib import Path

from ..client.eval import checked_models, output
from ..client.eval import clips as clip_eval
from ..client.eval.folders import Pairing, pair_folders
from ..client.eval.images import summarise
from ..client.eval.options import EvalOptions
from ..client.eval.presets import IMAGE_PRESETS
from .sets import SETS_DIR, score_sets

DECODE_CPUS = 0.25
ITEMS_PER_BLOCK = 64


class RayUnavailable(RuntimeError):
    """The cluster at the given address could not be joined (or a local instance started)."""


def parquet_dir(options: EvalOptions) -> Path:
    return Path(options.parquet) if options.parquet else Path(options.out).with_suffix(".parquet")


def read_rows(directory: Path) -> list[dict]:
    """Every row the Parquet files under ``directory`` hold (a file cut short by a stopped driver
    is skipped: its rows are scored again)."""
    import pyarrow.parquet as pq

    rows = []
    for path in sorted(directory.glob("*.parquet")) if directory.exists() else ():
        try:
            rows += pq.read_table(path).to_pylist()
        except OSError:
            path.unlink()
    return rows


def work_items(options: EvalOptions, models: dict[str, Path], pairings: dict[str, Pairing], done: set[tuple[str, str]]) -> list[dict]:
    """One item per (model, image) not yet in the output: the files of every role, as paths."""
    items = []
    for model in models:
        for image, files in sorted(pairings[model].pairs.items()):
            if (model, image) not in done:
                items.append(dict(model=model, image=image, **{f"path_{role}": str(path.resolve()) for role, path in files.items()}))
    return items


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connection to ``[ray://]host:port`` within ``timeout_s``: Ray itself keeps retrying an
    address that refuses for minutes before it gives up."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise RayUnavailable(f"--ray {address}: not an address (host:port, ray://host:port or auto)") from None
    except OSError as exc:
        raise RayUnavailable(f"--ray {address}: no Ray cluster could be reached there ({exc})") from None


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """Join the cluster at ``address`` (``auto`` for the one this machine belongs to), or start a
    local instance; a cluster that cannot be reached is a ``RayUnavailable`` naming the address.

    Local workers run this interpreter: Ray would otherwise start them through ``uv run`` when the
    driver was started so, in an environment synced without the ``ray`` extra."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if address not in (None, "auto"):
        check_reachable(address)

    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"--ray {address}: no Ray cluster could be reached there ({exc})") from exc


def stream(
    items: list[dict], directory: Path, actor, arguments: dict, actors: int, batch_size: int, progress: bool, decode: bool = True
) -> None:
    """The streaming pipeline: decode tasks (unless ``decode`` is false: the actor reads its
    items' files) → a pool of ``actors`` ``actor``s (built with ``arguments`` and the device,
    called on batches of ``batch_size``) → Parquet files under ``directory``; Ray Data's progress
    bars on the terminal unless ``progress`` is false."""
    import ray

    from .work import decode_pair

    ray.data.DataContext.get_current().enable_progress_bars = progress
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    # Decoding is light next to scoring: a quarter of a CPU per task. On CPUs the actors share three
    # quarters of the cluster's, so decoding always has room to feed them (whole CPUs would leave none).
    actor_cpus = 1 if gpus else max(0.1, round(0.75 * resources.get("CPU", 1) / actors, 2))
    # Enough blocks to keep every actor fed (4 each), and at most ITEMS_PER_BLOCK items in one, so a
    # million pairs become ~16,000 decode tasks spread over the cluster, not a handful of long ones.
    blocks = min(len(items), max(4 * actors, math.ceil(len(items) / ITEMS_PER_BLOCK)))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, blocks))
    if decode:
        dataset = dataset.map(decode_pair, num_cpus=DECODE_CPUS)
    dataset = dataset.map_batches(
        actor,
        fn_constructor_kwargs=dict(arguments, device="cuda" if gpus else "cpu"),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
        num_cpus=actor_cpus,
        batch_format="pandas",
    )  # Ray Data restarts a dead actor and retries its tasks by default (max_restarts = max_task_retries = -1)
    dataset.write_parquet(str(directory))


RAY_WRAPPERS = ("RayTaskError", "ActorDiedError", "SystemException", "UserCodeException", "RayActorError")


def root_cause(exc: BaseException) -> str:
    """The workers' own error inside Ray's wrappers, in one line (the first line of the chain's
    messages naming an error that is not Ray's), else the outermost message's first line."""
    import re

    texts, seen = [], exc
    while seen is not None and len(texts) < 20:
        texts.append(str(seen))
        seen = getattr(seen, "cause", None) or seen.__cause__
    for line in (line.strip() for text in texts for line in text.splitlines()):
        match = re.match(r"^[\w.]*?(\w+(?:Error|Exception)): (.+)", line)
        if match and not match.group(1).startswith(RAY_WRAPPERS):
            return f"{match.group(1)}: {match.group(2)}"
    return f"{type(exc).__name__}: {(texts[0].strip().splitlines() or [''])[0]}"


def check_weights_here(metrics: list[str], options: dict, weights_dir: str | None) -> None:
    """On a local instance the workers read this machine's weights: a missing file is named now,
    before any worker starts (a remote cluster's workers look in their own directories)."""
    from losses.nets import weights as W
    from losses.nets.backbones import backbone_spec
    from losses.plan import make_plan
    from losses.registry import KINDS

    plan = make_plan(metrics, options, kinds=KINDS)
    for spec in [backbone_spec(name).weights for name in sorted(plan.backbones())] + [w for m in plan.metrics for w in m.weights]:
        W.resolve(spec, weights_dir)


def has_rows(directory: Path) -> bool:
    return any(directory.glob("*.parquet")) or any((directory / SETS_DIR).glob("*.parquet"))


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
