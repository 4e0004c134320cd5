"""The LM data path (as in run_clm.py, split into testable functions).

A split's texts (under an M2D2 join policy, ``m2d2.lm_texts``) are tokenised, each followed by EOS
(except under ``strip``), concatenated into one token stream, and cut into blocks of the context
length; the tail shorter than a block is dropped and counted. One epoch visits every block once in a seeded order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis.corpora import m2d2
from analysis.errors import PipelineError
from analysis.lm.models import FileTokenizer, load_encoding_tokenizer
from analysis.lm.tokenize import MAX_PIECE_CHARS, PieceEncoder, PieceTooLong, lm_lines, pieces, tokenize_stream
from analysis.lm.tokens import TokenStreams, TokenWriter, stem_of, token_dtype
from analysis.runner import restores_job_settings

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


def _rayon_threads(arguments: dict) -> dict:
    """The tokenizers library sizes its (Rayon) thread pool once, on first use."""
    return {"RAYON_NUM_THREADS": str(arguments["threads"])} if arguments["threads"] else {}


@restores_job_settings(torch_threads=False, env=_rayon_threads)
def tokenize_domain(
    *, model_name: str, m2d2_root: str, domain: str, policy: str, output: str | Path, metadata: str | Path,
    max_invalid_fraction: float = 0.01, threads: int | None = None, piece_chars: int = 1 << 18,
    batch_chars: int = 1 << 22, max_piece_chars: int = MAX_PIECE_CHARS,
) -> dict:
    """Tokenise a domain's train, valid and test splits under a join policy into token files.

    ``output`` is ``<stem>.bin`` (``analysis.lm.tokens``: the streams, their document offsets in
    ``<stem>.idx``, and ``metadata``, ``<stem>.json``). The splits are streamed from the release in
    pieces of about ``piece_chars`` characters (``analysis.lm.tokenize``: the stream equals tokenising
    each text whole) and encoded in batches of about ``batch_chars`` characters on ``threads`` threads,
    so memory does not grow with the domain. A stretch of more than ``max_piece_chars`` characters
    that cannot be cut stops the job (``PieceTooLong``, naming the split's file) before it is tokenised.
    """
    stem = stem_of(output)
    if Path(metadata) != stem.with_name(stem.name + ".json"):
        raise PipelineError(f"token metadata {metadata} must sit beside {output} as <stem>.json")
    tokenizer = load_encoding_tokenizer(model_name)
    encoder = PieceEncoder(tokenizer)
    if encoder.rule.family is None:
        log.warning("%s: texts are tokenised whole, never cut (%s); a text of more than %d characters stops "
                    "the job", model_name, encoder.rule.reason, max_piece_chars)
    eos = m2d2.ends_with_eos(policy)
    record = {"model": model_name, "domain": domain, "join_policy": policy, "eos_after_each_text": eos,
              "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id, "splits": {}}
    started = time.perf_counter()
    with TokenWriter(stem, token_dtype(len(tokenizer))) as writer:
        for split in m2d2.SPLITS:
            stream = m2d2.SplitStream(m2d2_root, domain, split, max_invalid_fraction)
            writer.begin_split(split)
            try:
                counts = tokenize_stream(pieces(lm_lines(stream, policy), encoder, piece_chars, max_piece_chars),
                                         encoder, writer, eos_id=tokenizer.eos_token_id if eos else None,
                                         batch_chars=batch_chars, progress=f"{domain} {split}: ")
            except PieceTooLong as exc:
                raise PieceTooLong(f"{stream.source}: {exc}") from None
            writer.end_split()
            record["splits"][split] = {"source": stream.source, "sha256": stream.sha256,
                                       "documents": counts.documents, "tokens": counts.tokens,
                                       "characters": counts.characters,
                                       # Whitespace-separated words of the raw text (word perplexity).
                                       "words": counts.words, "bytes": counts.bytes}
            log.info("%s %s: %d documents, %d tokens", domain, split, counts.documents, counts.tokens)
        seconds = time.perf_counter() - started
        total_bytes = sum(s["bytes"] for s in record["splits"].values())
        record["tokenization"] = {
            "loaded_with": "tokenizers" if isinstance(tokenizer, FileTokenizer) else "transformers",
            "cut_rule": encoder.rule.family or "none (texts tokenised whole)", "reason": encoder.rule.reason,
            "cuts": encoder.cuts, "rejected_cuts": encoder.rejected_cuts, "piece_chars": piece_chars,
            "batch_chars": batch_chars, "threads": threads, "seconds": round(seconds, 3),
            "megabytes_per_second": round(total_bytes / 1e6 / seconds, 3) if seconds else None,
        }
        record = writer.commit(record)
    return record


def load_split(path: str | Path, split: str) -> np.ndarray:
    """One split's token stream, memory-mapped, from any file of a domain's token set."""
    return TokenStreams(path).split(split)
