"""``loss-service eval``: score folders of images, sets (fid, kid) or clips through a server.

``options.py`` holds the frozen options and their parser; ``images.py``, ``sets.py`` and
``clips.py`` are the modes, each going files → scores → rows → summary; ``output.py`` writes the
CSV, the JSON, the results store and the console summary for all of them. Torch-free: it runs on
the client-only install, against a server (``--url``) or the embedded one (``service/embedded.py``).
"""

from __future__ import annotations

from .options import EvalOptions


def checked_models(options: EvalOptions, console):
    """The models' SR folders by name, or None once the refusal (a bad name, a missing folder) is said."""
    from .folders import check_folders, parse_models

    try:
        models = parse_models(options.sr)
        check_folders(models, options.references)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return None
    return models


def run(options: EvalOptions) -> int:
    """One ``eval`` run against ``options.url``; the exit status (0 all scored, 1 failures, 2 refused)."""
    from rich.console import Console

    from . import clips, images
    from .presets import IMAGE_PRESETS

    console = Console(stderr=True)
    models = checked_models(options, console)
    if models is None:
        return 2
    gt = options.references.get("gt")
    if options.preset in IMAGE_PRESETS:  # applied when the options were parsed (EvalOptions.from_arguments)
        return images.run(options, models, console)
    if gt is not None and (options.preset or clips.is_clip_dataset(gt)):  # the other presets are clip test sets
        return clips.run(options, models, console)
    return images.run(options, models, console)


__all__ = ["EvalOptions", "checked_models", "run"]
