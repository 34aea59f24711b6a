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

from .client import LossClient, LossServiceError

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
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem.removesuffix(suffix) if suffix else path.stem
        if stem in found:
            ambiguous.append(f"{directory.name}/{path.name} and {found[stem].name} share the stem {stem!r}")
            continue
        found[stem] = path
    return found, ambiguous


def pair_folders(dirs: dict[str, Path], suffixes: dict[str, str]) -> Pairing:
    """Pair files by stem across the given role directories (sr and gt required)."""
    listings = {}
    pairing = Pairing()
    for role, directory in dirs.items():
        listings[role], ambiguous = _by_stem(directory, suffixes.get(role, ""))
        pairing.ambiguous += ambiguous
    stems = set(listings["sr"]) & set(listings["gt"])
    for role in dirs:
        if role not in ("sr", "gt"):
            stems &= set(listings[role])
    for stem in sorted(stems):
        pairing.pairs[stem] = {role: listing[stem] for role, listing in listings.items()}
    for role, listing in listings.items():
        left = sorted(path.name for stem, path in listing.items() if stem not in stems)
        if left:
            pairing.unpaired[role] = left
    return pairing


def read_done(csv_path: Path | None, json_path: Path | None) -> dict[str, dict]:
    """Results already written by an earlier run (for --resume): image → scores."""
    if json_path is not None and json_path.exists():
        return {r["image"]: r for r in json.loads(json_path.read_text()).get("results", [])}
    if csv_path is not None and csv_path.exists():
        with open(csv_path, newline="") as handle:
            return {
                row["image"]: {"image": row["image"], "scores": {k: _number(v) for k, v in row.items() if k != "image"}, "warnings": []}
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
            count=len(values), mean=statistics.fmean(values), std=statistics.pstdev(values) if len(values) > 1 else 0.0,
            min=min(values), max=max(values), lower_is_better=lower, worst=[dict(image=i, value=v) for v, i in worst],
        )
    return summary


def write_csv(path: Path, results: list[dict]) -> None:
    names = sorted({name for r in results for name in r["scores"]})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *names])
        for result in sorted(results, key=lambda r: r["image"]):
            writer.writerow([result["image"], *("" if result["scores"].get(n) is None else repr(result["scores"][n]) for n in names)])


def print_report(summary: dict, failures: list[dict], pairing: Pairing, console) -> None:
    from rich.table import Table

    table = Table("metric", "n", "mean", "std", "min", "max", "worst (up to 5)", title="summary")
    for name, s in summary.items():
        worst = ", ".join(f"{w['image']}={w['value']:.4g}" for w in s["worst"])
        table.add_row(name, str(s["count"]), f"{s['mean']:.6g}", f"{s['std']:.4g}", f"{s['min']:.6g}", f"{s['max']:.6g}", worst)
    console.print(table)
    for role, names in pairing.unpaired.items():
        console.print(f"[yellow]unpaired {role}[/yellow] ({len(names)}): {', '.join(names)}")
    for line in pairing.ambiguous:
        console.print(f"[yellow]ambiguous[/yellow]: {line}")
    for failure in failures:
        console.print(f"[red]failed[/red] {failure['image']}: HTTP {failure['status']}: {failure['message']}")


def run_eval(args) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    dirs = {role: Path(getattr(args, role)) for role in ("sr", "gt", "lr", "teacher") if getattr(args, role)}
    for role, directory in dirs.items():
        if not directory.is_dir():
            console.print(f"[red]--{role} {directory}: not a directory[/red]")
            return 2
    pairing = pair_folders(dirs, {"sr": args.sr_suffix, "lr": args.lr_suffix, "teacher": args.teacher_suffix})
    out_csv, out_json = Path(args.out), Path(args.json) if args.json else None
    done = read_done(out_csv, out_json) if args.resume else {}
    todo = [stem for stem in pairing.pairs if stem not in done]
    options = {}
    if args.crop_border is not None:
        options["crop_border"] = args.crop_border
    if args.y_channel:
        options["y_channel"] = True
    if args.options:
        options.update(json.loads(args.options))

    results, failures = list(done.values()), []
    with LossClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        catalogue = {m["name"]: m["lower_is_better"] for m in client.metrics()}
        server = client.ready()
        triplets = ({role: path for role, path in pairing.pairs[stem].items()} for stem in todo)
        outcomes = client.score_many(triplets, args.metrics, concurrency=args.concurrency, progress=not args.quiet,
                                     return_exceptions=True, total=len(todo), **options)
        for stem, outcome in zip(todo, outcomes):
            if isinstance(outcome, LossServiceError):
                failures.append(dict(image=stem, status=outcome.status, message=str(outcome), detail=outcome.detail))
            else:
                results.append(dict(image=stem, scores=outcome["scores"], warnings=outcome["warnings"]))

    summary = summarise(results, catalogue)
    write_csv(out_csv, results)
    if out_json is not None:
        report = dict(
            server=dict(url=args.url, device=server.get("device"), precision=server.get("precision"), pretrained=server.get("pretrained")),
            metrics=args.metrics, options=options, results=sorted(results, key=lambda r: r["image"]),
            summary=summary, failures=failures, unpaired=pairing.unpaired, ambiguous=pairing.ambiguous,
        )
        out_json.write_text(json.dumps(report, indent=2, allow_nan=False))
    print_report(summary, failures, pairing, console)
    console.print(f"scored {len(todo) - len(failures)}, skipped (resume) {len(done)}, failed {len(failures)} → {out_csv}"
                  + (f", {out_json}" if out_json else ""))
    return 1 if failures else 0
