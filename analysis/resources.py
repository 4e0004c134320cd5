"""Cluster resources of the data jobs, derived from the size of their input.

The rates and memory below were measured by ``benchmarks/data_scale.py`` on a 2-core machine (see
each constant) and are deliberately generous: a job that asks for too little is killed after its
queue wait, one that asks for a little too much only waits a little longer. Every runtime is in
minutes for the first attempt; the rules multiply it by the attempt number.
"""

from __future__ import annotations

import math

#: Peak resident memory of a tokenize_domain job (MB), flat in the size of the domain: the
#: interpreter with transformers and the tokenizer (~550 MB), one batch of text and its ids
#: (4 MB of text), and room for a slow tokenizer's whole-text fallback on small splits.
TOKENIZE_MEM_MB = 2000
#: Text tokenised per second and thread (MB/s; byte-level BPE, measured 1.6 MB/s per CPU second).
TOKENIZE_MB_PER_S_PER_THREAD = 0.5
#: sample_domain: the interpreter with pyarrow (MB), and memory per MB of sampled text (the texts
#: as Python strings and as an Arrow table while the parquet is written).
SAMPLE_BASE_MB = 1000
SAMPLE_MB_PER_SAMPLED_MB = 6
#: sample_domain reads its splits twice (count, then draw), at this rate (MB/s, measured ~5).
SAMPLE_MB_PER_S = 1.0
#: Upper bound on the size of one text when only bytes are known (M2D2 paragraphs are ~0.5-1 kB).
MAX_TEXT_BYTES = 8192


def tokenize_domain_mem_mb(threads: int) -> int:
    """Memory of a tokenize_domain job: flat, whatever the size of the domain."""
    return TOKENIZE_MEM_MB + 100 * max(threads - 2, 0)


def tokenize_domain_runtime(text_bytes: int, threads: int) -> int:
    """Minutes for a domain of ``text_bytes`` of text tokenised on ``threads`` threads."""
    seconds = text_bytes / 1e6 / (TOKENIZE_MB_PER_S_PER_THREAD * max(threads, 1))
    return 10 + math.ceil(seconds / 60)


def sampled_bytes(text_bytes: int, fraction: float, max_texts: int, min_texts: int) -> int:
    """An upper estimate of the bytes of text a domain sample keeps (the rule
    ``min(N, max_texts, max(ceil(fraction N), min_texts))`` on bytes, texts of at most
    ``MAX_TEXT_BYTES``)."""
    wanted = max(fraction * text_bytes, min_texts * MAX_TEXT_BYTES)
    return int(min(text_bytes, wanted, max_texts * MAX_TEXT_BYTES))


def sample_domain_mem_mb(text_bytes: int, fraction: float, max_texts: int, min_texts: int) -> int:
    """Memory of a sample_domain job: follows the sample, not the domain."""
    sample_mb = sampled_bytes(text_bytes, fraction, max_texts, min_texts) / 1e6
    return int(SAMPLE_BASE_MB + SAMPLE_MB_PER_SAMPLED_MB * sample_mb)


def sample_domain_runtime(text_bytes: int) -> int:
    """Minutes for two streamed passes over ``text_bytes`` of text."""
    return 10 + math.ceil(2 * text_bytes / 1e6 / SAMPLE_MB_PER_S / 60)
