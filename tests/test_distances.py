"""MMD and Fréchet distance: against brute force and scipy, on singular data, and the bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from analysis.errors import PipelineError
from analysis.similarity import distances as dist


def gaussian(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return rng.normal(size=(n, d)) @ mixing * scale + shift


def scipy_fd(x, y):
    """The common reference implementation: scipy's general matrix square root of S_C S_D."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def fd_of(x, y):
    a, b = dist.compute_moments(x, blocks=5), dist.compute_moments(y, blocks=5)
    return dist.frechet_distance(a.mean, a.cov, b.mean, b.cov)


def test_mmd_equals_brute_force_biased_linear_kernel_mmd():
    x, y = gaussian(300, 8, 0), gaussian(200, 8, 1, shift=0.3)
    brute = (x @ x.T).mean() + (y @ y.T).mean() - 2 * (x @ y.T).mean()
    assert dist.mmd_linear(x.mean(0), y.mean(0)) == pytest.approx(brute, rel=1e-10)


def test_fd_matches_scipy_sqrtm_on_well_conditioned_data():
    x, y = gaussian(4000, 24, 0), gaussian(3000, 24, 1, shift=0.2, scale=1.3)
    assert fd_of(x, y) == pytest.approx(scipy_fd(x, y), rel=1e-6)


def test_fd_is_finite_and_real_on_rank_deficient_data():
    x, y = gaussian(10, 40, 0), gaussian(15, 40, 1, shift=0.5)  # n < d: singular covariances
    value = fd_of(x, y)
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    z = gaussian(500, 40, 2)
    z[:, 10:] = 0.0  # confined to a 10-dimensional subspace
    assert np.isfinite(fd_of(z, y))


@pytest.mark.parametrize("singular", ["neither", "corpus", "domain", "both"])
def test_trace_sqrt_product_agrees_with_the_eigenvalues_of_the_product(singular):
    """Each path (Cholesky of S_C, Cholesky of S_D, eigendecomposition) gives the same trace."""
    x, y = gaussian(600, 30, 6), gaussian(700, 30, 7, scale=0.8)
    if singular in ("corpus", "both"):
        x[:, 20:] = 0.0
    if singular in ("domain", "both"):
        y = y[:12]
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    reference = np.sqrt(np.clip(scipy.linalg.eigvals(s1 @ s2).real, 0.0, None)).sum()
    assert dist.trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-6)


def test_fd_of_a_set_with_itself_is_about_zero():
    x = gaussian(2000, 32, 3)
    assert abs(fd_of(x, x)) < 1e-9 * np.trace(np.cov(x, rowvar=False))


def test_both_distances_are_symmetric():
    x, y = gaussian(800, 16, 4), gaussian(500, 16, 5, shift=0.4, scale=0.7)
    assert fd_of(x, y) == pytest.approx(fd_of(y, x), rel=1e-9)
    assert dist.mmd_linear(x.mean(0), y.mean(0)) == dist.mmd_linear(y.mean(0), x.mean(0))


