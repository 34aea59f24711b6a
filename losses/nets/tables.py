"""The one helper behind both registries (``BACKBONES`` and the metric ``REGISTRY``)."""

from __future__ import annotations

from typing import TypeVar

Entry = TypeVar("Entry")


def add_named(table: dict, entry: Entry, kind: str) -> Entry:
    """Add ``entry`` under ``entry.name``; registering a name twice is a programming error."""
    if entry.name in table:
        raise ValueError(f"{kind} {entry.name!r} registered twice")
    table[entry.name] = entry
    return entry
