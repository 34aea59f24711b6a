"""Dataset metrics (fid, kid) in ``eval``: each set's images go to ``POST /v1/features`` in
chunks, their features are accumulated as they arrive (``losses.sets.statistics``: float64 sums
for FID, a memory-mapped file for KID) and the two sets are reduced to the values.

A GT set's accumulated features are cached by content: the key hashes every file's bytes in
order, the extractor and its weight file's sha256, so comparing five models against one GT set
extracts the GT features once, and a changed file or other weights never reuse a stale entry.
Torch-free: it runs on the client-only install.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from losses.sets.statistics import DATASET_METRICS, DatasetMetricError, FeatureFile, FeatureStats, SetFeatures

FEATURES_PER_REQUEST = 16  # images per /v1/features request: ~0.2–0.8 MB of PNG at 128²


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loss-service" / "features"


def content_digest(paths: Sequence[Path]) -> str:
    """sha256 over the files' own sha256s, in order (KID's subsets index the rows by that order)."""
    digest = hashlib.sha256()
    for path in paths:
        file_hash = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_hash.update(block)
        digest.update(file_hash.digest())
    return digest.hexdigest()


@dataclass
class FeatureCache:
    """``<key>.stats.npz`` (FID's sums) and ``<key>.f32`` (the rows, when KID needs them)."""

    directory: Path

    @staticmethod
    def key(digest: str, extractor: str, weights: dict) -> str:
        record = json.dumps(dict(content=digest, extractor=extractor, weights=weights), sort_keys=True)
        return hashlib.sha256(record.encode()).hexdigest()[:32]

    def load(self, key: str, keep_features: bool) -> SetFeatures | None:
        stats_path, rows_path = self.directory / f"{key}.stats.npz", self.directory / f"{key}.f32"
        if not stats_path.is_file() or (keep_features and not rows_path.is_file()):
            return None
        stats = FeatureStats.load(stats_path)
        stored = FeatureFile(stats.dim, rows_path) if keep_features else None
        if stored is not None and stored.count != stats.count:
            return None  # an interrupted write: recompute
        return SetFeatures(stats, stored)

    def save(self, key: str, features: SetFeatures) -> None:
        """Rows first, then the statistics: a stats file present means the entry is whole."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if features.stored is not None:
            target = self.directory / f"{key}.f32"
            partial = target.with_suffix(".f32.partial")
            with open(partial, "wb") as handle:
                handle.write(features.stored.array().tobytes())
            partial.replace(target)
        partial = self.directory / f"{key}.stats.partial.npz"
        features.stats.save(partial)
        partial.replace(self.directory / f"{key}.stats.npz")


@dataclass
class SetResult:
    features: SetFeatures
    extractor: str
    weights: dict  # the extractor's weight file record (file, sha256) from the conventions
    conventions: dict
    cached: bool = False


def extractor_options(options: dict[str, dict]) -> dict:
    """What the server's extraction depends on: the convention (one for all the set metrics)."""
    conventions = {resolved["convention"] for resolved in options.values() if "convention" in resolved}
    if len(conventions) > 1:
        raise DatasetMetricError(f"the set metrics ask for different conventions {sorted(conventions)}; score them separately")
    return {"convention": conventions.pop()} if conventions else {}


def extract_set(
    client, paths: Sequence[Path], metrics: Sequence[str], options: dict[str, dict], concurrency: int = 2, progress: bool = False
) -> SetResult:
    """Every image of one set through ``/v1/features``, accumulated in order as answers arrive."""
    keep = any(DATASET_METRICS[name].keeps(options[name]) for name in metrics)
    sent = extractor_options(options)
    chunks = [list(paths[i : i + FEATURES_PER_REQUEST]) for i in range(0, len(paths), FEATURES_PER_REQUEST)]
    collected: SetResult | None = None
    answers = client.imap(lambda chunk: client.features(chunk, list(metrics), sent), chunks, concurrency=concurrency, progress=progress)
    for answer in answers:
        if collected is None:
            record = extractor_weights(answer)
            features = SetFeatures.empty(answer["dim"], keep, extractor=answer["extractor"], weights_sha256=record.get("sha256"))
            collected = SetResult(features, answer["extractor"], record, answer["conventions"])
        collected.features.add(answer["features"])
    if collected is None:
        raise ValueError("the image set is empty")
    return collected


def extractor_weights(answer: dict) -> dict:
    """The extractor backbone's weight record in the answer's conventions (file and sha256)."""
    backbone = answer["extractor"].split(":")[0]
    return dict(answer["conventions"].get("weights", {}).get(backbone) or {})


def cached_set(
    client, paths: Sequence[Path], metrics: Sequence[str], options: dict[str, dict], cache: FeatureCache | None, probe: SetResult, **extract
) -> SetResult:
    """A set's features from ``cache`` when an entry with the same content, extractor and weights
    exists (``probe`` is another set's result from the same server: its extractor and weights)."""
    keep = any(DATASET_METRICS[name].keeps(options[name]) for name in metrics)
    key = FeatureCache.key(content_digest(paths), probe.extractor, probe.weights) if cache is not None else None
    if cache is not None and probe.weights.get("sha256") and (found := cache.load(key, keep)) is not None:
        return SetResult(found, probe.extractor, probe.weights, probe.conventions, cached=True)
    result = extract_set(client, paths, metrics, options, **extract)
    if cache is not None and result.weights.get("sha256"):  # random weights have no hash: never cached
        cache.save(key, result.features)
    return result


def reduce_sets(sr: SetFeatures, gt: SetFeatures, metrics: Sequence[str], options: dict[str, dict]) -> dict[str, float]:
    """``{"fid": …, "kid": …, "kid.std": …}`` for the requested metrics."""
    values: dict[str, float] = {}
    for name in metrics:
        values.update(DATASET_METRICS[name].reduce(sr, gt, options[name]))
    return values


def resolve_options(metrics: Sequence[str], given: dict) -> dict[str, dict]:
    """Each dataset metric's defaults overridden by the eval's ``--options`` it takes."""
    resolved = {}
    for name in metrics:
        defaults = DATASET_METRICS[name].options
        resolved[name] = {key: type(default)(given.get(key, default)) for key, default in defaults.items()}
    return resolved


def check_set_sizes(models: dict[str, list[Path]], gt_paths: list[Path], options: dict[str, dict]) -> None:
    """Refuse before any feature is extracted what the reduction would refuse after: an empty or
    one-image set, or a set smaller than KID's ``subset_size``."""
    for label, paths in [*((f"--sr {model}", p) for model, p in models.items()), ("--gt", gt_paths)]:
        if len(paths) < 2:
            raise DatasetMetricError(
                f"{label} holds {len(paths)} image(s); fid and kid compare sets of at least 2 (thousands for a stable value)"
            )
        size = options.get("kid", {}).get("subset_size")
        if size is not None and len(paths) < size:
            raise DatasetMetricError(
                f"{label} holds {len(paths)} images, fewer than KID's subset_size {size}: "
                f"lower it (--options '{{\"subset_size\": {len(paths)}}}') or score more images"
            )


def score_sets(
    client,
    models: dict[str, list[Path]],
    gt_paths: list[Path],
    metrics: Sequence[str],
    options: dict,
    cache: FeatureCache | None,
    log: Callable[[str], None] = lambda line: None,
    **extract,
) -> dict[str, dict]:
    """Per model: ``values`` (fid, kid, kid.std), the set sizes and whether the GT set came from the cache."""
    resolved = resolve_options(metrics, options)
    check_set_sizes(models, gt_paths, resolved)
    out: dict[str, dict] = {}
    gt: SetResult | None = None
    for model, paths in models.items():
        sr = extract_set(client, paths, metrics, resolved, **extract)
        if gt is None:
            gt = cached_set(client, gt_paths, metrics, resolved, cache, sr, **extract)
            log(f"gt set: {gt.features.count} images, features {'from the cache' if gt.cached else 'extracted'}")
        out[model] = dict(
            values=reduce_sets(sr.features, gt.features, metrics, resolved),
            sr_count=sr.features.count,
            gt_count=gt.features.count,
            gt_cached=gt.cached,
            options=resolved,
            extractor=sr.extractor,
            weights=sr.weights,
            kid_features="memory-mapped float32 file" if sr.features.stored is not None else None,
            conventions=sr.conventions,
        )
    return out
