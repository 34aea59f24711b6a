"""``loss-service eval``: score folders of SR/GT(/LR/teacher) images through the service.

Torch-free: it runs on the client-only install.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from losses.sets.statistics import DATASET_METRICS, DatasetMetricError

from ..client import LossClient, LossServiceError, describe
from ..common.errors import comma_list
from .datasets import FeatureCache, check_set_sizes, default_cache_dir, score_sets
from .datasets import resolve_options as resolve_set_options
from .evaluate_clips import is_clip_dataset, run_clip_eval
from .notes import grouped_warnings
from .store import ResultsStore, Row, StoreError, conventions_hash

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".npy"}
WORST_SHOWN = 5


@dataclass
class Pairing:
    pairs: dict[str, dict[str, Path]] = field(default_factory=dict)  # stem → role → file
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # role → file names
    ambiguous: list[str] = field(default_factory=list)


def _by_stem(directory: Path, suffix: str) -> tuple[dict[str, Path], list[str]]:
    found: dict[str, Path] = {}
    ambiguous = []
    for path in sorted(directory.iterdir()):
        # Hidden files are not images of the set: macOS leaves "._img0.png" (AppleDouble
        # metadata) beside every file copied from its disks, which would pair and fail to decode.
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem.removesuffix(suffix) if suffix else path.stem
        if stem in found:
            ambiguous.append(f"{directory.name}/{path.name} and {found[stem].name} share the stem {stem!r}")
            continue
        found[stem] = path
    return found, ambiguous


def pair_folders(dirs: dict[str, Path], suffixes: dict[str, str]) -> Pairing:
    """Pair files by stem across the given role directories: a pair has a file in every one (sr
    always; gt, lr and teacher where given)."""
    listings = {}
    pairing = Pairing()
    for role, directory in dirs.items():
        listings[role], ambiguous = _by_stem(directory, suffixes.get(role, ""))
        pairing.ambiguous += ambiguous
    stems = set.intersection(*(set(listing) for listing in listings.values()))
    for stem in sorted(stems):
        pairing.pairs[stem] = {role: listing[stem] for role, listing in listings.items()}
    for role, listing in listings.items():
        left = sorted(path.name for stem, path in listing.items() if stem not in stems)
        if left:
            pairing.unpaired[role] = left
    return pairing


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
        lower = lower_is_better.get(name.split(".")[0], True)
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


def print_report(model: str, summary: dict, failures: list[dict], pairing: Pairing, console, results: list[dict] = ()) -> None:
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


def parse_models(values: list[str]) -> dict[str, Path]:
    """``--sr NAME=DIR`` (repeatable) or a single ``--sr DIR`` (named after the folder)."""
    models: dict[str, Path] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep:
            name, directory = Path(value).name or "sr", value
        if not name or name in models:
            raise ValueError(f"--sr {value!r}: {'empty' if not name else 'repeated'} model name; use --sr NAME=DIR")
        models[name] = Path(directory)
    return models


@dataclass
class Request:
    """One reference image with the models' candidates for it."""

    image: str
    models: list[str]


@dataclass
class Scored:
    """What one ``eval`` run collected, per model: results (resumed ones included) and failures."""

    results: dict[str, list[dict]]
    failures: dict[str, list[dict]]
    conventions: dict | None
    lower_is_better: dict[str, bool] = field(default_factory=dict)
    server: dict = field(default_factory=dict)
    sets: dict[str, dict] = field(default_factory=dict)  # model → dataset metrics (fid, kid) of its whole set


def check_folders(models: dict[str, Path], references: dict[str, Path]) -> None:
    for label, directory in [*((f"--sr {m}", d) for m, d in models.items()), *((f"--{r}", d) for r, d in references.items())]:
        if not directory.is_dir():
            raise ValueError(f"{label} {directory}: not a directory")


def eval_options(args) -> dict:
    """The metric options ``--crop-border``, ``--y-channel`` and ``--options`` give."""
    options = {}
    if args.crop_border is not None:
        options["crop_border"] = args.crop_border
    if args.y_channel:
        options["y_channel"] = True
    return {**options, **(args.options or {})}


