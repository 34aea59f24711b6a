"""BasicSR's mean over clips, the one function the library and the torch-free client both use.

BasicSR's video validation averages each clip over its frames first, then the clips; the
frame-weighted mean (every frame, or pair of frames, of every clip counted once) goes beside it.
Pure Python, so ``eval`` without torch imports it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping


def dataset_means(clips: Mapping[str, Mapping]) -> dict[str, dict]:
    """``{metric: {clip_mean, frame_weighted_mean, clips}}`` over clip results: ``score_clip``'s
    dicts or ``/v1/score/clip`` answers (``per_clip``, ``per_frame``, ``temporal``; None for a
    value that was not finite, left out)."""
    means = {}
    for name in sorted({metric for clip in clips.values() for metric in clip["per_clip"]}):
        per_clip = [clip["per_clip"][name] for clip in clips.values() if clip["per_clip"].get(name) is not None]
        values = [v for clip in clips.values() for v in _values(clip, name) if v is not None]
        means[name] = dict(
            clip_mean=statistics.fmean(per_clip) if per_clip else None,
            frame_weighted_mean=statistics.fmean(values) if values else None,
            clips=len(per_clip),
        )
    return means


def _values(clip: Mapping, name: str) -> Iterable[float | None]:
    found = clip["per_frame"].get(name)
    if found is None:
        found = clip["temporal"].get(name, ())
    return (None if v is None else float(v) for v in found)
