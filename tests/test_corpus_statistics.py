"""Corpus statistics computed once: the distance JSON equals the one computed from the corpus itself.

The reference below is the ``distance`` computation as it was before rule corpus_statistics existed
(moments from the corpus array, in the job), with the intervals' arithmetic written out (one random
half after another, the full block products summed by tensordot), so that the new path (moments
saved by one job, loaded by another; half the block products read) is checked against independent
numbers and not against itself. They are equal to 1e-12 and in fact bit for bit: the saved float64
arrays round-trip exactly and the arithmetic is the same. It must stay so: with a singular covariance
(n <= d, e.g. the demo's 300-text domains) the square roots of eigenvalues that are zero up to
rounding move FD by ~1e-9 for a change of summation order in the subsample covariances.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.errors import PipelineError
from analysis.io import derive_seed
from analysis.similarity import compare as compare_lib
from analysis.similarity import distances as dist
from analysis.similarity import statistics as stats

BASE_SEED = 20241121
EXTRAPOLATION = dist.Extrapolation(points=5, smallest_fraction=0.25, texts_per_dimension=2.0, orderings=4)


def embedding_like(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / np.arange(1, d + 1) ** 0.8
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n, d)) * np.sqrt(spectrum)) @ basis.T
    x[:, 0] += shift
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def old_half(moments, rng):
    """A random half of the blocks' mean, covariance and size, written out as the record's arithmetic."""
    m = len(moments.block_counts)
    weights = np.zeros(m)
    weights[rng.permutation(m)[: m // 2]] = 1.0
    n = float(weights @ moments.block_counts)
    shift = (weights @ moments.block_sums) / n
    outer = np.tensordot(weights, moments.block_outer, axes=1)
    cov = (outer - n * np.outer(shift, shift)) / (n - 1)
    return moments.mean + shift, cov


def old_intervals(corpus, domain, *, resamples, confidence, seed):
    rng = np.random.default_rng(seed)
    mmd, fd = np.empty(resamples), np.empty(resamples)
    for r in range(resamples):
        mean_c, cov_c = old_half(corpus, rng)
        mean_d, cov_d = old_half(domain, rng)
        mmd[r] = dist.mmd_linear(mean_c, mean_d)
        fd[r] = dist.frechet_distance(mean_c, cov_c, mean_d, cov_d)
    mmd_hat = dist.mmd_linear(corpus.mean, domain.mean)
    fd_hat = dist.frechet_distance(corpus.mean, corpus.cov, domain.mean, domain.cov)
    return {
        "mmd_ci": dist.normal_interval(mmd_hat, mmd.std(ddof=1), confidence),
        "fd_ci": dist.normal_interval(fd_hat, fd.std(ddof=1), confidence),
    }


def old_record(corpus, domain, data_c, data_d, *, resamples, blocks, confidence, chunk_rows, extrapolation):
    """The numbers of ``compare`` before the statistics stage, from both embedding arrays."""
    seed = derive_seed(BASE_SEED, "distance", corpus, domain)
    moments_c = dist.compute_moments(
        data_c, blocks=blocks, chunk_rows=chunk_rows, seed=derive_seed(BASE_SEED, "blocks", "sources", corpus)
    )
    moments_d = dist.compute_moments(
        data_d, blocks=blocks, chunk_rows=chunk_rows, seed=derive_seed(BASE_SEED, "blocks", "domains", domain)
    )
    mmd = dist.mmd_linear(moments_c.mean, moments_d.mean)
    trace_c, trace_d = float(moments_c.cov.trace()), float(moments_d.cov.trace())
    trace_sqrt = dist.trace_sqrt_product(moments_c.cov, moments_d.cov)
    intervals = old_intervals(moments_c, moments_d, resamples=resamples, confidence=confidence, seed=seed)
    return {
        "n_corpus": moments_c.n, "n_domain": moments_d.n, "dimension": moments_c.dim,
        "mmd": mmd, "mmd_ci": intervals["mmd_ci"],
        "fd": mmd + trace_c + trace_d - 2.0 * trace_sqrt, "fd_ci": intervals["fd_ci"],
        "fd_terms": {"mean_term": mmd, "trace_corpus": trace_c, "trace_domain": trace_d,
                     "trace_sqrt_product": trace_sqrt},
        "covariance": {"corpus": dist.covariance_note(f"corpus {corpus}", moments_c),
                       "domain": dist.covariance_note(f"domain {domain}", moments_d)},
        "intervals": {"blocks_corpus": len(moments_c.block_counts), "blocks_domain": len(moments_d.block_counts),
                      "seed": seed},
    }


def assert_same(new, old, path="record"):
    """Every number of ``old`` equals the one in ``new`` to 1e-12 (relative, or absolute near 0)."""
    if isinstance(old, dict):
        for key, value in old.items():
            assert key in new, f"{path}.{key} missing"
            assert_same(new[key], value, f"{path}.{key}")
    elif isinstance(old, list):
        assert len(new) == len(old), path
        for i, (a, b) in enumerate(zip(new, old)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(old, float):
        assert math.isclose(new, old, rel_tol=1e-12, abs_tol=1e-14), f"{path}: {new!r} != {old!r}"
    else:
        assert new == old, f"{path}: {new!r} != {old!r}"


def write_embeddings(tmp_path, kind, name, data, model="all-MiniLM-L6-v2", sha="0" * 64):
    npy, meta = tmp_path / f"{kind}.{name}.npy", tmp_path / f"{kind}.{name}.json"
    np.save(npy, data)
    meta.write_text(json.dumps({"model": model, "count": data.shape[0], "dimension": data.shape[1],
                                "input": {"path": f"{name}.parquet", "sha256": sha}}))
    return npy, meta


@pytest.fixture
def corpus_files(tmp_path):
    data = embedding_like(6000, 48, 0)
    npy, meta = write_embeddings(tmp_path, "sources", "web", data)
    out = {"statistics": tmp_path / "stats/web.npz", "statistics_metadata": tmp_path / "stats/web.json"}
    record = stats.corpus_statistics(
        corpus="web", embeddings=npy, embedding_metadata=meta, output=out["statistics"],
        metadata=out["statistics_metadata"], blocks=100, chunk_rows=1000, base_seed=BASE_SEED,
    )
    return {"data": data, "npy": npy, "meta": meta, "record": record, **out}


# n_domain: well above d; below d (singular covariance, noted); below the block count (rows as blocks).
@pytest.mark.parametrize("n_domain", [3000, 40, 90])
def test_distance_from_saved_statistics_equals_the_distance_from_the_corpus(tmp_path, corpus_files, n_domain):
    domain = embedding_like(n_domain, 48, 1, shift=0.3)
    npy_d, meta_d = write_embeddings(tmp_path, "domains", "hep-ex", domain)
    settings = dict(resamples=60, blocks=100, confidence=0.9, chunk_rows=1000, extrapolation=EXTRAPOLATION)
    new = compare_lib.compare(
        corpus="web", domain="hep-ex", portion="s2orc",
        corpus_statistics=corpus_files["statistics"], corpus_statistics_metadata=corpus_files["statistics_metadata"],
        corpus_metadata=corpus_files["meta"], domain_embeddings=npy_d, domain_metadata=meta_d,
        output=tmp_path / "d.json", base_seed=BASE_SEED, **settings,
    )
    old = old_record("web", "hep-ex", corpus_files["data"], domain, **settings)
    assert_same(new, old)
    assert (new["mmd"], new["fd"], new["mmd_ci"], new["fd_ci"]) == (old["mmd"], old["fd"], old["mmd_ci"], old["fd_ci"])
    assert json.loads((tmp_path / "d.json").read_text()) == new
    assert new["covariance"]["domain"]["singular"] == (n_domain <= 48)


def test_statistics_round_trip_exactly_and_record_their_provenance(corpus_files):
    saved = stats.load_moments(corpus_files["statistics"])
    fresh = dist.compute_moments(corpus_files["data"], blocks=100, chunk_rows=1000,
                                 seed=derive_seed(BASE_SEED, "blocks", "sources", "web"))
    assert saved.n == fresh.n == 6000
    for name in stats.ARRAYS:
        np.testing.assert_array_equal(getattr(saved, name), getattr(fresh, name))
    record = json.loads(corpus_files["statistics_metadata"].read_text())
    assert record == corpus_files["record"]
    assert (record["n"], record["dimension"], record["blocks"]) == (6000, 48, 100)
    assert record["seed"] == derive_seed(BASE_SEED, "blocks", "sources", "web")
    assert record["embeddings"]["bytes"] == corpus_files["npy"].stat().st_size
    assert len(record["embeddings"]["sha256"]) == 64 and record["peak_rss_mib"] > 0


def test_statistics_of_other_embeddings_are_refused_with_the_file_named(tmp_path, corpus_files):
    domain = embedding_like(200, 48, 1)
    npy_d, meta_d = write_embeddings(tmp_path, "domains", "hep-ex", domain)
    arguments = dict(
        corpus="web", domain="hep-ex", portion="s2orc", corpus_statistics=corpus_files["statistics"],
        corpus_statistics_metadata=corpus_files["statistics_metadata"], domain_embeddings=npy_d,
        domain_metadata=meta_d, output=tmp_path / "d.json", resamples=10, blocks=100, confidence=0.9,
        chunk_rows=1000, base_seed=BASE_SEED, extrapolation=EXTRAPOLATION,
    )
    # The corpus was embedded again from another sample of the same size, or with more texts.
    meta = json.loads(corpus_files["meta"].read_text())
    for change, key in (({"input": {"sha256": "1" * 64}}, "input_sha256"), ({"count": 7000}, "count")):
        changed = tmp_path / "changed.json"
        changed.write_text(json.dumps({**meta, **change}))
        with pytest.raises(PipelineError, match=f"{corpus_files['statistics']} does not match the embeddings of "
                                                f"web: {key} is"):
            compare_lib.compare(corpus_metadata=changed, **arguments)
    with pytest.raises(PipelineError, match="web.json: blocks_requested is 100, but this run asks for 50"):
        compare_lib.compare(corpus_metadata=corpus_files["meta"], **{**arguments, "blocks": 50})
    with pytest.raises(PipelineError, match="web.json: seed is"):
        compare_lib.compare(corpus_metadata=corpus_files["meta"], **{**arguments, "base_seed": 1})
    assert not (tmp_path / "d.json").exists()


def test_statistics_file_that_is_not_statistics_is_named(tmp_path):
    np.savez(tmp_path / "x.npz", mean=np.zeros(3))
    with pytest.raises(PipelineError, match=r"x.npz: not corpus statistics \(missing block_counts"):
        stats.load_moments(tmp_path / "x.npz")
    (tmp_path / "y.npz").write_bytes(b"garbage")
    with pytest.raises(PipelineError, match="cannot read corpus statistics .*y.npz"):
        stats.load_moments(tmp_path / "y.npz")


def test_embeddings_that_disagree_with_their_metadata_are_named(tmp_path):
    npy, meta = write_embeddings(tmp_path, "sources", "web", embedding_like(300, 8, 0))
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "count": 301}))
    with pytest.raises(PipelineError, match=r"sources.web.npy holds 300 x 8 embeddings but .*describes 301 x 8"):
        stats.corpus_statistics(corpus="web", embeddings=npy, embedding_metadata=meta, output=tmp_path / "s.npz",
                                metadata=tmp_path / "s.json", blocks=10, chunk_rows=100, base_seed=1)
    assert not (tmp_path / "s.npz").exists()
