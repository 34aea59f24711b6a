"""``loss-service filter``: keep the images of a folder (or a list of files) whose no-reference
scores pass a rule such as ``niqe < 5 and clipiqa > 0.6``, and write a manifest of every file:
kept, dropped, or unreadable with its error.

The rule is parsed, never evaluated as Python: comparisons of a metric with a number (``<``,
``<=``, ``>``, ``>=``, ``==``, ``!=``, either side), joined by ``and``, ``or``, ``not`` and
parentheses. A file whose scores are not finite fails every comparison (it is dropped, with the
value in the manifest). The manifest is the resume point: a file it holds as kept or dropped,
with a score for every metric the rule reads, is not scored again but decided anew under the
rule given now (a changed threshold needs no rescoring); any other file is scored. The metric
options must be those of the run that wrote the manifest.

Torch-free: it scores through a server (``--url``) or the embedded one; ``--ray`` scores on Ray
(service/cluster/filtering.py).
"""

from __future__ import annotations

import csv
import json
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import LossServiceError
from .eval.folders import IMAGE_SUFFIXES
from .sync import LossClient

COMPARISONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
TOKEN = re.compile(
    r"\s*(?:(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>)|(?P<paren>[()])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
KEPT, DROPPED, UNREADABLE = "kept", "dropped", "unreadable"


class RuleError(ValueError):
    """A rule that does not parse, or reads metrics a rule cannot; the message says where."""


class ScoringFailed(RuntimeError):
    """The scoring itself stopped or could not start (not one file's failure: a cluster that cannot
    be reached, a missing weight file); the message says why, ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Rule:
    """A parsed ``--keep`` rule: ``test(scores)`` decides; ``metrics`` are the names it reads."""

    text: str
    metrics: tuple[str, ...]
    test: Callable[[dict[str, float | None]], bool]


def tokens_of(text: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip():
                raise RuleError(f"--keep {text!r}: cannot read {text[position:].strip()[:20]!r} at character {position + 1}")
            break
        kind = match.lastgroup
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


def parse_rule(text: str) -> Rule:
    """``expr := term ("or" term)*; term := factor ("and" factor)*;
    factor := "not" factor | "(" expr ")" | NAME OP NUMBER | NUMBER OP NAME``."""
    items = tokens_of(text)
    position = 0
    metrics: list[str] = []

    def peek() -> tuple[str, str] | None:
        return items[position] if position < len(items) else None

    def take(kind: str, value: str | None = None) -> str:
        nonlocal position
        item = peek()
        if item is None or item[0] != kind or (value is not None and item[1] != value):
            where = f"{item[1]!r}" if item else "the end"
            raise RuleError(f"--keep {text!r}: expected {value or kind} at {where}")
        position += 1
        return item[1]

    def expr():
        parts = [term()]
        while peek() == ("word", "or"):
            take("word", "or")
            parts.append(term())
        return parts[0] if len(parts) == 1 else (lambda scores: any(part(scores) for part in parts))

    def term():
        parts = [factor()]
        while peek() == ("word", "and"):
            take("word", "and")
            parts.append(factor())
        return parts[0] if len(parts) == 1 else (lambda scores: all(part(scores) for part in parts))

    def factor():
        item = peek()
        if item == ("word", "not"):
            take("word", "not")
            inner = factor()
            return lambda scores: not inner(scores)
        if item == ("paren", "("):
            take("paren", "(")
            inner = expr()
            take("paren", ")")
            return inner
        if item is not None and item[0] == "number":
            number = float(take("number"))
            op = MIRRORED[take("op")]
            name = take("word")
        else:
            name = take("word")
            op = take("op")
            number = float(take("number"))
        if name in ("and", "or", "not"):
            raise RuleError(f"--keep {text!r}: expected a metric name, found {name!r}")
        metrics.append(name)
        compare = COMPARISONS[op]

        def comparison(scores: dict[str, float | None]) -> bool:
            value = scores.get(name)
            return value is not None and math.isfinite(value) and compare(value, number)

        return comparison

    if not items:
        raise RuleError("--keep is empty: give a rule such as 'niqe < 5 and clipiqa > 0.6'")
    test = expr()
    if position != len(items):
        raise RuleError(f"--keep {text!r}: unexpected {items[position][1]!r}")
    return Rule(text, tuple(dict.fromkeys(metrics)), test)


def image_files(paths: Iterable[str], files_from: str | None) -> list[Path]:
    """The images of the given folders (not recursive, hidden files left out) and files, and the
    files listed one per line in ``files_from``; each once, in the order given."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    if files_from:
        with open(files_from, encoding="utf-8") as handle:
            found += [Path(line.strip()) for line in handle if line.strip()]
    return list(dict.fromkeys(found))


def read_manifest(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def reusable_scores(manifest: dict[str, dict], rule: Rule) -> dict[str, dict[str, float | None]]:
    """The scores a manifest holds for every metric ``rule`` reads, by path: files that were read
    (kept or dropped) under any rule; an empty cell is a value that was not finite."""
    return {
        path: {name: float(row[name]) if row[name] not in ("", "None") else None for name in rule.metrics}
        for path, row in manifest.items()
        if row["decision"] in (KEPT, DROPPED) and all(name in row for name in rule.metrics)
    }


def decided(path: Path, rule: Rule, scores: dict[str, float | None]) -> dict:
    """A manifest row: the decision under ``rule`` and the scores it read."""
    decision = KEPT if rule.test(scores) else DROPPED
    return dict(path=str(path), decision=decision, error="", **{name: scores.get(name) for name in rule.metrics})


def check_rule_metrics(rule: Rule, catalogue: list[dict]) -> None:
    """A rule reads no-reference image metrics of ``catalogue`` (the server's, or the library's)."""
    entries = {entry["name"]: entry for entry in catalogue}
    problems = [name for name in rule.metrics if name not in entries or entries[name].get("needs", ["sr"]) != ["sr"]]
    if problems:
        usable = sorted(name for name, entry in entries.items() if entry.get("needs") == ["sr"] and entry.get("kind", "image") == "image")
        raise RuleError(f"--keep reads {problems}: a rule reads no-reference image metrics ({', '.join(usable)})")


# How the files get scored: (rule, files) → per file {"scores": {...}} or {"error": "..."}, in order.
Scoring = Callable[[Rule, list[Path]], list[dict]]


def through_servers(args, urls: list[str]) -> Scoring:
    """Scoring by the servers at ``urls`` (``--concurrency`` requests in flight)."""

    def score(rule: Rule, files: list[Path]) -> list[dict]:
        with LossClient(urls, api_key=args.api_key, timeout=args.timeout) as client:
            check_rule_metrics(rule, client.metrics())
            outcomes = client.imap(
                lambda path: client.score(path, metrics=list(rule.metrics), **(args.options or {})),
                files,
                concurrency=args.concurrency,
                progress=not args.quiet,
                return_exceptions=True,
                total=len(files),
            )
            return [{"error": str(outcome)} if isinstance(outcome, (LossServiceError, OSError)) else outcome for outcome in outcomes]

    return score


def run_filter(args, score: Scoring) -> int:
    """Score, decide and write the manifest; the exit status is 1 where a file could not be read."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        rule = parse_rule(args.keep)
    except RuleError as exc:
        console.print(str(exc), markup=False, style="red")
        return 2
    manifest = Path(args.manifest)
    done = reusable_scores(read_manifest(manifest), rule) if args.resume else {}
    files = image_files(args.paths, args.files_from)
    todo = [path for path in files if str(path) not in done]
    rows = {str(path): decided(path, rule, done[str(path)]) for path in files if str(path) in done}
    try:
        outcomes = score(rule, todo)
    except (RuleError, ScoringFailed) as exc:
        console.print(str(exc), markup=False, style="red")
        return exc.status if isinstance(exc, ScoringFailed) else 2
    for path, outcome in zip(todo, outcomes, strict=True):
        if "error" in outcome:
            rows[str(path)] = dict(path=str(path), decision=UNREADABLE, error=outcome["error"])
        else:
            rows[str(path)] = decided(path, rule, outcome["scores"])
    ordered = [rows[str(path)] for path in files]
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["path", "decision", *rule.metrics, "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ordered)
    counts = {decision: sum(row["decision"] == decision for row in ordered) for decision in (KEPT, DROPPED, UNREADABLE)}
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rule=rule.text, metrics=list(rule.metrics), files=len(ordered), **counts), indent=2))
    for row in ordered:
        if row["decision"] == UNREADABLE:
            console.print(f"{row['path']}: {row['error']}", markup=False, style="red")
    console.print(
        f"kept {counts[KEPT]}, dropped {counts[DROPPED]}, unreadable {counts[UNREADABLE]} of {len(ordered)} "
        f"({len(done)} from the manifest) → {manifest}"
    )
    return 1 if counts[UNREADABLE] else 0
