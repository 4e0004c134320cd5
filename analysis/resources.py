"""Cluster resources (memory in MB, runtime in minutes) of the jobs whose cost follows their input.

Rules call these through lambdas over their ``input`` files. Snakemake evaluates resources once
while planning, when inputs may not exist yet (a dry run shows those estimates), and again before a
job starts, with its inputs in place: a missing file is therefore no error, it falls back to the
configured sizes. The estimates are deliberately generous: a job that asks for too little is killed
after its queue wait, one that asks for a little too much only waits a little longer.

**Data jobs** (``sample_domain``, ``tokenize_domain``): rates and memory measured by
``benchmarks/data_scale.py`` on a 2-core machine (see each constant); runtimes are for the first
attempt, the rules multiply them by the attempt number.

**Adapt jobs**: from the model's memory plan (rule ``plan``, ``results/plan/<model>.json``;
``analysis.lm.plan.job_resources``) and the domain's train tokens (its token metadata); a value
set in ``models.<name>.resources.adapt`` wins. Before the plan exists (planning, dry runs) the
fallbacks below are shown.

**Similarity jobs** (``embed``, ``corpus_statistics``, ``distance``): the rates are measured, or
stated where they could not be:

* ``corpus_statistics``: 2 x n x d^2 float64 flops (the mean pass is negligible); the block-wise
  products reach ~24 GFLOP/s on one core here (benchmarks/distance_stage.py: 930k x 384 in 11.5
  CPU s), taken as 20. Memory: the m x d x d block outer products (118 MB at m = 100, d = 384), a
  chunk of rows in float64 (the chunk, its centred and sorted copies), the row partition and the
  interpreter; measured 138 MiB anonymous after the pass at the paper's scale. The pages of the
  memory-mapped corpus that the job reads count as its resident memory too, but they are clean
  page cache, dropped under pressure.
* ``distance``: the corpus statistics (118 MB) and the domain's (the same), each with a copy of
  the upper triangles of its block products (half that), a domain chunk and the d x d temporaries
  of the subsamples; time is dominated by Fréchet distances of subsamples, 30-45 ms each at
  d = 384 on one core (two subsample covariances, a Cholesky factor, two products, eigenvalues):
  one per random half (similarity.resamples) and (points - 1) x orderings for the FD extrapolation.
* ``embed``: tokens per second of all-MiniLM-L6-v2 (256-token texts, the worst case: most web
  documents are truncated there). CPU: ~1,500 tokens/s per thread on this 2-core machine under load
  (benchmarks/embedding.py); taken as 1,000. GPU: not measured here (no GPU); stated as 100,000
  tokens/s (~400 texts/s of 256 tokens) for bf16 on an A100/H100-class device, a cautious figure
  for a 22M-parameter encoder. Memory does not grow with the corpus: one unit of texts and its
  token ids (two units when the next is prefetched on a GPU), the model, the CUDA context.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from analysis.lm.plan import job_resources

# ------------------------------------------------------------------------------------------------
# Data jobs
# ------------------------------------------------------------------------------------------------

#: Peak resident memory of a tokenize_domain job (MB), flat in the size of the domain: measured
#: 607-666 MB at 32, 128 and 512 MB of text with the tokenizer loaded through transformers (which
#: imports torch; class-specific tokenizers such as GPT-2's and LLaMA's), 320-370 MB when its
#: tokenizer.json is read alone (``models.load_encoding_tokenizer``), plus a 4 MB batch being read
#: ahead and one being encoded; 3x that for other tokenizers.
TOKENIZE_MEM_MB = 2000
#: Text tokenised per second and thread (MB/s): measured 2.5-2.8 MB/s on 2 threads (1.3 per
#: thread) with a byte-level BPE; taken as 0.5 for vocabularies and texts that encode slower and
#: for threads that do not scale perfectly.
TOKENIZE_MB_PER_S_PER_THREAD = 0.5
#: sample_domain: the interpreter with pyarrow (MB; measured 180-236 MB in all), and memory per MB
#: of sampled text (the texts as Python strings and as an Arrow table while the parquet is
#: written; measured ~5).
SAMPLE_BASE_MB = 1000
SAMPLE_MB_PER_SAMPLED_MB = 6
#: sample_domain reads its splits twice (count, then draw): measured 58-76 MB/s for both passes
#: from a directory; taken as 10 MB/s per pass for archives (decompressed twice) and slow disks.
SAMPLE_MB_PER_S = 10.0
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


# ------------------------------------------------------------------------------------------------
# Similarity jobs
# ------------------------------------------------------------------------------------------------


MB = 1e6
INTERPRETER_MB = 400  # python, numpy, the analysis package
STATISTICS_FLOPS = 20e9  # block-wise outer products, one core
SECONDS_PER_SUBSAMPLE_FD_AT_384 = 0.045  # one core; scales as d^3
CPU_TOKENS_PER_SECOND_PER_THREAD = 1_000
GPU_TOKENS_PER_SECOND = 100_000
EMBED_BASE_MB = {"cpu": 2500, "gpu": 4000}  # torch, the model; on a GPU also the CUDA context
EMBED_BYTES_PER_TEXT = 24_000  # a truncated web document as str (~8 kB) and 257 token ids as ints


def npy_shape(path: str | Path) -> tuple[int, ...] | None:
    """The shape in a ``.npy`` header (the data are not read); None when the file is not there."""
    readers = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            if major in readers:
                return tuple(readers[major](handle)[0])
    except FileNotFoundError:
        return None
    return tuple(np.load(path, mmap_mode="r").shape)  # a newer header version


def parquet_rows(path: str | Path) -> int | None:
    """Rows of a parquet file from its footer; None when the file is not there."""
    if not os.path.exists(path):
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def statistics_mem_mb(rows: int, dim: int, blocks: int, chunk_rows: int) -> int:
    """Peak memory of ``corpus_statistics`` for ``rows`` x ``dim`` embeddings in ``blocks`` blocks."""
    outer = blocks * dim * dim * 8
    chunks = 4 * chunk_rows * dim * 8  # float64 chunk, centred copy, sorted copy, a block's rows
    partition = 3 * rows * 8  # the permutation, the block of each row, a chunk's argsort
    return math.ceil(INTERPRETER_MB + 1.25 * (outer + chunks + partition) / MB)


def statistics_runtime_min(rows: int, dim: int, attempt: int = 1) -> int:
    """Runtime of ``corpus_statistics`` (minutes; x attempt), with a 3x margin over the measured rate."""
    seconds = 2 * rows * dim * dim / STATISTICS_FLOPS
    return math.ceil(5 + 3 * seconds / 60) * attempt


def distance_mem_mb(domain_rows: int, dim: int, blocks: int, chunk_rows: int) -> int:
    """Peak memory of ``distance``: two sets of block statistics, a domain chunk, d x d temporaries."""
    statistics = 2 * blocks * (1.5 * dim * dim + dim) * 8
    chunks = 4 * min(chunk_rows, max(domain_rows, 1)) * dim * 8
    temporaries = 16 * dim * dim * 8
    return math.ceil(INTERPRETER_MB + 1.25 * (statistics + chunks + temporaries + 3 * domain_rows * 8) / MB)


def distance_runtime_min(domain_rows: int, dim: int, subsamples: int, attempt: int = 1) -> int:
    """Runtime of ``distance`` (minutes; x attempt): the subsamples' Fréchet distances plus the domain
    pass, 3x margin."""
    distances = subsamples * SECONDS_PER_SUBSAMPLE_FD_AT_384 * (dim / 384) ** 3
    domain = 2 * domain_rows * dim * dim / STATISTICS_FLOPS
    return math.ceil(2 + 3 * (distances + domain) / 60) * attempt


def distance_subsamples(similarity: dict) -> int:
    """How many subsample Fréchet distances a ``distance`` job computes (at most: the extrapolation
    is skipped for small domains)."""
    extrapolation = similarity["fd_extrapolation"]
    return similarity["resamples"] + (extrapolation["points"] - 1) * extrapolation["orderings"]


def embed_mem_mb(unit_texts: int, rows: int, gpus: int) -> int:
    """Peak memory of ``embed``: flat in the corpus size (units), two units in flight on a GPU."""
    in_flight = min(unit_texts, max(rows, 1)) * (2 if gpus else 1)
    return math.ceil(EMBED_BASE_MB["gpu" if gpus else "cpu"] + in_flight * EMBED_BYTES_PER_TEXT / MB)


def embed_runtime_min(rows: int, max_seq_length: int, threads: int, gpus: int, attempt: int = 1) -> int:
    """Runtime of ``embed`` (minutes; x attempt) at the stated throughput, every text taken as
    ``max_seq_length`` tokens; a retried job also resumes where the last one stopped."""
    rate = GPU_TOKENS_PER_SECOND if gpus else CPU_TOKENS_PER_SECOND_PER_THREAD * max(threads, 1)
    seconds = rows * max_seq_length / rate
    return math.ceil(5 + 1.5 * seconds / 60) * attempt


# What the rules call, with the config, the job's wildcards and its input files.

FALLBACK_DIMENSION = 384  # before the embeddings exist (planning, dry runs): the default model's


def sample_rows(config: dict, kind: str, name: str, parquet: str | Path) -> int:
    """Texts of a sample: its rows, or before it exists the configured sample size."""
    rows = parquet_rows(parquet)
    if rows is not None:
        return rows
    if kind == "sources":
        return config["corpora"][name]["n_texts"]
    return config["sampling"]["domain_max_texts"]


def embeddings_shape(path: str | Path, fallback_rows: int) -> tuple[int, int]:
    """(rows, d) of an embeddings .npy from its header, or an estimate before it exists."""
    shape = npy_shape(path)
    return (shape[0], shape[1]) if shape else (fallback_rows, FALLBACK_DIMENSION)


def embed_mem(config, wildcards, input) -> int:
    rows = sample_rows(config, wildcards.kind, wildcards.name, input[0])
    return embed_mem_mb(config["similarity"]["unit_texts"], rows, config["similarity"]["gpus"])


def embed_runtime(config, wildcards, input, threads, attempt) -> int:
    similarity = config["similarity"]
    rows = sample_rows(config, wildcards.kind, wildcards.name, input[0])
    return embed_runtime_min(rows, similarity["max_seq_length"], threads, similarity["gpus"], attempt)


def _corpus_shape(config, wildcards, input) -> tuple[int, int]:
    return embeddings_shape(input.embeddings, config["corpora"][wildcards.corpus]["n_texts"])


def statistics_mem(config, wildcards, input) -> int:
    similarity = config["similarity"]
    return statistics_mem_mb(
        *_corpus_shape(config, wildcards, input), similarity["blocks"], similarity["chunk_rows"]
    )


def statistics_runtime(config, wildcards, input, attempt) -> int:
    return statistics_runtime_min(*_corpus_shape(config, wildcards, input), attempt)


def _domain_shape(config, input) -> tuple[int, int]:
    return embeddings_shape(input.domain, config["sampling"]["domain_max_texts"])


def distance_mem(config, wildcards, input) -> int:
    similarity = config["similarity"]
    return distance_mem_mb(*_domain_shape(config, input), similarity["blocks"], similarity["chunk_rows"])


def distance_runtime(config, wildcards, input, attempt) -> int:
    return distance_runtime_min(*_domain_shape(config, input), distance_subsamples(config["similarity"]), attempt)


# ------------------------------------------------------------------------------------------------
# Adapt jobs
# ------------------------------------------------------------------------------------------------

#: While the model's plan does not exist yet (a dry run): memory (MB), minutes, disk (MB).
ADAPT_FALLBACK = {"mem_mb": 16000, "runtime": 720, "disk_mb": 10000}


def adapt_resource(config, wildcards, input, key: str, attempt: int = 1) -> int:
    """``mem_mb``, ``runtime`` (times the attempt) or ``disk_mb`` of an adapt job."""
    spec = config["models"][wildcards.model]
    value = spec["resources"]["adapt"][key]
    if value is None:
        try:
            record = json.loads(Path(input.plan).read_text())
        except (OSError, ValueError):
            value = ADAPT_FALLBACK[key]
        else:
            tokens = steps = None
            try:
                tokens = json.loads(Path(input.metadata).read_text())["splits"]["train"]["tokens"]
            except (OSError, ValueError, KeyError):
                pass
            if tokens:
                per_step = spec["context_length"] * spec["micro_batch_size"] * spec["gradient_accumulation_steps"]
                steps = tokens // (per_step * record["target"]["processes"])
            value = job_resources(record, wildcards.mode, tokens, steps)[key]
    return value * attempt if key == "runtime" else value


# Rule convert_gguf holds the dequantized float32 tensors three times (transformers' GGUF model, the
# plain model they are copied into, the save): SmolLM2-135M (134.5 M parameters) peaked at 1.61 GB
# (/usr/bin/time, 2 cores), 0.54 GB of weights.
CONVERT_BASE_MB = 1000
CONVERT_COPIES = 3


def convert_gguf_mem_mb(gguf_path: str | Path) -> int:
    """mem_mb of converting ``gguf_path`` (its parameter count read from the header)."""
    from analysis.lm.gguf import read_header

    parameters = read_header(gguf_path).parameters
    return int(CONVERT_BASE_MB + CONVERT_COPIES * parameters * 4 / MB)
