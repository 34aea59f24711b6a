"""``eval --ray`` of a dataset of clips (REDS4, Vid4, Vimeo-90K-T's layout, folders of videos):
one work item per (model, clip) naming its files; a pool of ``work.ClipScorer`` actors reads and
scores each clip as the server's ``/v1/score/clip`` does (frames decoded in the actor: a clip is
one unit of work, its frames never cross the object store); each answer goes to Parquet as its
block finishes. The JSON, the frames CSV and the store are then written by ``eval``'s clip code
(``client/eval/clips.py``), so ``report`` reads them alike. ``--resume`` skips the clips the
Parquet rows or an earlier JSON hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..client.eval import clips as clip_eval
from ..client.eval.options import EvalOptions


def paths_of(clip: list[Path] | Path) -> str:
    """A clip's files as the actor reads them: its frames in order, or the one video file."""
    return json.dumps([str(path.resolve()) for path in clip] if isinstance(clip, list) else [str(clip.resolve())])


def run(options: EvalOptions, models: dict[str, Path], console, weights_dir: str | None, random_weights: bool) -> int:
    """The exit status, as ``eval``'s clip mode gives it (0 all scored, 1 failures or missing clips, 2 refused)."""
    import losses

    from .pipeline import check_weights_here, connect, has_rows, parquet_dir, read_rows, root_cause, stream
    from .work import ClipScorer

    clip_run = clip_eval.prepare(options, models, console)
    if clip_run is None:
        return 2
    names = clip_run.metrics.split(",")
    directory = parquet_dir(options)
    if not options.resume and directory.exists() and has_rows(directory):
        console.print(f"[red]{directory} holds rows of an earlier run: pass --resume to add to them, or remove it[/red]")
        return 2
    written = {(row["model"], row["clip"]) for row in read_rows(directory) if not row["error"]} if options.resume else set()
    todo = {(model, name): sr for model, name, sr, gt in clip_run.todo()}
    items = [
        dict(model=model, clip=name, sr=paths_of(sr), gt=paths_of(gt))
        for model, name, sr, gt in clip_run.todo()
        if (model, name) not in written
    ]
    try:
        if options.ray == "local" and not random_weights:
            check_weights_here(names, clip_run.metric_options, weights_dir)
        connect(None if options.ray == "local" else options.ray)
    except (RuntimeError, ValueError, OSError) as exc:  # RayUnavailable, a missing or corrupt weight file
        console.print(f"[red]{exc}[/red]")
        return 2
    arguments = dict(metrics=names, options=clip_run.metric_options, weights_dir=weights_dir, pretrained=not random_weights)
    try:
        if items:
            stream(items, directory, ClipScorer, arguments, options.ray_actors, 1, not options.quiet, decode=False)
    except Exception as exc:  # Ray wraps the workers' errors: say the innermost one in a line
        console.print(f"[red]eval --ray stopped: {root_cause(exc)}; the rows written so far are in {directory} (--resume)[/red]")
        return 1
    clip_run.conventions = clip_run.conventions or losses.conventions(names, **clip_run.metric_options)
    said = set()
    for row in sorted(read_rows(directory), key=lambda r: (r["model"], r["clip"], bool(r["error"]))):  # a success before a failure
        key = (row["model"], row["clip"])
        if key not in todo or key in said:  # not asked for now; scored again after a failure (--resume)
            continue
        said.add(key)
        if row["error"]:
            clip_run.failures[row["model"]].append(dict(clip=row["clip"], status=422, message=row["error"]))
            console.print(f"[red]{row['model']} / {row['clip']}: {row['error']}[/red]")
        else:
            clip_run.add(row["model"], row["clip"], json.loads(row["answer"]), todo[key])
    return clip_eval.finish(clip_run, models, console)