def score_requests(args, metrics: list[str], requests: list[Request], pairings: dict[str, Pairing], options: dict, scored: Scored) -> None:
    """Score every request (each model's candidate against one reference), adding to ``scored``."""

    def score(request: Request) -> dict:
        first = pairings[request.models[0]].pairs[request.image]
        candidates = [pairings[m].pairs[request.image]["sr"] for m in request.models]
        return client.score_candidates(candidates, first.get("gt"), first.get("lr"), first.get("teacher"), metrics, **options)

    with LossClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        scored.lower_is_better = {m["name"]: m["lower_is_better"] for m in client.metrics()}
        scored.server = client.ready()
        if not metrics:
            return
        outcomes = client.imap(
            score, requests, concurrency=args.concurrency, progress=not args.quiet, return_exceptions=True, total=len(requests)
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


def set_paths(directory: Path, suffix: str) -> list[Path]:
    """A folder's images as one set (fid, kid), in file-name order: no pairing needed."""
    return sorted(_by_stem(directory, suffix)[0].values())


def score_dataset_metrics(args, models: dict[str, Path], metrics: list[str], options: dict, console) -> dict[str, dict]:
    """fid/kid of every model's SR folder against the GT folder (features cached by content)."""
    cache_arg = args.feature_cache
    cache = None if cache_arg == "none" else FeatureCache(Path(cache_arg) if cache_arg else default_cache_dir())
    sets = {name: set_paths(directory, args.sr_suffix) for name, directory in models.items()}
    with LossClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        return score_sets(
            client,
            sets,
            set_paths(Path(args.gt), ""),
            metrics,
            options,
            cache,
            log=lambda line: console.print(line) if not args.quiet else None,
            concurrency=min(args.concurrency, 4),
            progress=not args.quiet,
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


def eval_json(args, models: dict[str, Path], pairings: dict[str, Pairing], scored: Scored, summaries: dict, options: dict) -> dict:
    """The JSON results file: per model its results, summary, failures and what did not pair."""
    metric_names = comma_list(args.metrics)
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
        dataset=args.dataset,
        scale=args.scale,
        metrics=metric_names,
        lower_is_better={name: scored.lower_is_better[name] for name in metric_names if name in scored.lower_is_better},
        server=dict(
            url=args.url,
            backend=getattr(args, "backend", "server"),  # "in-process": eval without --url
            device=server.get("device"),
            precision=server.get("precision"),
            pretrained=server.get("pretrained"),
        ),
        options=options,
        conventions=scored.conventions,
        models=entries,
    )
    if len(models) == 1:  # the one-model layout of earlier versions, kept for existing readers
        (single,) = models
        report.update({key: entries[single][key] for key in ("results", "summary", "failures", "unpaired", "ambiguous")})
    return report


# The image name under which a dataset metric's (fid, kid) one value per set is stored.
SET_ROW_IMAGE = "(set)"


def store_results(store: ResultsStore, args, scored: Scored, previous: dict[str, list[dict]]) -> None:
    """The run's new values, one transaction, under the conventions record the server returned;
    a dataset metric's value is one row per model, image ``(set)``."""
    if scored.conventions is None:
        return  # nothing was scored
    digest = conventions_hash(scored.conventions)

    def row(model: str, image: str, metric: str, value: float | None) -> Row:
        return Row(model, args.dataset or "", args.scale or 0, image, metric, value, digest, checkpoint=args.checkpoint or "")

    rows = [
        row(model, result["image"], metric, value)
        for model, results in scored.results.items()
        for result in results[len(previous[model]) :]
        for metric, value in result["scores"].items()
    ]
    rows += [row(model, SET_ROW_IMAGE, metric, value) for model, entry in scored.sets.items() for metric, value in entry["values"].items()]
    store.add(rows, scored.conventions)


def run_eval(args) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    references = {role: Path(getattr(args, role)) for role in ("gt", "lr", "teacher") if getattr(args, role)}
    try:
        models = parse_models(args.sr)
        check_folders(models, references)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    if "gt" in references and (args.preset or is_clip_dataset(references["gt"])):  # the presets are clip test sets
        return run_clip_eval(args, models, eval_options(args), console)
    names = comma_list(args.metrics)
    set_metrics = [name for name in names if name in DATASET_METRICS]
    image_metrics = [name for name in names if name not in DATASET_METRICS]
    if set_metrics and "gt" not in references:
        console.print(f"[red]{', '.join(set_metrics)} compare the --sr set with a reference set: give --gt DIR[/red]")
        return 2
    suffixes = {"sr": args.sr_suffix, "lr": args.lr_suffix, "teacher": args.teacher_suffix}
    # Dataset metrics alone compare whole folders: nothing is paired (or unpaired).
    pairings = {
        name: pair_folders({"sr": directory, **references}, suffixes) if image_metrics else Pairing() for name, directory in models.items()
    }
    out_csv, out_json = Path(args.out), Path(args.json) if args.json else None
    done = read_done(out_csv, out_json) if args.resume else {}
    single = next(iter(models)) if len(models) == 1 else None
    previous = {name: [r for (m, image), r in done.items() if (m or single) == name and image in pairings[name].pairs] for name in models}
    finished = {(name, r["image"]) for name, rows in previous.items() for r in rows}
    try:
        store = ResultsStore(args.store) if args.store else None
    except StoreError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    if store is not None and args.resume and image_metrics:
        wanted = image_metrics
        finished |= {(name, image) for name in models for image in store.scored_images(name, args.dataset or "", args.scale or 0, wanted)}
    stems = sorted({stem for pairing in pairings.values() for stem in pairing.pairs})
    requests = [
        Request(stem, todo) for stem in stems if (todo := [m for m in models if stem in pairings[m].pairs and (m, stem) not in finished])
    ]
    options = eval_options(args)
    set_options = {key: value for key, value in options.items() if any(key in DATASET_METRICS[m].options for m in set_metrics)}
    options = {key: value for key, value in options.items() if key not in set_options}
    if set_metrics:  # refused before any request: sets the reduction could not use
        try:
            check_set_sizes(
                {name: set_paths(directory, args.sr_suffix) for name, directory in models.items()},
                set_paths(references["gt"], ""),
                resolve_set_options(set_metrics, set_options),
            )
        except (DatasetMetricError, ValueError) as exc:
            console.print(f"[red]{', '.join(set_metrics)}: {exc}[/red]")
            return 2
    conventions = json.loads(out_json.read_text()).get("conventions") if args.resume and out_json and out_json.exists() else None
    scored = Scored({name: list(rows) for name, rows in previous.items()}, {name: [] for name in models}, conventions)
    requests = requests if image_metrics else []
    score_requests(args, image_metrics, requests, pairings, options, scored)
    if set_metrics:
        try:
            scored.sets = score_dataset_metrics(args, models, set_metrics, set_options, console)
        except (DatasetMetricError, LossServiceError, ValueError) as exc:
            console.print(f"[red]{', '.join(set_metrics)}: {exc}[/red]")
            return 1
        first = next(iter(scored.sets.values()))
        scored.conventions = merge_conventions(scored.conventions, first["conventions"], first["options"])
        for entry in scored.sets.values():
            del entry["conventions"]

    if store is not None:
        with store:
            store_results(store, args, scored, previous)
    summaries = {
        name: {**summarise(rows, scored.lower_is_better), **set_summary(scored.sets.get(name, {"values": {}}), scored.lower_is_better)}
        for name, rows in scored.results.items()
    }
    write_csv(out_csv, scored.results)
    if out_json is not None:
        out_json.write_text(json.dumps(eval_json(args, models, pairings, scored, summaries, options), indent=2, allow_nan=False))
    for name in models:
        print_report(name, summaries[name], scored.failures[name], pairings[name], console, scored.results[name])
    failed = sum(len(f) for f in scored.failures.values())
    scored_count = sum(len(r.models) for r in requests) - failed
    sets = "".join(
        f"; {', '.join(set_metrics)} of {name}: {entry['sr_count']} sr vs {entry['gt_count']} gt images"
        for name, entry in scored.sets.items()
    )
    console.print(
        f"scored {scored_count}, skipped (resume) {len(finished)}, failed {failed}{sets} → {out_csv}"
        + (f", {out_json}" if out_json else "")
    )
    return 1 if failed else 0
