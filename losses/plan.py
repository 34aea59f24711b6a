"""A scoring request planned once: the registry entries of the asked metrics, the options as
asked, and each metric's resolved options. ``score``, ``score_clip``, ``dataset_score``, the
server and ``score --local`` take a plan; nothing after ``make_plan`` looks a metric up again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from losses.registry import KINDS, Metric, get_metrics, resolve_options


@dataclass(frozen=True, eq=False)
class Plan:
    """Metrics and options, resolved. Plans with equal ``key`` score alike (the server batches them)."""

    metrics: tuple[Metric, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    resolved: Mapping[str, dict] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(metric.name for metric in self.metrics)

    def of_kind(self, kind: str) -> tuple[Metric, ...]:
        return tuple(metric for metric in self.metrics if metric.kind == kind)

    def backbones(self) -> set[str]:
        return {name for metric in self.metrics for name in metric.backbones(self.resolved[metric.name])}

    @cached_property
    def key(self) -> tuple:
        return self.names, json.dumps(self.resolved, sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def make_plan(metrics: Sequence[str] | str, options: Mapping[str, Any] | None = None, kinds: Sequence[str] = ("image",)) -> Plan:
    """Look ``metrics`` up (of the given kinds) and resolve ``options`` against them: the one lookup."""
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"unknown metric kind(s) {sorted(unknown)}; kinds are {KINDS}")
    options = dict(options or {})
    chosen = tuple(get_metrics([metrics] if isinstance(metrics, str) else list(metrics), kinds=tuple(kinds)))
    return Plan(chosen, options, resolve_options(chosen, options))
