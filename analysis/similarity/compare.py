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
    corpus_embeddings: str | Path,
    domain_embeddings: str | Path,
    corpus_metadata: str | Path,
    domain_metadata: str | Path,
    output: str | Path,
    resamples: int,
    blocks: int,
    confidence: float,
    chunk_rows: int,
    base_seed: int,
    interval: str = "basic",
) -> dict:
    """Write ``output`` (JSON): MMD, FD, their bootstrap intervals, sizes and covariance notes."""
    start = time.perf_counter()
    meta_c, meta_d = _metadata(corpus_metadata), _metadata(domain_metadata)
    if meta_c["model"] != meta_d["model"]:
        raise PipelineError(
            f"embeddings from different models cannot be compared: {corpus_embeddings} "
            f"({meta_c['model']}) and {domain_embeddings} ({meta_d['model']})"
        )
    data_c = dist.load_embeddings(corpus_embeddings)
    data_d = dist.load_embeddings(domain_embeddings)
    if data_c.shape[1] != data_d.shape[1]:
        raise PipelineError(
            f"dimensions differ: {corpus_embeddings} has {data_c.shape[1]}, {domain_embeddings} has {data_d.shape[1]}"
        )
    seed = derive_seed(base_seed, "distance", corpus, domain)
    moments_c = dist.compute_moments(
        data_c, blocks=blocks, chunk_rows=chunk_rows, seed=derive_seed(base_seed, "blocks", "sources", corpus),
        source=str(corpus_embeddings),
    )
    moments_d = dist.compute_moments(
        data_d, blocks=blocks, chunk_rows=chunk_rows, seed=derive_seed(base_seed, "blocks", "domains", domain),
        source=str(domain_embeddings),
    )
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
    record = {
        "corpus": corpus,
        "domain": domain,
        "portion": portion,
        "n_corpus": moments_c.n,
        "n_domain": moments_d.n,
        "dimension": moments_c.dim,
        "embedding_model": meta_c["model"],
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
        "seconds": round(time.perf_counter() - start, 3),
        "analysis_version": __version__,
    }
    write_json(output, record)
    log.info("%s vs %s: MMD %.5f %s, FD %.5f %s", corpus, domain, mmd, intervals["mmd_ci"], fd, intervals["fd_ci"])
    return record