def test_moments_match_numpy_and_do_not_depend_on_chunking(tmp_path):
    x = gaussian(1001, 12, 6, shift=3.0).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = dist.load_embeddings(tmp_path / "x.npy")
    small = dist.compute_moments(mapped, chunk_rows=7, blocks=13)
    large = dist.compute_moments(x, chunk_rows=100_000, blocks=13)
    reference = x.astype(np.float64)
    np.testing.assert_allclose(small.mean, reference.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(small.cov, np.cov(reference, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(small.cov, large.cov, rtol=1e-12, atol=1e-13)
    assert small.block_counts.sum() == 1001 and len(small.block_counts) == 13
    np.testing.assert_allclose(small.block_outer.sum(0) / 1000, small.cov, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("n, blocks", [(100, 100), (20_000, 100)])  # row bootstrap; block bootstrap
def test_bootstrap_spread_of_the_mean_matches_theory(n, blocks):
    x = gaussian(n, 3, 7)
    moments = dist.compute_moments(x, blocks=blocks)
    rng = np.random.default_rng(0)
    draws = np.array([moments.resample(rng)[0][0] for _ in range(2000)])
    expected = x[:, 0].std(ddof=1) / np.sqrt(n)
    assert draws.std() == pytest.approx(expected, rel=0.15)
    assert draws.mean() == pytest.approx(x[:, 0].mean(), abs=5 * expected / np.sqrt(2000))  # 5 sigma


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    x, y = gaussian(3000, 6, 8), gaussian(2000, 6, 9, shift=0.2)
    c, d = dist.compute_moments(x, blocks=50), dist.compute_moments(y, blocks=50)
    first = dist.bootstrap(c, d, resamples=200, confidence=0.95, seed=1)
    assert first == dist.bootstrap(c, d, resamples=200, confidence=0.95, seed=1)
    mmd = dist.mmd_linear(c.mean, d.mean)
    fd = dist.frechet_distance(c.mean, c.cov, d.mean, d.cov)
    assert first["mmd_ci"][0] < mmd < first["mmd_ci"][1]
    assert first["fd_ci"][0] < fd < first["fd_ci"][1]


def test_basic_intervals_cover_the_population_value_and_percentile_ones_do_not():
    """n = 6 d: plug-in FD and MMD are biased upwards; 90% intervals over 30 simulated datasets."""
    d, n, runs = 10, 60, 30
    sigma, mu = np.linspace(0.6, 1.6, d), np.full(d, 0.15)
    true_fd, true_mmd = mu @ mu + ((1 - sigma) ** 2).sum(), mu @ mu
    covered = {"basic": [0, 0], "percentile": [0, 0]}
    for run in range(runs):
        rng = np.random.default_rng(run)
        c = dist.compute_moments(rng.normal(size=(n, d)), blocks=n)
        t = dist.compute_moments(rng.normal(size=(n, d)) * sigma + mu, blocks=n)
        for method, hits in covered.items():
            b = dist.bootstrap(c, t, resamples=200, confidence=0.9, seed=run, method=method)
            hits[0] += b["fd_ci"][0] <= true_fd <= b["fd_ci"][1]
            hits[1] += b["mmd_ci"][0] <= true_mmd <= b["mmd_ci"][1]
            assert b["fd_bootstrap_bias"] > 0
    assert covered["basic"][0] >= 0.8 * runs and covered["basic"][1] >= 0.8 * runs, covered
    assert covered["percentile"][0] <= 0.3 * runs, covered


def test_unknown_interval_method_is_named():
    m = dist.compute_moments(gaussian(30, 3, 0))
    with pytest.raises(PipelineError, match="unknown interval method 'bca'"):
        dist.bootstrap(m, m, resamples=10, confidence=0.9, seed=0, method="bca")


def test_singular_covariance_is_reported():
    note = dist.covariance_note("domain hep-ex", dist.compute_moments(gaussian(20, 30, 0)))
    assert note["singular"] and note["rank"] == 19
    assert "n = 20 <= d = 30" in note["note"] and "without regularisation" in note["note"]
    assert "note" not in dist.covariance_note("x", dist.compute_moments(gaussian(200, 30, 0)))


def test_non_finite_rows_are_named():
    x = gaussian(50, 4, 0)
    x[17, 2] = np.nan
    with pytest.raises(PipelineError, match="corpus.npy: row 17 holds a NaN"):
        dist.compute_moments(x, source="corpus.npy")


def test_bad_embedding_file_is_named(tmp_path):
    (tmp_path / "e.npy").write_bytes(b"not numpy")
    with pytest.raises(PipelineError, match="cannot read embeddings .*e.npy"):
        dist.load_embeddings(tmp_path / "e.npy")
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(PipelineError, match="expected a 2-D float array"):
        dist.load_embeddings(tmp_path / "v.npy")


def test_resampled_block_products_over_upper_triangles_equal_tensordot_bit_for_bit():
    moments = dist.compute_moments(gaussian(3000, 40, 9), blocks=100)
    rng = np.random.default_rng(0)
    for _ in range(20):
        weights = rng.multinomial(100, np.full(100, 0.01)).astype(np.float64)
        assert np.array_equal(moments._outer_sum(weights), np.tensordot(weights, moments.block_outer, axes=1))
    assert moments._packed is not False  # the half-size product was used
    # Outer products that are not exactly symmetric: the plain product, for good.
    skewed = dist.compute_moments(gaussian(3000, 40, 9), blocks=100)
    skewed.block_outer[3, 0, 1] += 1e-9
    weights = rng.multinomial(100, np.full(100, 0.01)).astype(np.float64)
    assert np.array_equal(skewed._outer_sum(weights), np.tensordot(weights, skewed.block_outer, axes=1))
    assert skewed._packed is False
