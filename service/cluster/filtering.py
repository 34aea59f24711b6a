"""``loss-service filter --ray``: the rule's no-reference metrics scored on Ray Data, as ``eval
--ray`` scores images (decode tasks, a pool of ``work.Scorer`` actors, Parquet rows as blocks
finish). The rows under ``--manifest`` with the suffix ``.parquet`` are the resume point of a
stopped run: ``--resume`` takes every file they (or the manifest) hold a score of each metric
the rule reads for, or an error; without it they are cleared first.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..client.curate import Rule, Scoring, ScoringFailed, check_rule_metrics
from .pipeline import check_weights_here, connect, read_rows, root_cause, stream


def rows_by_path(directory: Path, rule: Rule) -> dict[str, dict]:
    """The Parquet rows that decide a file under ``rule``: its scores of every metric the rule reads, or its error."""
    found = {}
    for row in read_rows(directory):
        scores = json.loads(row["scores"])
        if row["error"]:
            found.setdefault(row["image"], {"error": row["error"]})
        elif all(name in scores for name in rule.metrics):
            found[row["image"]] = {"scores": scores}
    return found


def on_ray(args) -> Scoring:
    """Scoring on the Ray cluster at ``args.ray`` (or a local instance)."""
    from losses import list_metrics

    from .work import Scorer

    def score(rule: Rule, files: list[Path]) -> list[dict]:
        check_rule_metrics(rule, list_metrics("image"))
        directory = Path(args.manifest).with_suffix(".parquet")
        if not args.resume:
            for stale in directory.glob("*.parquet"):
                stale.unlink()
        found = rows_by_path(directory, rule)
        keys = {path: str(path.resolve()) for path in files}
        items = [dict(model="", image=keys[path], path_sr=keys[path]) for path in files if keys[path] not in found]
        options = dict(args.options or {})
        try:
            if args.ray == "local" and not args.random_weights:
                check_weights_here(list(rule.metrics), options, args.weights_dir)
            connect(None if args.ray == "local" else args.ray)
        except (RuntimeError, ValueError, OSError) as exc:  # RayUnavailable, a missing or corrupt weight file
            raise ScoringFailed(str(exc), status=2) from None
        if items:
            arguments = dict(metrics=list(rule.metrics), options=options, weights_dir=args.weights_dir, pretrained=not args.random_weights)
            try:
                stream(items, directory, Scorer, arguments, args.ray_actors, args.ray_batch_size, not args.quiet)
            except Exception as exc:  # Ray wraps the workers' errors: the innermost one, in a line
                raise ScoringFailed(f"filter --ray stopped: {root_cause(exc)}; the rows so far are in {directory} (--resume)") from exc
            found = rows_by_path(directory, rule)
        return [found[keys[path]] for path in files]

    return score
