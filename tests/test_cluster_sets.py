"""The driver's half of ``eval --ray`` for fid/kid, without Ray: blocks of feature rows arriving in
any order, twice, or after a failure, merge into one pass's statistics and rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losses.sets.statistics import FeatureStats
from service.cluster.sets import Merged

META = dict(extractor="inception_v3_fid:pool3", weights_sha256="ab")


def block(paths: list[Path], features: np.ndarray, places: list[int], error: str = "") -> list[dict]:
    return [
        dict(
            side="sr",
            model="m",
            path=str(paths[i].resolve()),
            features=b"" if error else features[i].astype("<f4").tobytes(),
            error=error,
            **META,
        )
        for i in places
    ]


def test_blocks_in_any_order_merge_to_one_pass(tmp_path):
    paths = [tmp_path / f"{i:03d}.png" for i in range(7)]
    features = np.random.default_rng(0).normal(size=(7, 16)).astype(np.float32)
    merged = Merged({("sr", "m"): paths}, keep=True, scratch=tmp_path)
    merged.add_block(block(paths, features, [5, 6], error="sr: truncated PNG"))  # failed, then extracted on --resume
    for places in ([4, 2], [6, 5, 0], [1, 3], [2]):  # out of order; image 2 written twice (a retried block)
        merged.add_block(block(paths, features, places))
    one_pass = FeatureStats.empty(16)
    one_pass.add(features.astype(np.float64))
    got = merged.features(("sr", "m"))
    assert got.count == 7 and merged.failures(("sr", "m")) == {}
    np.testing.assert_allclose(got.stats.total, one_pass.total, rtol=1e-13)
    np.testing.assert_allclose(got.stats.outer, one_pass.outer, rtol=1e-13, atol=1e-13)
    assert np.array_equal(got.stored.array(), features)  # KID's rows in file-name order, bit for bit
    assert got.stats.meta == META


def test_an_image_without_features_is_named_with_its_error(tmp_path):
    paths = [tmp_path / f"{i:03d}.png" for i in range(4)]
    features = np.ones((4, 8), np.float32)
    merged = Merged({("sr", "m"): paths}, keep=False, scratch=tmp_path)
    merged.add_block(block(paths, features, [0, 1]))
    merged.add_block(block(paths, features, [2], error="sr: not a decodable image"))
    failures = merged.failures(("sr", "m"))
    assert failures[str(paths[2].resolve())] == "sr: not a decodable image"
    assert failures[str(paths[3].resolve())].startswith("no features: the run stopped")
    assert len(failures) == 2
