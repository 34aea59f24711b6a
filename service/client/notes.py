"""Per-image warnings of an eval run, grouped: one line per distinct warning with the images that
earned it (a NIQE flat-block warning names its images; a warning every image earned is one line)."""

from __future__ import annotations

from collections.abc import Iterable

SHOWN_IMAGES = 3


def grouped_warnings(results: Iterable[dict]) -> list[str]:
    """``results``: ``{"image": name, "warnings": [...]}`` rows, as eval writes them."""
    images: dict[str, list[str]] = {}
    for row in results:
        for warning in row.get("warnings") or ():
            images.setdefault(warning, []).append(row["image"])
    lines = []
    for warning, names in images.items():
        shown = ", ".join(names[:SHOWN_IMAGES]) + (" …" if len(names) > SHOWN_IMAGES else "")
        lines.append(f"{warning} ({len(names)} image{'s' if len(names) != 1 else ''}: {shown})")
    return lines
