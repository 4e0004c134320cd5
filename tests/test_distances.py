"""MMD and Fréchet distance, plug-in and corrected: against brute force, scipy and known answers, on singular
data, and their intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

from analysis.errors import PipelineError
from analysis.similarity import compare as compare_lib
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


@pytest.mark.parametrize("n, blocks", [(100, 100), (20_000, 100)])  # rows as blocks; blocks of 200 rows
def test_spread_of_the_mean_over_random_halves_is_its_standard_error(n, blocks):
    """The delete-half jackknife: a mean over half of m equal blocks varies, without replacement, by
    sqrt(S_b^2 / (m / 2) x (1 - 1/2)) with S_b^2 the variance of the block means; that is about
    sigma / sqrt(n) (to the chi-square noise of m - 1 degrees of freedom: 7% for m = 100)."""
    x = gaussian(n, 3, 7)
    moments = dist.compute_moments(x, blocks=blocks)
    rng = np.random.default_rng(0)
    draws = np.array([moments.weighted(moments.half_weights(rng))[0][0] for _ in range(2000)])
    block_means = moments.mean[0] + moments.block_sums[:, 0] / moments.block_counts
    m = len(block_means)
    assert draws.std() == pytest.approx(np.sqrt(block_means.var(ddof=1) / m), rel=0.05)
    expected = x[:, 0].std(ddof=1) / np.sqrt(n)
    assert draws.std() == pytest.approx(expected, rel=0.2)
    assert draws.mean() == pytest.approx(x[:, 0].mean(), abs=5 * expected / np.sqrt(2000))  # 5 sigma


EXTRAPOLATION = dist.Extrapolation(points=5, smallest_fraction=0.25, texts_per_dimension=4.0, orderings=8)


def record(c, t, resamples=200, confidence=0.9, seed=0, extrapolation=EXTRAPOLATION):
    return compare_lib.distance_record(
        corpus="c", domain="t", portion="wiki", moments_c=c, moments_d=t, embedding_model="m",
        resamples=resamples, confidence=confidence, seed=seed, extrapolation=extrapolation,
    )


def test_intervals_are_seeded_and_each_contains_its_estimate():
    x, y = gaussian(3000, 6, 8), gaussian(2000, 6, 9, shift=0.2)
    c, d = dist.compute_moments(x, blocks=50), dist.compute_moments(y, blocks=50)
    first = dist.half_sample_replicates(c, d, resamples=50, seed=1)
    second = dist.half_sample_replicates(c, d, resamples=50, seed=1)
    assert all(np.array_equal(first[key], second[key]) for key in first)
    r = record(c, d)
    assert r == record(c, d)
    for key in ("mmd", "mmd_unbiased", "fd", "fd_corrected"):
        assert r[f"{key}_ci"][0] < r[key] < r[f"{key}_ci"][1], key


def test_normal_interval_is_the_estimate_plus_minus_z_standard_deviations():
    low, high = dist.normal_interval(1.0, 0.5, 0.95)
    assert (low, high) == pytest.approx((1.0 - 1.959964 * 0.5, 1.0 + 1.959964 * 0.5), rel=1e-6)


def test_unbiased_mmd_equals_the_u_statistic_of_the_linear_kernel():
    x, y = gaussian(50, 6, 0), gaussian(40, 6, 1, shift=0.3)
    kx, ky = x @ x.T, y @ y.T
    n, m = len(x), len(y)
    u = (kx.sum() - np.trace(kx)) / (n * (n - 1)) + (ky.sum() - np.trace(ky)) / (m * (m - 1)) - 2 * (x @ y.T).mean()
    c, d = dist.compute_moments(x, blocks=5), dist.compute_moments(y, blocks=5)
    assert dist.mmd_unbiased(c.mean, np.trace(c.cov), c.n, d.mean, np.trace(d.cov), d.n) == pytest.approx(u, rel=1e-9)


def test_unbiased_mmd_has_the_population_value_as_its_mean_where_the_plug_in_does_not():
    """n = 10 texts in d = 20: the plug-in exceeds ||mu||^2 = 0.05 by tr(I)/10 + tr(I)/10 = 4 on average."""
    d, n, runs = 20, 10, 4000
    rng = np.random.default_rng(0)
    mu = np.full(d, 0.05)
    x, y = rng.normal(size=(runs, n, d)), rng.normal(size=(runs, n, d)) + mu
    plug = ((x.mean(1) - y.mean(1)) ** 2).sum(1)
    trace = lambda z: z.var(axis=1, ddof=1).sum(1)  # noqa: E731
    unbiased = plug - trace(x) / n - trace(y) / n
    error = unbiased.std() / np.sqrt(runs)
    assert abs(unbiased.mean() - mu @ mu) < 4 * error
    assert plug.mean() - mu @ mu == pytest.approx(2 * d / n, rel=0.05)
    assert (unbiased < 0).any()  # defined at any n, and negative when noise exceeds the distance


def test_extrapolation_fractions_and_the_smallest_usable_size():
    e = EXTRAPOLATION
    assert e.minimum_texts(384) == 1920  # subsamples of >= 4 d = 1536 texts spanning a factor 1.25
    fractions, reason = e.fractions(400_000, 50_000, 384)
    assert reason is None and fractions[0] == 1.0 and fractions[-1] == pytest.approx(0.25) and len(fractions) == 5
    np.testing.assert_allclose(np.diff(1 / fractions), 0.75)  # evenly spaced in 1 / f
    fractions, _ = e.fractions(400_000, 2000, 384)
    assert fractions[-1] == pytest.approx(1536 / 2000)  # the smallest subsample holds 4 d texts
    fractions, reason = e.fractions(400_000, 1900, 384)
    assert fractions is None and "domain holds 1900 texts, n/d = 4.95" in reason and "at least 1920" in reason
    fractions, reason = e.fractions(500, 50_000, 384)
    assert fractions is None and "corpus holds 500 texts" in reason


def diagonal_gaussians(d):
    """Two Gaussians with diagonal covariances and their FD and MMD: FD = ||mu||^2 + sum (sqrt a - sqrt b)^2."""
    a = np.linspace(0.5, 1.5, d)
    b = a * (1 + 0.5 * np.sin(np.arange(d)))
    mu = np.full(d, 0.1)
    return a, b, mu, mu @ mu + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), mu @ mu


def test_extrapolated_fd_removes_the_bias_of_the_plug_in():
    """d = 10, 150 texts a side (15 d), 60 draws: the plug-in FD is biased upwards by several standard
    errors of the mean; the corrected FD is not, and neither is the unbiased MMD."""
    d, n, runs = 10, 150, 60
    a, b, mu, true_fd, true_mmd = diagonal_gaussians(d)
    values = {"fd": [], "fd_corrected": [], "mmd": [], "mmd_unbiased": []}
    for run in range(runs):
        rng = np.random.default_rng(run)
        c = dist.compute_moments(rng.normal(size=(n, d)) * np.sqrt(a), blocks=100, seed=run)
        t = dist.compute_moments(rng.normal(size=(n, d)) * np.sqrt(b) + mu, blocks=100, seed=run + 1)
        r = record(c, t, resamples=10, seed=run)
        for key in values:
            values[key].append(r[key])
    mean = {key: np.mean(v) for key, v in values.items()}
    error = {key: np.std(v, ddof=1) / np.sqrt(runs) for key, v in values.items()}
    assert mean["fd"] - true_fd > 5 * error["fd"], (mean, true_fd)
    assert abs(mean["fd_corrected"] - true_fd) < 3 * error["fd_corrected"], (mean, true_fd)
    assert abs(mean["fd_corrected"] - true_fd) < 0.25 * (mean["fd"] - true_fd)
    assert mean["mmd"] - true_mmd > 5 * error["mmd"]
    assert abs(mean["mmd_unbiased"] - true_mmd) < 3 * error["mmd_unbiased"]


def test_corrected_intervals_cover_the_population_value_and_plug_in_ones_do_not():
    """n = 6 d: 90% intervals over 40 simulated pairs of sets."""
    d, n, runs = 10, 60, 40
    a, b, mu, true_fd, true_mmd = diagonal_gaussians(d)
    covered = {"fd": 0, "fd_corrected": 0, "mmd_unbiased": 0}
    truth = {"fd": true_fd, "fd_corrected": true_fd, "mmd_unbiased": true_mmd}
    for run in range(runs):
        rng = np.random.default_rng(100 + run)
        c = dist.compute_moments(rng.normal(size=(n, d)) * np.sqrt(a), blocks=n)
        t = dist.compute_moments(rng.normal(size=(n, d)) * np.sqrt(b) + mu, blocks=n)
        r = record(c, t, seed=run)
        for key in covered:
            covered[key] += r[f"{key}_ci"][0] <= truth[key] <= r[f"{key}_ci"][1]
    assert covered["fd_corrected"] >= 0.8 * runs and covered["mmd_unbiased"] >= 0.8 * runs, covered
    assert covered["fd"] <= 0.3 * runs, covered


def test_a_domain_too_small_to_extrapolate_gets_no_corrected_fd_and_the_reason():
    c, t = dist.compute_moments(gaussian(500, 10, 0)), dist.compute_moments(gaussian(24, 10, 1))
    r = record(c, t, resamples=20)
    assert r["fd_corrected"] is None and r["fd_corrected_ci"] is None
    assert "domain holds 24 texts, n/d = 2.40" in r["fd_corrected_reason"] and "at least 50" in r["fd_corrected_reason"]
    assert np.isfinite(r["fd"]) and np.isfinite(r["mmd_unbiased"])
    json.dumps(r, allow_nan=False)  # strict JSON: null, not NaN


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


def test_similarity_table_has_both_estimators_and_notes_and_figures_say_which_they_draw(tmp_path):
    from analysis.tables import similarity as sim_tables

    rng = np.random.default_rng(0)
    c = dist.compute_moments(gaussian(3000, 10, 0))
    paths = []
    for name, n in (("big", 400), ("small", 8)):  # 8 texts in d = 10: singular, too small to extrapolate
        r = record(c, dist.compute_moments(gaussian(n, 10, int(rng.integers(100)), shift=0.2)), resamples=20)
        r["domain"] = name
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(r))
    frame = sim_tables.similarity_table(paths, tmp_path / "s.tsv", tmp_path / "s.md").set_index("domain")
    assert np.isfinite(frame.loc["big", "fd_corrected"]) and np.isnan(frame.loc["small", "fd_corrected"])
    assert frame.loc["big", "note"] == ""
    note = frame.loc["small", "note"]
    assert "domain n = 8 <= d = 10" in note and "no corrected FD: the domain holds 8 texts" in note
    assert frame.loc["small", "n_over_d_domain"] == pytest.approx(0.8)
    assert sim_tables.drawn_distances(frame, "corrected")["fd"][0] == "fd"  # not defined for every domain
    assert sim_tables.drawn_distances(frame.loc[["big"]], "corrected") == {
        "mmd": ("mmd_unbiased", "MMD (unbiased)", "MMD (unbiased)"),
        "fd": ("fd_corrected", "FD (corrected)", "FD (corrected)")}
    assert "too few texts to correct it" in sim_tables.drawn_distances(frame, "corrected")["fd"][2]
    assert sim_tables.drawn_distances(frame, "plugin")["mmd"][0] == "mmd"
    with pytest.raises(PipelineError, match="unknown similarity.estimator 'bca'"):
        sim_tables.drawn_distances(frame, "bca")
    for estimator in ("corrected", "plugin"):
        sim_tables.similarity_figure(frame.reset_index().assign(corpus="c"), "c", tmp_path / f"{estimator}.png",
                                     estimator=estimator)
        assert (tmp_path / f"{estimator}.png").stat().st_size > 10_000
