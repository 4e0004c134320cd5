"""Token files: a domain's token streams as flat, memory-mappable arrays (the nanoGPT / Megatron layout).

For one (model, join policy, domain), ``tokenize_domain`` writes three files with one stem:

* ``<stem>.bin``: the token ids of the train, valid and test streams back to back, little-endian
  ``uint16`` when every id fits (vocabularies up to 65,536) and ``uint32`` otherwise;
* ``<stem>.idx``: each split's document start offsets (int64, positions in that split's stream),
  back to back in the same split order;
* ``<stem>.json``: what the two hold (``layout``: version, dtype, and per split the token and
  document counts and where they begin) beside the tokenisation record (model, policy, EOS, text
  statistics per split).

Readers map the files (``np.memmap``) and slice what they need: no job reads a whole stream into
memory. The writer streams into temporary files beside the outputs and renames them into place only
when every split is complete (the JSON last), so an interrupted job leaves no partial output.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from analysis.errors import PipelineError
from analysis.io import _umask, write_json

LAYOUT_VERSION = 2
SUFFIXES = (".bin", ".idx", ".json")
OFFSET_DTYPE = np.dtype("<i8")


def token_dtype(vocabulary_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids ``0 .. vocabulary_size - 1`` (uint16 or uint32)."""
    if vocabulary_size <= 1 << 16:
        return np.dtype("<u2")
    if vocabulary_size <= 1 << 32:
        return np.dtype("<u4")
    raise PipelineError(f"a vocabulary of {vocabulary_size} ids does not fit a uint32 token file")


def stem_of(path: str | Path) -> Path:
    """The common stem of a token file set, from any of its files (or the stem itself). Domain names
    hold dots (``math.AG``), so only the known suffixes are removed."""
    path = Path(path)
    return path.with_name(path.name[: -len(path.suffix)]) if path.suffix in (*SUFFIXES, ".npz") else path


def with_suffix(stem: Path, suffix: str) -> Path:
    """``<stem><suffix>`` (``Path.with_suffix`` would replace the ``.AG`` of ``math.AG``)."""
    return stem.with_name(stem.name + suffix)


class TokenWriter:
    """Streams token ids and document starts of consecutive splits into ``<stem>.bin`` / ``.idx``.

    Use as a context manager; ``commit(record)`` renames the files into place and writes the JSON
    (``record`` plus the ``layout``); leaving the block without a commit removes the temporary files.
    """

    def __init__(self, stem: str | Path, dtype: np.dtype):
        self.stem = stem_of(stem)
        self.dtype = np.dtype(dtype)
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        # Left by a job killed while writing (SIGKILL skips cleanup). Exact names: the stem q-bio
        # must not match the files of q-bio.BM, which may be being written now.
        for suffix in (".bin", ".idx"):
            for stale in self.stem.parent.glob(f".{glob_escape(self.stem.name)}{suffix}.*.tmp"):
                stale.unlink(missing_ok=True)
        self._tmp = {}
        for suffix in (".bin", ".idx"):
            fd, name = tempfile.mkstemp(prefix=f".{self.stem.name}{suffix}.", suffix=".tmp", dir=self.stem.parent)
            self._tmp[suffix] = (Path(name), os.fdopen(fd, "wb"))
        self.splits: dict[str, dict] = {}
        self._split: str | None = None
        self._tokens = self._documents = 0
        self._tokens_total = self._documents_total = 0
        self._limit = np.iinfo(self.dtype).max

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, *exc) -> None:
        for path, handle in self._tmp.values():
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def begin_split(self, name: str) -> None:
        if self._split is not None:
            self.end_split()
        self._split, self._tokens, self._documents = name, 0, 0

    def append(self, ids, document_starts=()) -> None:
        """Append token ids (an integer sequence) to the current split; ``document_starts`` are the
        positions, relative to ``ids``, where documents begin."""
        array = np.asarray(ids)
        if array.size and (array.min() < 0 or array.max() > self._limit):
            raise PipelineError(f"token id {int(array.max())} does not fit the token file's {self.dtype.name}")
        starts = np.asarray(document_starts, dtype=OFFSET_DTYPE) + self._tokens
        self._tmp[".bin"][1].write(array.astype(self.dtype, copy=False).tobytes())
        self._tmp[".idx"][1].write(starts.tobytes())
        self._tokens += int(array.size)
        self._documents += int(starts.size)

    def end_split(self) -> dict:
        entry = {"tokens": self._tokens, "documents": self._documents,
                 "token_offset": self._tokens_total, "document_offset": self._documents_total}
        self.splits[self._split] = entry
        self._tokens_total += self._tokens
        self._documents_total += self._documents
        self._split = None
        return entry

    def commit(self, record: dict) -> dict:
        """Rename the streams into place and write ``<stem>.json`` (``record`` + ``layout``)."""
        if self._split is not None:
            self.end_split()
        for suffix, (path, handle) in self._tmp.items():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.chmod(path, 0o666 & ~_umask())
        record = {**record, "layout": {"version": LAYOUT_VERSION, "dtype": self.dtype.name,
                                       "byteorder": "little", "splits": self.splits}}
        for suffix, (path, _) in self._tmp.items():
            os.replace(path, with_suffix(self.stem, suffix))
        write_json(with_suffix(self.stem, ".json"), record)
        return record


