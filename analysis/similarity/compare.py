"""The ``distance`` stage: MMD and FD between one source corpus and one domain, with intervals."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from analysis import __version__
from analysis.errors import PipelineError
from analysis.io import derive_seed, write_json
from analysis.similarity import distances as dist
from analysis.similarity import statistics as stats

log = logging.getLogger(__name__)


def _metadata(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"cannot read embedding metadata {path}: {exc}") from None


def compare(
    *,
    corpus: str,
    domain: str,
    portion: str,
    corpus_statistics: str | Path,
    corpus_statistics_metadata: str | Path,
    corpus_metadata: str | Path,
    domain_embeddings: str | Path,
    domain_metadata: str | Path,
    output: str | Path,
    resamples: int,
    blocks: int,
    confidence: float,
    chunk_rows: int,
    base_seed: int,
    extrapolation: dist.Extrapolation | Mapping,
) -> dict:
    """Write ``output`` (JSON): ``distance_record`` (MMD and FD, plug-in and corrected, intervals, notes).

    The corpus enters through its saved moments (rule corpus_statistics), checked against the corpus'
    embedding metadata; only the domain's embeddings are read. ``extrapolation`` may be the config's
    ``similarity.fd_extrapolation`` section.
    """
    if not isinstance(extrapolation, dist.Extrapolation):
        extrapolation = dist.Extrapolation(**extrapolation)
    start = time.perf_counter()
    meta_c, meta_d = _metadata(corpus_metadata), _metadata(domain_metadata)
    if meta_c["model"] != meta_d["model"]:
        raise PipelineError(
            f"embeddings from different models cannot be compared: {corpus_metadata} "
            f"({meta_c['model']}) and {domain_embeddings} ({meta_d['model']})"
        )
    moments_c = stats.load_corpus_statistics(
        corpus=corpus, statistics=corpus_statistics, statistics_metadata=corpus_statistics_metadata,
        embedding_metadata=meta_c, embedding_metadata_path=corpus_metadata, blocks=blocks, base_seed=base_seed,
    )
    data_d = dist.load_embeddings(domain_embeddings)
    if moments_c.dim != data_d.shape[1]:
        raise PipelineError(
            f"dimensions differ: {corpus_statistics} has {moments_c.dim}, {domain_embeddings} has {data_d.shape[1]}"
        )
    moments_d = dist.compute_moments(
        data_d, blocks=blocks, chunk_rows=chunk_rows, seed=derive_seed(base_seed, "blocks", "domains", domain),
        source=str(domain_embeddings),
    )
    record = distance_record(
        corpus=corpus, domain=domain, portion=portion, moments_c=moments_c, moments_d=moments_d,
        embedding_model=meta_c["model"], resamples=resamples, confidence=confidence,
        seed=derive_seed(base_seed, "distance", corpus, domain), extrapolation=extrapolation,
    )
    record["seconds"] = round(time.perf_counter() - start, 3)
    write_json(output, record)
    log.info(
        "%s vs %s: MMD %.5f %s, unbiased %.5f %s; FD %.5f %s, corrected %s %s", corpus, domain, record["mmd"],
        record["mmd_ci"], record["mmd_unbiased"], record["mmd_unbiased_ci"], record["fd"], record["fd_ci"],
        record["fd_corrected"], record["fd_corrected_ci"] or record["fd_corrected_reason"],
    )
    return record


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1))


def distance_record(
    *,
    corpus: str,
    domain: str,
    portion: str,
    moments_c: dist.Moments,
    moments_d: dist.Moments,
    embedding_model: str,
    resamples: int,
    confidence: float,
    seed: int,
    extrapolation: dist.Extrapolation,
) -> dict:
    """MMD and FD of one (corpus, domain) pair, plug-in and corrected, with intervals (no timing).

    * ``mmd``, ``fd``: the plug-in values, as the paper computes them, biased upwards by terms of
      order d / n; ``mmd_unbiased``: the U-statistic (``distances.mmd_unbiased``, defined at any n,
      may be negative); ``fd_corrected``: FD with its mean term unbiased and the trace of the square
      root extrapolated to infinitely many texts (``distances.extrapolate_trace_sqrt``), or None with
      ``fd_corrected_reason`` when the sets are too small.
    * Every interval is ``estimate -/+ z sd`` and contains its estimate. sd is the estimator's
      standard deviation from random halves of both sets (``distances.half_sample_replicates``; for
      ``fd_corrected``: that of FD with its mean term unbiased, combined with the spread of the
      extrapolation over random nestings). The plug-in intervals describe the plug-in's sampling
      noise at these sizes; they miss the population value when the bias exceeds the noise (n near
      d); the corrected ones hold it at about the confidence asked where the correction is defined
      (benchmarks/distance_estimators.py measures their coverage).
    """
    n_c, n_d, dim = moments_c.n, moments_d.n, moments_c.dim
    mmd = dist.mmd_linear(moments_c.mean, moments_d.mean)
    trace_c, trace_d = float(moments_c.cov.trace()), float(moments_d.cov.trace())
    mmd_unbiased = dist.mmd_unbiased(moments_c.mean, trace_c, n_c, moments_d.mean, trace_d, n_d)
    trace_sqrt = dist.trace_sqrt_product(moments_c.cov, moments_d.cov)
    fd = mmd + trace_c + trace_d - 2.0 * trace_sqrt
    replicates = dist.half_sample_replicates(moments_c, moments_d, resamples=resamples, seed=seed)
    spread = {key: _sd(values) for key, values in replicates.items()}

    fractions, reason = extrapolation.fractions(n_c, n_d, dim)
    extrapolated = {
        "points": extrapolation.points, "smallest_fraction": extrapolation.smallest_fraction,
        "texts_per_dimension": extrapolation.texts_per_dimension,
        "largest_smallest_fraction": extrapolation.largest_smallest_fraction,
        "orderings": extrapolation.orderings, "minimum_texts": extrapolation.minimum_texts(dim),
    }
    fd_corrected = fd_corrected_ci = None
    if fractions is None:
        log.warning("%s vs %s: no corrected FD: %s", corpus, domain, reason)
    else:
        fit = dist.extrapolate_trace_sqrt(
            moments_c, moments_d, fractions, extrapolation.orderings, np.random.default_rng([seed, 1])
        )
        fd_corrected = mmd_unbiased + trace_c + trace_d - 2.0 * fit["estimate"]
        nesting_sd = 2.0 * _sd(fit["per_ordering"]) / np.sqrt(extrapolation.orderings)
        spread["fd_corrected"] = float(np.hypot(spread["fd_unbiased_mean"], nesting_sd))
        fd_corrected_ci = dist.normal_interval(fd_corrected, spread["fd_corrected"], confidence)
        extrapolated.update(
            fractions=[float(f) for f in fractions],
            inverse_fraction_domain=[float(x) for x in fit["inverse_fraction"]],
            trace_sqrt=[float(t) for t in fit["trace_sqrt"]],
            trace_sqrt_extrapolated=fit["estimate"],
            nesting_sd=float(nesting_sd),
        )
    notes = {
        "corpus": dist.covariance_note(f"corpus {corpus}", moments_c),
        "domain": dist.covariance_note(f"domain {domain}", moments_d),
    }
    for note in notes.values():
        if "note" in note:
            log.warning(note["note"])
    return {
        "corpus": corpus,
        "domain": domain,
        "portion": portion,
        "n_corpus": n_c,
        "n_domain": n_d,
        "dimension": dim,
        "n_over_d": {"corpus": n_c / dim, "domain": n_d / dim},
        "embedding_model": embedding_model,
        "mmd": mmd,
        "mmd_ci": dist.normal_interval(mmd, spread["mmd"], confidence),
        "mmd_unbiased": mmd_unbiased,
        "mmd_unbiased_ci": dist.normal_interval(mmd_unbiased, spread["mmd_unbiased"], confidence),
        "fd": fd,
        "fd_ci": dist.normal_interval(fd, spread["fd"], confidence),
        "fd_corrected": fd_corrected,
        "fd_corrected_ci": fd_corrected_ci,
        "fd_corrected_reason": reason,
        "fd_extrapolation": extrapolated,
        # How far the plug-in lies above the corrected value: its bias at these sizes, as estimated.
        "plugin_excess": {"mmd": mmd - mmd_unbiased, "fd": None if fd_corrected is None else fd - fd_corrected},
        "fd_terms": {
            "mean_term": mmd,
            "trace_corpus": trace_c,
            "trace_domain": trace_d,
            "trace_sqrt_product": trace_sqrt,
        },
        "covariance": notes,
        "intervals": {
            "resamples": resamples,
            "confidence": confidence,
            "interval": "estimate -/+ z x standard deviation",
            "standard_deviation": spread,
            "method": "delete-half jackknife: random halves of each set's blocks of rows (each row a block when "
                      "n <= blocks)",
            "blocks_corpus": len(moments_c.block_counts),
            "blocks_domain": len(moments_d.block_counts),
            "seed": seed,
        },
        "analysis_version": __version__,
    }
