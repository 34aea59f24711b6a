"""A results store: every score ``eval`` (``--store``) computes, in one SQLite file (the standard
library's ``sqlite3``), keyed by model, checkpoint, step, dataset, scale, image, metric and the
hash of the conventions record the server returned. The whole record is kept once per hash.

Safe under concurrent writers: WAL journal, a busy timeout, one transaction per batch of rows.
A file that is not SQLite, or an SQLite database of another application, is refused with a
clear error before anything is written to it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

APPLICATION = "loss-service results"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000  # a writer waits this long for another's transaction
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conventions (hash TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,
    checkpoint TEXT NOT NULL DEFAULT '',
    step INTEGER NOT NULL DEFAULT -1,
    dataset TEXT NOT NULL DEFAULT '',
    scale INTEGER NOT NULL DEFAULT 0,
    image TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    conventions_hash TEXT NOT NULL REFERENCES conventions(hash),
    written TEXT NOT NULL,
    PRIMARY KEY (model, checkpoint, step, dataset, scale, image, metric, conventions_hash)
);
"""


class StoreError(RuntimeError):
    """The file cannot be used as a results store; the message says why and what to do."""


def conventions_hash(record: dict) -> str:
    """The hash of a conventions record without its date: equal for every number computed alike."""
    undated = {key: value for key, value in record.items() if key != "date"}
    return hashlib.sha256(json.dumps(undated, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Row:
    """One stored value (``value`` None where the score was not finite)."""

    model: str
    dataset: str
    scale: int
    image: str
    metric: str
    value: float | None
    conventions_hash: str
    checkpoint: str = ""
    step: int = -1


class ResultsStore:
    """``with ResultsStore(path) as store: store.add(rows, conventions)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._check_and_create()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a loss-service results store ({exc}); nothing was written to it") from None

    def _check_and_create(self) -> None:
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise StoreError(
                f"{self.path}: an SQLite database of another application (tables {sorted(tables)}); "
                "give --store a new file or a loss-service results store; nothing was written to it"
            )
        if tables:
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
            if meta.get("application") != APPLICATION:
                raise StoreError(f"{self.path}: an SQLite database of another application; nothing was written to it")
            if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written by a newer loss-service (schema {meta['schema_version']}); upgrade to read it")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        with self.transaction():
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(statement)
            self.db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('application', ?), ('schema_version', ?)", (APPLICATION, str(SCHEMA_VERSION))
            )

    def transaction(self):
        """One write transaction, taken at once (BEGIN IMMEDIATE): concurrent writers queue, none fails midway."""
        return _Transaction(self.db)

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def add(self, rows: Iterable[Row], conventions: dict) -> int:
        """Store ``rows`` and their conventions record in one transaction; a row stored before under
        the same key is replaced. Returns how many rows were written."""
        digest = conventions_hash(conventions)
        written = datetime.now(UTC).isoformat(timespec="seconds")
        values = [
            (r.model, r.checkpoint, r.step, r.dataset, r.scale, r.image, r.metric, r.value, r.conventions_hash, written) for r in rows
        ]
        if any(value[8] != digest for value in values):
            raise ValueError("every row of one add() carries the hash of the conventions record given with it")
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO conventions VALUES (?, ?)", (digest, json.dumps(conventions, sort_keys=True)))
            self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return len(values)

    def scored_images(self, model: str, dataset: str, scale: int, metrics: Iterable[str]) -> set[str]:
        """The images of ``model`` on ``dataset`` × ``scale`` that have a stored value for every one of ``metrics``."""
        wanted = sorted(set(metrics))
        marks = ",".join("?" * len(wanted))
        query = (
            f"SELECT image FROM results WHERE model = ? AND dataset = ? AND scale = ? AND metric IN ({marks}) "
            f"GROUP BY image HAVING COUNT(DISTINCT metric) = ?"
        )
        return {image for (image,) in self.db.execute(query, (model, dataset, scale, *wanted, len(wanted)))}

    def rows(self) -> list[Row]:
        query = "SELECT model, dataset, scale, image, metric, value, conventions_hash, checkpoint, step FROM results"
        return [Row(*values) for values in self.db.execute(query)]

    def conventions(self) -> dict[str, dict]:
        return {digest: json.loads(record) for digest, record in self.db.execute("SELECT hash, record FROM conventions")}


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