class TokenStreams:
    """A domain's token files, opened read-only: ``split(name)`` and ``starts(name)`` are memmaps."""

    def __init__(self, path: str | Path):
        self.stem = stem_of(path)
        legacy = with_suffix(self.stem, ".npz")
        metadata = with_suffix(self.stem, ".json")
        rerun = ("; rerun tokenize_domain for it (e.g. `snakemake --forcerun tokenize_domain` or delete "
                 "the file)")
        if Path(path).suffix == ".npz" or (legacy.exists() and not with_suffix(self.stem, ".bin").exists()):
            raise PipelineError(f"{legacy}: token streams in the old .npz layout are no longer read{rerun}")
        try:
            self.metadata = json.loads(metadata.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PipelineError(f"cannot read token metadata {metadata}: {exc}{rerun}") from None
        layout = self.metadata.get("layout")
        if not isinstance(layout, dict) or layout.get("version") != LAYOUT_VERSION:
            found = layout.get("version") if isinstance(layout, dict) else "none (the old .npz layout)"
            raise PipelineError(f"{metadata}: token layout version {found}, this code reads version "
                                f"{LAYOUT_VERSION}{rerun}")
        self.dtype = np.dtype(layout["dtype"]).newbyteorder("<")
        self.layout = layout["splits"]
        self.bin, self.idx = with_suffix(self.stem, ".bin"), with_suffix(self.stem, ".idx")
        tokens = sum(s["tokens"] for s in self.layout.values())
        documents = sum(s["documents"] for s in self.layout.values())
        for file, count, dtype in ((self.bin, tokens, self.dtype), (self.idx, documents, OFFSET_DTYPE)):
            size = file.stat().st_size if file.exists() else None
            if size != count * dtype.itemsize:
                raise PipelineError(f"{file}: {size} bytes where {metadata} says {count} x {dtype.itemsize}: "
                                    f"missing or truncated{rerun}")

    @property
    def names(self) -> list[str]:
        return list(self.layout)

    def _entry(self, split: str) -> dict:
        if split not in self.layout:
            raise PipelineError(f"{self.bin}: no split {split!r} (has {', '.join(self.layout)})")
        return self.layout[split]

    def split(self, split: str) -> np.ndarray:
        """The split's token stream, ``(tokens,)`` memory-mapped (uint16 or uint32)."""
        entry = self._entry(split)
        if entry["tokens"] == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.bin, dtype=self.dtype, mode="r", offset=entry["token_offset"] * self.dtype.itemsize,
                         shape=(entry["tokens"],))

    def starts(self, split: str) -> np.ndarray:
        """The split's document start offsets, ``(documents,)`` int64, memory-mapped."""
        entry = self._entry(split)
        if entry["documents"] == 0:
            return np.zeros(0, dtype=OFFSET_DTYPE)
        return np.memmap(self.idx, dtype=OFFSET_DTYPE, mode="r",
                         offset=entry["document_offset"] * OFFSET_DTYPE.itemsize, shape=(entry["documents"],))
