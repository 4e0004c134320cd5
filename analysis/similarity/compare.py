"""The ``distance`` stage: MMD and FD between one source corpus and one domain, with intervals."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

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
    interval: str = "basic",
) -> dict:
    """Write ``output`` (JSON): MMD, FD, their bootstrap intervals, sizes and covariance notes.

    The corpus enters through its saved moments (rule corpus_statistics), checked against the corpus'
    embedding metadata; only the domain's embeddings are read.
    """
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
        seed=derive_seed(base_seed, "distance", corpus, domain), interval=interval,
    )
    record["seconds"] = round(time.perf_counter() - start, 3)
    write_json(output, record)
    log.info(
        "%s vs %s: MMD %.5f %s, FD %.5f %s", corpus, domain, record["mmd"], record["mmd_ci"], record["fd"],
        record["fd_ci"],
    )
    return record


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
    interval: str,
) -> dict:
    """MMD, FD, bootstrap intervals and covariance notes of one (corpus, domain) pair (no timing)."""
    mmd = dist.mmd_linear(moments_c.mean, moments_d.mean)
    trace_c, trace_d = float(moments_c.cov.trace()), float(moments_d.cov.trace())
    trace_sqrt = dist.trace_sqrt_product(moments_c.cov, moments_d.cov)
    fd = mmd + trace_c + trace_d - 2.0 * trace_sqrt
    intervals = dist.bootstrap(
        moments_c, moments_d, resamples=resamples, confidence=confidence, seed=seed, method=interval
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
        "n_corpus": moments_c.n,
        "n_domain": moments_d.n,
        "dimension": moments_c.dim,
        "embedding_model": embedding_model,
        "mmd": mmd,
        "mmd_ci": intervals["mmd_ci"],
        "fd": fd,
        "fd_ci": intervals["fd_ci"],
        "bootstrap_bias": {"mmd": intervals["mmd_bootstrap_bias"], "fd": intervals["fd_bootstrap_bias"]},
        "fd_terms": {
            "mean_term": mmd,
            "trace_corpus": trace_c,
            "trace_domain": trace_d,
            "trace_sqrt_product": trace_sqrt,
        },
        "covariance": notes,
        "bootstrap": {
            "resamples": resamples,
            "confidence": confidence,
            "interval": interval,
            "method": "rows resampled in random blocks (each row a block when n <= blocks)",
            "blocks_corpus": len(moments_c.block_counts),
            "blocks_domain": len(moments_d.block_counts),
            "seed": seed,
        },
        "analysis_version": __version__,
    }
