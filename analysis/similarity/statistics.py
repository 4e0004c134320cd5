"""The ``corpus_statistics`` stage: a source corpus' moments and block statistics, computed once.

Every ``distance`` job of a corpus needs the same moments (mean, covariance and the per-block
statistics that subsamples combine, ``distances.compute_moments``). At the paper's scale a pass over
a 930k x 384 corpus takes longer than the rest of a ``distance`` job, and 199 domains would repeat it
199 times; here it runs once per corpus and the ``distance`` jobs read the result.

Files: ``<corpus>.npz`` (float64 arrays ``mean`` (d,), ``cov`` (d, d), ``block_counts`` (m,),
``block_sums`` (m, d), ``block_outer`` (m, d, d) and ``n``; uncompressed, 118 MB at m = 100,
d = 384) and ``<corpus>.json`` (provenance: the embeddings and their metadata, n, d, blocks, seed,
seconds, peak memory).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np

from analysis import __version__
from analysis.errors import PipelineError
from analysis.io import atomic_path, derive_seed, sha256_file, write_json
from analysis.similarity import distances as dist

log = logging.getLogger(__name__)

ARRAYS = ("mean", "cov", "block_counts", "block_sums", "block_outer")


def corpus_block_seed(base_seed: int, corpus: str) -> int:
    """The seed of a corpus' random partition into blocks (as before this stage existed)."""
    return derive_seed(base_seed, "blocks", "sources", corpus)


def read_json(path: str | Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"cannot read {what} {path}: {exc}") from None


def save_moments(path: str | Path, moments: dist.Moments) -> None:
    """Write ``moments`` to ``path`` (.npz, uncompressed: float64 round-trips exactly), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, n=np.int64(moments.n), **{name: getattr(moments, name) for name in ARRAYS})


def load_moments(path: str | Path) -> dist.Moments:
    """The moments saved by ``save_moments``, checked for shape; a clear error naming ``path``."""
    try:
        with np.load(path) as archive:
            missing = sorted({"n", *ARRAYS} - set(archive.files))
            if missing:
                raise PipelineError(f"{path}: not corpus statistics (missing {', '.join(missing)})")
            arrays = {name: archive[name] for name in ARRAYS}
            n = int(archive["n"])
    except (OSError, ValueError, EOFError) as exc:
        raise PipelineError(f"cannot read corpus statistics {path}: {exc}") from None
    d, m = arrays["mean"].shape[0], arrays["block_counts"].shape[0]
    expected = {"mean": (d,), "cov": (d, d), "block_counts": (m,), "block_sums": (m, d), "block_outer": (m, d, d)}
    for name, shape in expected.items():
        if arrays[name].shape != shape or arrays[name].dtype != np.float64:
            raise PipelineError(
                f"{path}: {name} has shape {arrays[name].shape} dtype {arrays[name].dtype}, expected {shape} float64"
            )
    if int(arrays["block_counts"].sum()) != n:
        raise PipelineError(f"{path}: block counts sum to {int(arrays['block_counts'].sum())}, not n = {n}")
    return dist.Moments(n=n, **arrays)


def _embedding_identity(metadata: dict) -> dict:
    """What names a set of embeddings in its metadata JSON: model, shape and the sample it encodes."""
    return {
        "model": metadata.get("model"),
        "count": metadata.get("count"),
        "dimension": metadata.get("dimension"),
        "input_sha256": (metadata.get("input") or {}).get("sha256"),
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def corpus_statistics(
    *,
    corpus: str,
    embeddings: str | Path,
    embedding_metadata: str | Path,
    output: str | Path,
    metadata: str | Path,
    blocks: int,
    chunk_rows: int,
    base_seed: int,
) -> dict:
    """Write the moments of a corpus' embeddings (``output``, .npz) and their provenance (``metadata``).

    Reads the (n, d) embeddings memory-mapped, ``chunk_rows`` rows at a time (two passes: the mean,
    then the centred block statistics); memory is m x d x d float64 plus a few chunks.
    """
    start = time.perf_counter()
    meta = read_json(embedding_metadata, "embedding metadata")
    data = dist.load_embeddings(embeddings)
    if (meta.get("count"), meta.get("dimension")) != data.shape:
        raise PipelineError(
            f"{embeddings} holds {data.shape[0]} x {data.shape[1]} embeddings but {embedding_metadata} "
            f"describes {meta.get('count')} x {meta.get('dimension')}: rerun rule embed for {corpus}"
        )
    seed = corpus_block_seed(base_seed, corpus)
    moments = dist.compute_moments(data, blocks=blocks, chunk_rows=chunk_rows, seed=seed, source=str(embeddings))
    save_moments(output, moments)
    path = Path(embeddings)
    record = {
        "corpus": corpus,
        "n": moments.n,
        "dimension": moments.dim,
        "blocks": len(moments.block_counts),
        "blocks_requested": blocks,
        "seed": seed,
        "chunk_rows": chunk_rows,
        "embeddings": {
            "path": str(embeddings),
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        },
        "embedding_metadata": {"path": str(embedding_metadata), **_embedding_identity(meta)},
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "analysis_version": __version__,
    }
    write_json(metadata, record)
    log.info(
        "%s: moments of %d x %d embeddings in %d blocks, %.1f s, peak RSS %.0f MiB",
        corpus, moments.n, moments.dim, record["blocks"], record["seconds"], record["peak_rss_mib"],
    )
    return record


def load_corpus_statistics(
    *,
    corpus: str,
    statistics: str | Path,
    statistics_metadata: str | Path,
    embedding_metadata: dict,
    embedding_metadata_path: str | Path,
    blocks: int,
    base_seed: int,
) -> dist.Moments:
    """A corpus' saved moments, after checking they belong to the embeddings ``embedding_metadata``
    describes (model, n, d, the sample's checksum) and to the requested blocks and seed."""
    record = read_json(statistics_metadata, "corpus statistics metadata")
    recorded = record.get("embedding_metadata", {})
    current = _embedding_identity(embedding_metadata)
    for key, value in current.items():
        if recorded.get(key) != value:
            raise PipelineError(
                f"{statistics} does not match the embeddings of {corpus}: {key} is {recorded.get(key)!r} "
                f"there but {value!r} in {embedding_metadata_path}; rerun rule corpus_statistics "
                f"(snakemake --forcerun {statistics})"
            )
    expected = {"blocks_requested": blocks, "seed": corpus_block_seed(base_seed, corpus)}
    for key, value in expected.items():
        if record.get(key) != value:
            raise PipelineError(
                f"{statistics_metadata}: {key} is {record.get(key)!r}, but this run asks for {value!r} "
                f"(similarity.blocks / seed); rerun rule corpus_statistics"
            )
    moments = load_moments(statistics)
    if (moments.n, moments.dim) != (record.get("n"), record.get("dimension")):
        raise PipelineError(
            f"{statistics} holds moments of {moments.n} x {moments.dim} embeddings but {statistics_metadata} "
            f"says {record.get('n')} x {record.get('dimension')}"
        )
    return moments
