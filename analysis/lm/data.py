"""The LM data path (as in run_clm.py, split into testable functions).

A split's texts (under an M2D2 join policy, ``m2d2.lm_texts``) are tokenised, each followed by EOS
(except under ``strip``), concatenated into one token stream, and cut into blocks of the context
length; the tail shorter than a block is dropped and counted. One epoch visits every block once in a seeded order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis.errors import PipelineError
from analysis.io import atomic_path, write_json

log = logging.getLogger(__name__)


def tokenize_documents(tokenizer, documents: Sequence[str], batch_size: int = 1000,
                       eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token stream (int32) with EOS after every document (unless ``eos`` is false: the documents'
    tokens simply concatenated), and each document's start offset."""
    separator = [tokenizer.eos_token_id] if eos else []
    pieces, starts, position = [], [], 0
    for begin in range(0, len(documents), batch_size):
        batch = list(documents[begin : begin + batch_size])
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            starts.append(position)
            pieces.append(np.asarray([*ids, *separator], dtype=np.int32))
            position += len(ids) + len(separator)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    return stream, np.asarray(starts, dtype=np.int64)


def pack_blocks(stream: np.ndarray, block_size: int) -> tuple[np.ndarray, int]:
    """``(n_blocks, block_size)`` blocks of the stream and the number of tail tokens dropped."""
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size), len(stream) - n_blocks * block_size


def epoch_order(n_blocks: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_blocks)


def tokenize_domain(
    *, model_name: str, m2d2_root: str, domain: str, policy: str, output: str | Path, metadata: str | Path,
    max_invalid_fraction: float = 0.01,
) -> dict:
    """Write ``output`` (npz: ``<split>`` token streams and ``<split>_starts``) for train/valid/test."""
    from analysis.corpora import m2d2
    from analysis.lm.models import load_tokenizer

    tokenizer = load_tokenizer(model_name)
    arrays, record = {}, {"model": model_name, "domain": domain, "join_policy": policy,
                          "eos_after_each_text": m2d2.ends_with_eos(policy),
                          "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
                          "splits": {}}
    for split in m2d2.SPLITS:
        text = m2d2.read_split(m2d2_root, domain, split, max_invalid_fraction)
        docs = m2d2.lm_texts(text.lines, policy)
        stream, starts = tokenize_documents(tokenizer, docs, eos=m2d2.ends_with_eos(policy))
        arrays[split], arrays[f"{split}_starts"] = stream, starts
        record["splits"][split] = {"source": text.source, "sha256": text.sha256, "documents": len(docs),
                                   "tokens": int(len(stream)), "characters": sum(len(d) for d in docs),
                                   # Whitespace-separated words of the raw text (word perplexity).
                                   "words": sum(len(d.split()) for d in docs),
                                   "bytes": sum(len(d.encode("utf-8")) for d in docs)}
        log.info("%s %s: %d documents, %d tokens", domain, split, len(docs), len(stream))
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    write_json(metadata, record)
    return record


def load_split(path: str | Path, split: str) -> np.ndarray:
    with np.load(path) as data:
        if split not in data:
            raise PipelineError(f"{path}: no split {split!r} (has {', '.join(data.files)})")
        return data[split]
