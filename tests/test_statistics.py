"""FID and KID's NumPy side on its own (losses/sets/statistics.py), against independent references:
``np.cov``, SciPy's ``sqrtm``, the MMD² formula written as a double loop, and the KID subset draw
as torch-fidelity's procedure describes it. Small dimensions, so it runs in a second. (The same
functions against torch-fidelity, clean-fid and pytorch-fid on photos are in test_fid.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from losses.sets import statistics as S

DIM = 12


def rows(count: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, DIM)) @ rng.normal(size=(DIM, DIM)) * 0.3 + shift


def stats_of(features: np.ndarray, **meta) -> S.FeatureStats:
    stats = S.FeatureStats.empty(features.shape[1], **meta)
    stats.add(features)
    return stats


def test_sums_in_batches_give_numpys_mean_and_sample_covariance():
    features = rows(40, 0)
    stats = S.FeatureStats.empty(DIM)
    for start in range(0, 40, 7):
        stats.add(features[start : start + 7])
    assert stats.count == 40 and stats.dim == DIM
    np.testing.assert_allclose(stats.mean(), features.mean(axis=0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(stats.covariance(), np.cov(features, rowvar=False), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("count, says", [(0, "a set of 0 images has no covariance"), (1, "a set of 1 image has no covariance")])
def test_a_set_of_fewer_than_two_has_no_covariance(count, says):
    stats = S.FeatureStats.empty(DIM)
    if count:
        stats.add(rows(count, 1))
    with pytest.raises(S.DatasetMetricError, match=says):
        stats.covariance()


def test_merge_adds_the_sums_and_refuses_other_sizes_or_other_weights():
    a, b = rows(10, 2), rows(15, 3)
    left, right = stats_of(a, extractor="x", weights_sha256="s"), stats_of(b, extractor="x", weights_sha256="s", run="2")
    merged = left.merge(right)
    assert merged.count == 25 and left.count == 10  # a new object; the parts unchanged
    np.testing.assert_allclose(merged.covariance(), np.cov(np.vstack([a, b]), rowvar=False), rtol=1e-11, atol=1e-14)
    assert merged.meta == {"extractor": "x", "weights_sha256": "s", "run": "2"}
    with pytest.raises(S.DatasetMetricError, match=f"cannot merge {DIM - 1}-d statistics into {DIM}-d ones"):
        left.merge(stats_of(b[:, :-1]))
    with pytest.raises(S.DatasetMetricError, match=r"computed differently: \['weights_sha256'\] differ"):
        left.merge(stats_of(b, extractor="x", weights_sha256="other"))


def test_statistics_round_trip_through_a_file_and_other_files_are_refused(tmp_path):
    stats = stats_of(rows(9, 4), extractor="inception_v3_fid:pool3")
    stats.save(tmp_path / "s.npz")
    back = S.FeatureStats.load(tmp_path / "s.npz")
    assert back.count == 9 and back.meta == stats.meta
    assert np.array_equal(back.total, stats.total) and np.array_equal(back.outer, stats.outer)
    np.savez(tmp_path / "other.npz", header=np.array('{"format": "something", "version": 1}'), total=stats.total, outer=stats.outer)
    with pytest.raises(S.DatasetMetricError, match="not loss-service.feature-stats version 1 statistics"):
        S.FeatureStats.load(tmp_path / "other.npz")


def test_features_of_the_wrong_shape_or_not_finite_are_refused_by_row():
    with pytest.raises(S.DatasetMetricError, match=rf"expected features of shape \(N, {DIM}\), got \(3, 5\)"):
        S.check_features(np.zeros((3, 5)), DIM)
    bad = rows(6, 5)
    bad[4, 2], bad[5, 0] = np.nan, np.inf
    with pytest.raises(S.DatasetMetricError, match=r"2 feature row\(s\) are not finite \(first: row 4\)"):
        S.check_features(bad, DIM)
    checked = S.check_features(rows(2, 6).astype(np.float32), DIM)
    assert checked.dtype == np.float64


def test_a_feature_file_appends_float32_rows_and_reopens_with_its_count(tmp_path):
    temporary = S.FeatureFile(DIM)
    assert temporary.array().shape == (0, DIM) and temporary.array().dtype == np.float32
    features = rows(5, 7)
    kept = S.FeatureFile(DIM, tmp_path / "f.f32")
    kept.append(features[:2])
    kept.append(features[2:])
    assert kept.count == 5 and np.array_equal(kept.array(), features.astype(np.float32))
    again = S.FeatureFile(DIM, tmp_path / "f.f32")  # an existing file: its rows are counted
    assert again.count == 5 and np.array_equal(again.array(), kept.array())


def test_set_features_keep_rows_only_when_asked():
    features = rows(4, 8)
    with_rows, without = S.SetFeatures.empty(DIM, True, extractor="e"), S.SetFeatures.empty(DIM, False)
    for target in (with_rows, without):
        target.add(features)
    assert with_rows.count == without.count == 4 and without.stored is None
    assert np.array_equal(with_rows.stored.array(), features.astype(np.float32)) and with_rows.stats.meta == {"extractor": "e"}


def test_trace_sqrt_product_equals_scipy_on_full_and_deficient_rank():
    full_a, full_b = np.cov(rows(60, 9), rowvar=False), np.cov(rows(60, 10), rowvar=False)
    expected = np.trace(linalg.sqrtm(full_a @ full_b)).real
    assert S.trace_sqrt_product(full_a, full_b) == pytest.approx(expected, rel=1e-10)
    low_a, low_b = np.cov(rows(5, 11), rowvar=False), np.cov(rows(7, 12), rowvar=False)  # ranks 4 and 6 of 12
    values = np.linalg.eigvals(low_a @ low_b)
    expected = np.sqrt(np.clip(values.real, 0, None)).sum()
    assert S.trace_sqrt_product(low_a, low_b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_is_the_formula_and_needs_one_size():
    a, b = rows(50, 13), rows(50, 14, shift=0.4)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(axis=0) - b.mean(axis=0)
    expected = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(linalg.sqrtm(sigma_a @ sigma_b)).real
    assert S.frechet_distance(stats_of(a), stats_of(b)) == pytest.approx(expected, rel=1e-10)
    assert S.frechet_distance(stats_of(a), stats_of(a)) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(S.DatasetMetricError, match=f"differ in size \\({DIM} vs {DIM - 1}\\)"):
        S.frechet_distance(stats_of(a), stats_of(b[:, :-1]))


def test_trace_sqrtm_drops_a_small_imaginary_part_and_refuses_a_large_one():
    assert S.trace_sqrtm(np.diag([4.0, 9.0]), np.eye(2)) == pytest.approx(5.0, rel=1e-12)
    assert S.trace_sqrtm(np.diag([-1e-8, 1.0]), np.eye(2)) == pytest.approx(1.0, rel=1e-12)  # √ of −1e-8: 1e-4 i, dropped
    with pytest.raises(S.DatasetMetricError, match="imaginary part of 1"):
        S.trace_sqrtm(np.diag([-1.0, 1.0]), np.eye(2))


@pytest.fixture
def sqrtm_calls(monkeypatch) -> list[np.ndarray]:
    """SciPy's sqrtm replaced by one whose first root is not finite: the matrices it was given."""
    calls = []

    def sqrtm(matrix):
        calls.append(matrix.copy())
        return np.full_like(matrix, np.nan) if len(calls) == 1 else np.eye(len(matrix))

    monkeypatch.setattr(linalg, "sqrtm", sqrtm)
    return calls


