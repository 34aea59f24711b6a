"""``eval --ray`` of the set metrics (fid, kid): every image of each model's SR set and of the GT
set goes through an extractor actor (``work.Extractor``); its feature rows go to Parquet under
``sets/`` as blocks finish. The driver then reads one Parquet file at a time: each block's rows
become a ``FeatureStats`` that merges into its set's (FID's float64 sums, equal to one pass up to
the order of the additions), and where the metrics need the rows themselves (KID; FID in the
clean-fid and pytorch-fid conventions) they are written at their places in a memory-mapped float32
file, in the set's file-name order, so KID's subsets draw the rows a one-pass run draws.

A set with an image that could not be read gets no value (a set less one image is another set):
the image is named with its error. ``--resume`` extracts only the images the Parquet lacks.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from losses.sets.statistics import DATASET_METRICS, FeatureFile, FeatureStats, SetFeatures

from ..client.datasets import reduce_sets, resolve_options
from ..client.eval.folders import set_paths
from .pipeline import read_rows

GT = ("gt", "")


def listings(models: dict[str, Path], gt: Path, suffix: str) -> dict[tuple[str, str], list[Path]]:
    """Each set's files in file-name order, keyed (side, model): the models' SR sets and the GT set."""
    return {("sr", name): set_paths(directory, suffix) for name, directory in models.items()} | {GT: set_paths(gt, "")}


def extracted(directory: Path) -> set[tuple[str, str, str]]:
    """(side, model, path) of every image the Parquet holds features for (not its failures)."""
    return {(row["side"], row["model"], row["path"]) for row in read_rows(directory) if not row["error"]}


def set_items(sets: dict[tuple[str, str], list[Path]], done: set[tuple[str, str, str]]) -> list[dict]:
    items = []
    for (side, model), paths in sets.items():
        for path in paths:
            if (side, model, str(path.resolve())) not in done:
                items.append(dict(side=side, model=model, image=path.name, path_sr=str(path.resolve())))
    return items


class Merged:
    """The sets' merged statistics and, where kept, their rows in a scratch folder; the images
    that failed (path → error) and the ones with no row at all."""

    def __init__(self, sets: dict[tuple[str, str], list[Path]], keep: bool, scratch: Path):
        self.sets, self.keep, self.scratch = sets, keep, scratch
        self.places = {key: {str(path.resolve()): i for i, path in enumerate(paths)} for key, paths in sets.items()}
        self.stats: dict[tuple[str, str], FeatureStats] = {}
        self.rows: dict[tuple[str, str], np.memmap] = {}
        self.seen: dict[tuple[str, str], set[int]] = defaultdict(set)
        self.errors: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        self.meta: dict = {}

    def add_block(self, rows: list[dict]) -> None:
        """One Parquet file's rows: each set's part becomes a FeatureStats merged into the set's."""
        parts: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = defaultdict(list)
        for row in rows:
            key = (row["side"], row["model"])
            place = self.places.get(key, {}).get(row["path"])
            if place is None or place in self.seen[key]:  # a file no longer listed; a row written twice
                continue
            if row["error"]:
                self.errors[key].setdefault(row["path"], row["error"])
                continue
            self.seen[key].add(place)
            parts[key].append((place, np.frombuffer(row["features"], "<f4")))
            self.meta = dict(extractor=row["extractor"], weights_sha256=row["weights_sha256"])
        for key, part in parts.items():
            part.sort(key=lambda entry: entry[0])
            features = np.stack([values for _, values in part])
            stats = FeatureStats.empty(features.shape[1], **self.meta)
            stats.add(features)
            self.stats[key] = self.stats[key].merge(stats) if key in self.stats else stats
            if self.keep:
                self._place(key, [place for place, _ in part], features)

    def _place(self, key: tuple[str, str], places: list[int], features: np.ndarray) -> None:
        if key not in self.rows:
            path = self.scratch / f"{key[0]}-{len(self.rows)}.f32"
            self.rows[key] = np.memmap(path, "<f4", mode="w+", shape=(len(self.sets[key]), features.shape[1]))
        self.rows[key][places] = features

    def failures(self, key: tuple[str, str]) -> dict[str, str]:
        """The set's images without features: path → the error (or why there is no row)."""
        errors = self.errors[key]
        return {
            str(path.resolve()): errors.get(str(path.resolve()), "no features: the run stopped before it (--resume)")
            for place, path in enumerate(self.sets[key])
            if place not in self.seen[key]
        }

    def features(self, key: tuple[str, str]) -> SetFeatures:
        stored = None
        if self.keep:
            self.rows[key].flush()
            stored = FeatureFile(self.stats[key].dim, self.rows[key].filename)
        return SetFeatures(self.stats[key], stored)


def merge(directory: Path, sets: dict[tuple[str, str], list[Path]], keep: bool, scratch: Path) -> Merged:
    """Every Parquet file under ``directory``, one at a time (memory: one block's rows)."""
    import pyarrow.parquet as pq

    merged = Merged(sets, keep, scratch)
    for path in sorted(directory.glob("*.parquet")) if directory.exists() else ():
        try:
            rows = pq.read_table(path).to_pylist()
        except OSError:  # cut short by a stopped driver: those images are extracted again
            path.unlink()
            continue
        merged.add_block(rows)
    return merged


def score_sets(options, models: dict[str, Path], metrics: list[str], given: dict, directory: Path, scored, extract) -> list[str]:
    """fid/kid of every model's SR set against the GT set on Ray: the values into ``scored.sets``,
    an unreadable image into ``scored.failures``; returns the lines to say (what failed)."""
    import tempfile

    import losses

    resolved = resolve_options(metrics, given)
    sets = listings(models, Path(options.references["gt"]), options.sr_suffix)
    items = set_items(sets, extracted(directory) if options.resume else set())
    if items:
        extract(items, directory, resolved)
    keep = any(DATASET_METRICS[name].keeps(resolved[name]) for name in metrics)
    record = losses.conventions(metrics, **given)
    said = []
    with tempfile.TemporaryDirectory(prefix="loss-service-sets-") as scratch:
        merged = merge(directory, sets, keep, Path(scratch))
        gt_failed = merged.failures(GT)
        for model in models:
            failed = {**merged.failures(("sr", model)), **gt_failed}
            if failed:
                for path, error in failed.items():
                    scored.failures[model].append(dict(image=path, status=422, message=f"{', '.join(metrics)}: {error}", detail=error))
                said.append(f"{', '.join(metrics)} of {model}: no value, {len(failed)} image(s) without features")
                continue
            sr, gt = merged.features(("sr", model)), merged.features(GT)
            scored.sets[model] = dict(
                values=reduce_sets(sr, gt, metrics, resolved),
                sr_count=sr.count,
                gt_count=gt.count,
                gt_cached=False,
                options=resolved,
                extractor=merged.meta["extractor"],
                weights=dict(record["weights"].get(merged.meta["extractor"].split(":")[0], {}), sha256=merged.meta["weights_sha256"]),
                kid_features="memory-mapped float32 file" if keep else None,
            )
    return said