def test_trace_sqrtm_retries_with_epsilon_where_the_root_is_not_finite(sqrtm_calls):
    assert S.trace_sqrtm(np.eye(3), np.eye(3) * 2, eps=1e-3) == 3.0
    np.testing.assert_allclose(sqrtm_calls[1], (np.eye(3) * (1 + 1e-3)) @ (np.eye(3) * (2 + 1e-3)))


def test_trace_sqrtm_retries_with_one_millionth_by_default(sqrtm_calls):
    S.trace_sqrtm(np.eye(2), np.eye(2))
    np.testing.assert_allclose(sqrtm_calls[1], np.eye(2) * (1 + 1e-6) ** 2, rtol=1e-15)


def mmd2_by_loops(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    """Bińkowski et al.'s unbiased MMD², term by term."""
    m = len(x)
    k = lambda u, v: (gamma * float(u @ v) + coef0) ** degree  # noqa: E731
    within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    within_y = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    between = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (within_x + within_y) / (m * (m - 1)) - 2 * between / (m * m)


@pytest.mark.parametrize("degree, gamma, coef0", [(3, None, 1.0), (2, 0.5, 0.25)])
def test_polynomial_mmd2_is_the_unbiased_estimate(degree, gamma, coef0):
    x, y = rows(6, 15), rows(6, 16, shift=0.2)
    expected = mmd2_by_loops(x, y, degree, 1.0 / DIM if gamma is None else gamma, coef0)
    assert S.polynomial_mmd2(x, y, degree, gamma, coef0) == pytest.approx(expected, rel=1e-12)


def kid_by_procedure(a: np.ndarray, b: np.ndarray, subsets: int, size: int, seed: int) -> tuple[float, float]:
    """torch-fidelity's KID: RandomState(seed); per subset a draw without replacement from a, then from b."""
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        values.append(mmd2_by_loops(x, y, 3, 1.0 / a.shape[1], 1.0))
    return float(np.mean(values)), float(np.std(values))


KID = dict(subsets=5, subset_size=6, degree=3, gamma=0.0, coef0=1.0, seed=2020, shrink_subsets=False)


def test_kid_draws_its_subsets_as_torch_fidelity_does():
    a, b = rows(9, 17), rows(11, 18, shift=0.3)
    mean, std = S.kernel_inception_distance(a, b, KID)
    expected = kid_by_procedure(a, b, 5, 6, 2020)
    assert mean == pytest.approx(expected[0], rel=1e-10) and std == pytest.approx(expected[1], rel=1e-10)
    assert S.kernel_inception_distance(a, b, dict(KID, seed=7)) != (mean, std)


def test_kid_on_a_small_set_is_refused_unless_shrunk_to_the_smaller_set():
    a, b = rows(4, 19), rows(5, 20)
    with pytest.raises(S.DatasetMetricError, match="the sr set has 4 images, fewer than KID's subset_size 6"):
        S.kernel_inception_distance(a, b, KID)
    with pytest.raises(S.DatasetMetricError, match="the gt set has 5 images, fewer than KID's subset_size 6"):
        S.kernel_inception_distance(rows(8, 21), b, KID)
    shrunk = S.kernel_inception_distance(a, b, dict(KID, shrink_subsets=True))
    expected = kid_by_procedure(a, b, 5, 4, 2020)
    assert shrunk == pytest.approx(expected, rel=1e-10)
    with pytest.raises(S.DatasetMetricError, match="subset_size must be at least 2, got 1"):
        S.kernel_inception_distance(a, b, dict(KID, subset_size=1))


def test_fid_reads_the_sums_in_the_default_convention_and_the_rows_in_the_tools_conventions():
    a, b = rows(30, 22), rows(30, 23, shift=0.5)
    sums = {side: S.SetFeatures.empty(DIM, False) for side in "ab"}
    kept = {side: S.SetFeatures.empty(DIM, True) for side in "ab"}
    for side, features in (("a", a), ("b", b)):
        sums[side].add(features)
        kept[side].add(features)
    fid = S.DATASET_METRICS["fid"]
    by_sums = fid.reduce(sums["a"], sums["b"], {"convention": "torch-fidelity"})["fid"]
    assert by_sums == pytest.approx(S.frechet_distance(stats_of(a), stats_of(b)), rel=1e-12)
    for convention, dtype in (("clean-fid", np.float32), ("pytorch-fid", np.float64)):
        rows_a, rows_b = (kept[side].stored.array().astype(dtype) for side in "ab")
        expected = S.fid_of_rows(rows_a, rows_b, dtype)
        assert fid.reduce(kept["a"], kept["b"], {"convention": convention})["fid"] == expected
        assert expected == pytest.approx(by_sums, rel=1e-5)  # float32 rows: the same distance to their precision
        with pytest.raises(S.DatasetMetricError, match=f"FID in the {convention} convention needs the sets' feature rows"):
            fid.reduce(sums["a"], sums["b"], {"convention": convention})
    with pytest.raises(S.DatasetMetricError, match="KID needs the sets' features"):
        S.DATASET_METRICS["kid"].reduce(sums["a"], sums["b"], S.DATASET_METRICS["kid"].options)
    with pytest.raises(S.DatasetMetricError, match="a set of 1 image has no covariance"):
        S.fid_of_rows(a[:1], b, np.float64)


def test_fid_of_rows_takes_the_mean_in_the_rows_dtype():
    """clean-fid keeps float32 rows: np.mean of float32 differs from the float64 mean in the last bits."""
    a, b = rows(40, 24).astype(np.float32), rows(40, 25, shift=0.1).astype(np.float32)
    mu_a, mu_b = np.mean(a, axis=0), np.mean(b, axis=0)  # float32, as clean-fid
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu_a - mu_b
    expected = diff.dot(diff) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(linalg.sqrtm(sigma_a @ sigma_b)).real
    assert S.fid_of_rows(a, b, np.float32) == pytest.approx(float(expected), rel=1e-12)


def test_each_convention_names_its_features_and_whether_it_keeps_rows():
    fid, kid = S.DATASET_METRICS["fid"], S.DATASET_METRICS["kid"]
    assert fid.extractor({}) == ("inception_v3_fid", "pool3") and not fid.keeps({})
    assert fid.extractor({"convention": "clean-fid"}) == ("inception_v3_fid", "pool3_clean_fid") and fid.keeps({"convention": "clean-fid"})
    assert fid.extractor({"convention": "pytorch-fid"})[1] == "pool3_pytorch_fid" and fid.keeps({"convention": "pytorch-fid"})
    assert kid.keeps({}) and kid.keeps({"convention": "torch-fidelity"}) and kid.lower_is_better and fid.lower_is_better
    assert kid.options["subsets"] == 100 and kid.options["subset_size"] == 1000 and kid.options["seed"] == 2020


def test_two_images_have_a_covariance_and_the_refusal_says_how_many_are_needed():
    features = rows(2, 26)
    np.testing.assert_allclose(stats_of(features).covariance(), np.cov(features, rowvar=False), rtol=1e-12, atol=1e-15)
    with pytest.raises(S.DatasetMetricError) as refused:
        stats_of(features[:1]).covariance()
    assert str(refused.value) == (
        "a set of 1 image has no covariance: FID needs at least 2 images per set (and a stable estimate needs thousands)"
    )


def test_a_statistics_file_without_meta_loads_and_pickled_arrays_are_refused(tmp_path):
    stats = stats_of(rows(3, 27))
    header = np.array('{"format": "loss-service.feature-stats", "version": 1, "count": 3}')
    np.savez(tmp_path / "plain.npz", header=header, total=stats.total, outer=stats.outer)
    assert S.FeatureStats.load(tmp_path / "plain.npz").meta == {}
    np.savez(tmp_path / "pickled.npz", header=header, total=np.array([object()] * DIM, dtype=object), outer=stats.outer)
    with pytest.raises(ValueError, match="allow_pickle"):
        S.FeatureStats.load(tmp_path / "pickled.npz")


def test_the_refusal_of_broken_features_says_what_is_broken():
    bad = rows(3, 28)
    bad[1, 1] = np.nan
    with pytest.raises(S.DatasetMetricError) as refused:
        S.check_features(bad, DIM)
    assert str(refused.value) == "1 feature row(s) are not finite (first: row 1); the extractor's weights or the images are broken"


def test_feature_files_are_named_for_the_project_and_read_back_read_only(tmp_path):
    from pathlib import Path

    temporary = S.FeatureFile(DIM)
    assert Path(temporary.path).name.startswith("loss-service-features-") and temporary.path.suffix == ".f32"
    temporary.append(rows(2, 29))
    assert not temporary.array().flags.writeable
    placed = S.SetFeatures.empty(DIM, True, tmp_path / "kept.f32")
    assert placed.stored.path == tmp_path / "kept.f32"


def test_trace_sqrt_product_leaves_out_the_rounding_noise_of_a_rank_deficient_covariance():
    """200-d covariances of 10 and 14 images: tr√(ΣaΣb) is the sum of the singular values of
    Xa·Xbᵀ (the centred rows over √(n − 1)), exact and well conditioned; the ~190 noise eigenvalues
    of each 200 × 200 covariance must not add their square roots."""
    rng = np.random.default_rng(30)
    a, b = rng.normal(size=(10, 200)), rng.normal(size=(14, 200)) + 0.1
    xa, xb = (a - a.mean(axis=0)) / np.sqrt(9), (b - b.mean(axis=0)) / np.sqrt(13)
    expected = np.linalg.svd(xa @ xb.T, compute_uv=False).sum()
    got = S.trace_sqrt_product(np.cov(a, rowvar=False), np.cov(b, rowvar=False))
    assert got == pytest.approx(expected, rel=1e-9)


def test_without_scipy_the_tools_conventions_say_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(S.DatasetMetricError) as refused:
        S.trace_sqrtm(np.eye(2), np.eye(2))
    assert str(refused.value) == "the clean-fid and pytorch-fid conventions take √ with SciPy, as those tools do: pip install scipy"


def test_kid_shrinks_by_the_sets_sizes_never_by_the_feature_size():
    """Features of 3 values and sets of 8 and 9 images: the subset size is compared with the image counts."""
    rng = np.random.default_rng(31)
    a, b = rng.normal(size=(8, 3)), rng.normal(size=(9, 3)) + 0.2
    options = dict(KID, subset_size=6, shrink_subsets=True)
    assert S.kernel_inception_distance(a, b, options) == pytest.approx(kid_by_procedure(a, b, 5, 6, 2020), rel=1e-10)
    small_a, small_b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    expected = kid_by_procedure(small_a, small_b, 5, 4, 2020)
    assert S.kernel_inception_distance(small_a, small_b, options) == pytest.approx(expected, rel=1e-10)


def test_kid_takes_subsets_of_two_and_its_refusal_names_the_size_to_use():
    a, b = rows(3, 32), rows(3, 33)
    assert S.kernel_inception_distance(a, b, dict(KID, subset_size=2)) == pytest.approx(kid_by_procedure(a, b, 5, 2, 2020), rel=1e-10)
    with pytest.raises(S.DatasetMetricError) as refused:
        S.kernel_inception_distance(rows(4, 34), rows(9, 35), KID)
    assert str(refused.value) == (
        'the sr set has 4 images, fewer than KID\'s subset_size 6: lower it (options {"subset_size": 4}), '
        'shrink it as clean-fid does (options {"shrink_subsets": true}) or score more images'
    )


def test_kid_uses_its_gamma_and_float64_on_float32_rows():
    a, b = rows(8, 36).astype(np.float32), rows(8, 37, shift=0.2).astype(np.float32)
    options = dict(KID, subset_size=8, subsets=1, gamma=0.5)
    rng = np.random.RandomState(2020)
    x, y = a[rng.choice(8, 8, replace=False)].astype(np.float64), b[rng.choice(8, 8, replace=False)].astype(np.float64)
    expected = mmd2_by_loops(x, y, 3, 0.5, 1.0)
    assert S.kernel_inception_distance(a, b, options)[0] == pytest.approx(expected, rel=1e-12)


def test_kid_reduces_the_kept_rows_of_both_sets():
    a, b = rows(9, 38), rows(10, 39, shift=0.3)
    sides = [S.SetFeatures.empty(DIM, True), S.SetFeatures.empty(DIM, True)]
    for side, features in zip(sides, (a, b)):
        side.add(features)
    options = dict(S.DATASET_METRICS["kid"].options, subsets=4, subset_size=5)
    got = S.DATASET_METRICS["kid"].reduce(*sides, options)
    mean, std = S.kernel_inception_distance(a.astype(np.float32), b.astype(np.float32), options)
    assert got == {"kid": mean, "kid.std": std}
    summed = S.SetFeatures.empty(DIM, False)
    summed.add(b)
    for pair in ((sides[0], summed), (summed, sides[1])):  # either side without its rows
        with pytest.raises(S.DatasetMetricError) as refused:
            S.DATASET_METRICS["kid"].reduce(*pair, options)
        assert str(refused.value) == "KID needs the sets' features, which were not kept (keep_features=False)"


def test_fid_in_a_tools_convention_refuses_when_either_side_lacks_rows():
    a, b = rows(6, 40), rows(6, 41)
    kept, summed = S.SetFeatures.empty(DIM, True), S.SetFeatures.empty(DIM, False)
    kept.add(a)
    summed.add(b)
    for pair in ((kept, summed), (summed, kept)):
        with pytest.raises(S.DatasetMetricError, match="needs the sets' feature rows"):
            S.DATASET_METRICS["fid"].reduce(*pair, {"convention": "clean-fid"})


def test_fid_of_rows_takes_sets_of_two_and_refuses_one_on_either_side():
    a, b = rows(2, 42), rows(2, 43)
    assert np.isfinite(S.fid_of_rows(a, b, np.float64))
    for pair in ((a[:1], b), (a, b[:1])):
        with pytest.raises(S.DatasetMetricError) as refused:
            S.fid_of_rows(*pair, np.float64)
        assert str(refused.value) == "a set of 1 image has no covariance: FID needs at least 2 images per set"
