"""Readers for pretraining (source) corpora: local jsonl / txt / parquet files and Hugging Face datasets.

Every reader is a generator of texts so that a corpus of any size can be sampled in one pass; the
``ReadStats`` object collects what was read (files with checksums, counts, warnings) for provenance.
"""

from __future__ import annotations

import glob as globlib
import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Mapping

from analysis.errors import CorpusError
from analysis.io import sha256_file

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "txt", "parquet", "hf")
_EXTENSIONS = {
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz"),
    "txt": (".txt", ".txt.gz"),
    "parquet": (".parquet",),
}


@dataclass
class ReadStats:
    """What a reader saw: files (path, sha256), counts, warnings. Filled while iterating."""

    files: list[dict] = field(default_factory=list)
    n_records: int = 0
    n_empty: int = 0
    n_invalid_lines: int = 0
    warnings: list[str] = field(default_factory=list)
    hf: dict | None = None

    def as_dict(self) -> dict:
        out = {
            "files": self.files,
            "n_records": self.n_records,
            "n_empty_skipped": self.n_empty,
            "n_invalid_utf8_lines": self.n_invalid_lines,
            "warnings": self.warnings,
        }
        if self.hf is not None:
            out["hf"] = self.hf
        return out


class _HashingReader:
    """A read-only binary file wrapper that hashes every byte read (checksum in the same pass)."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        return data

    def readable(self) -> bool:
        return True


def resolve_files(path: str, fmt: str) -> list[Path]:
    """A file, every matching file in a directory (recursively, sorted), or a glob's matches."""
    candidate = Path(path)
    if candidate.is_file():
        return [candidate]
    extensions = _EXTENSIONS[fmt]
    if candidate.is_dir():
        files = sorted(
            p for p in candidate.rglob("*") if p.is_file() and p.name.endswith(extensions)
        )
        if not files:
            raise CorpusError(
                f"no {fmt} files ({', '.join(extensions)}) found in directory {candidate}"
            )
        return files
    matches = sorted(Path(p) for p in globlib.glob(path, recursive=True) if Path(p).is_file())
    if matches:
        return matches
    raise CorpusError(f"corpus path not found: {path} (no file, directory or glob match)")


def _open_binary(path: Path, stats: ReadStats) -> tuple[IO[bytes], _HashingReader, IO[bytes]]:
    raw = open(path, "rb")
    hashing = _HashingReader(raw)
    stream = gzip.GzipFile(fileobj=hashing, mode="rb") if path.name.endswith(".gz") else hashing
    return raw, hashing, stream


def _finish_file(path: Path, raw: IO[bytes], hashing: _HashingReader, stats: ReadStats) -> None:
    # Hash whatever the decompressor left unread (gzip trailer padding) so the sum covers the file.
    for chunk in iter(lambda: hashing.read(1 << 20), b""):
        pass
    raw.close()
    stats.files.append({"path": str(path), "sha256": hashing.digest.hexdigest()})


def _binary_lines(stream: IO[bytes]) -> Iterator[bytes]:
    buffer = b""
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from complete
    if buffer:
        yield buffer


def _decode_line(raw: bytes, where: str, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.n_invalid_lines += 1
        return raw.decode("utf-8", errors="replace")


def iter_jsonl(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    """Texts from JSON-lines files (optionally gzipped): one object per line, text in ``text_field``."""
    for file in resolve_files(path, "jsonl"):
        raw, hashing, stream = _open_binary(file, stats)
        try:
            for lineno, line in enumerate(_binary_lines(stream), start=1):
                if not line.strip():
                    continue
                where = f"{file}:{lineno}"
                try:
                    record = json.loads(_decode_line(line, where, stats))
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{where}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict) or text_field not in record:
                    fields = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
                    raise CorpusError(f"{where}: no field {text_field!r} (found: {fields}); set text_field")
                text = record[text_field]
                if not isinstance(text, str):
                    raise CorpusError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
                stats.n_records += 1
                if not text.strip():
                    stats.n_empty += 1
                    continue
                yield text
        except (OSError, EOFError) as exc:
            raise CorpusError(f"cannot read {file}: {exc}") from None
        _finish_file(file, raw, hashing, stats)


def iter_txt(path: str, unit: str, stats: ReadStats) -> Iterator[str]:
    """Texts from plain-text files: one per non-blank ``line``, per blank-line ``paragraph``, or per ``file``."""
    for file in resolve_files(path, "txt"):
        raw, hashing, stream = _open_binary(file, stats)
        try:
            lines = (_decode_line(b, str(file), stats) for b in _binary_lines(stream))
            if unit == "line":
                for line in lines:
                    stats.n_records += 1
                    if line.strip():
                        yield line
                    else:
                        stats.n_empty += 1
            elif unit == "paragraph":
                current: list[str] = []
                for line in lines:
                    if line.strip():
                        current.append(line)
                    elif current:
                        stats.n_records += 1
                        yield "\n".join(current)
                        current = []
                if current:
                    stats.n_records += 1
                    yield "\n".join(current)
            elif unit == "file":
                text = "\n".join(lines)
                stats.n_records += 1
                if text.strip():
                    yield text
                else:
                    stats.n_empty += 1
            else:
                raise CorpusError(f"unknown txt_unit {unit!r}; expected line, paragraph or file")
        except (OSError, EOFError) as exc:
            raise CorpusError(f"cannot read {file}: {exc}") from None
        _finish_file(file, raw, hashing, stats)


def iter_parquet(path: str, text_field: str, stats: ReadStats) -> Iterator[str]:
    """Texts from the ``text_field`` column of parquet files, read in record batches."""
    import pyarrow.parquet as pq

    for file in resolve_files(path, "parquet"):
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses
            raise CorpusError(f"cannot read parquet file {file}: {exc}") from None
        columns = parquet.schema_arrow.names
        if text_field not in columns:
            raise CorpusError(f"{file}: no column {text_field!r} (columns: {', '.join(columns)}); set text_field")
        for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                stats.n_records += 1
                if not isinstance(text, str) or not text.strip():
                    stats.n_empty += 1
                    continue
                yield text
        stats.files.append({"path": str(file), "sha256": sha256_file(file)})


def hub_error_message(dataset_id: str, split: str, exc: BaseException) -> str:
    """What to do when a hub dataset cannot be reached (offline cluster nodes, no network)."""
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return (
        f"cannot load Hugging Face dataset {dataset_id!r} (split {split!r}): {reason}.\n"
        "The hub is probably unreachable from this machine (offline node, no network). Either:\n"
        f"  1. pre-download it where the hub is reachable: "
        f"`hf download {dataset_id} --repo-type dataset --local-dir /data/{dataset_id.split('/')[-1]}`,\n"
        "     copy that directory here and set the corpus 'path' to it (format: hf), or point 'path'\n"
        "     at its data files with format jsonl / parquet / txt; or\n"
        "  2. fill the datasets cache (HF_HOME) on a connected machine, copy it, and run with\n"
        "     HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1."
    )


def iter_hf(path: str, text_field: str, hf: Mapping, stats: ReadStats) -> Iterator[str]:
    """Texts from a Hugging Face dataset id, or a local dataset directory, streamed where possible."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a declared dependency
        raise CorpusError(f"format 'hf' needs the 'datasets' package: {exc}") from None

    split = hf.get("split", "train")
    local = Path(path)
    stats.hf = {
        "id": path,
        "name": hf.get("name"),
        "split": split,
        "revision": hf.get("revision"),
        "data_files": hf.get("data_files"),
        "streaming": hf.get("streaming", True),
    }
    try:
        if local.is_dir() and (local / "dataset_info.json").is_file() and (local / "state.json").is_file():
            dataset = datasets.load_from_disk(str(local))  # a save_to_disk directory
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
            stats.hf["loaded_with"] = "load_from_disk"
        else:
            dataset = datasets.load_dataset(
                path,
                name=hf.get("name"),
                split=split,
                revision=hf.get("revision"),
                data_files=hf.get("data_files"),
                streaming=hf.get("streaming", True),
            )
            stats.hf["loaded_with"] = "load_dataset"
    except CorpusError:
        raise
    except Exception as exc:  # the hub client raises many types (ConnectionError, HfHubHTTPError, ...)
        raise CorpusError(hub_error_message(path, split, exc)) from None

    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        stats.hf["fingerprint"] = fingerprint
    if local.exists():
        stats.files.extend(
            {"path": str(p), "sha256": sha256_file(p)} for p in sorted(local.rglob("*")) if p.is_file()
        )
    iterator = iter(dataset)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # streaming fetches can fail mid-way
            raise CorpusError(hub_error_message(path, split, exc)) from None
        if text_field not in row:
            raise CorpusError(
                f"dataset {path!r}: no field {text_field!r} (fields: {', '.join(sorted(row))}); set text_field"
            )
        text = row[text_field]
        stats.n_records += 1
        if not isinstance(text, str) or not text.strip():
            stats.n_empty += 1
            continue
        yield text


def iter_corpus(spec: Mapping, stats: ReadStats) -> Iterator[str]:
    """Texts of one configured corpus (a ``corpora.<name>`` entry of the config)."""
    fmt = spec["format"]
    path = os.path.expanduser(spec["path"])
    field_name = spec.get("text_field", "text")
    if fmt == "jsonl":
        return iter_jsonl(path, field_name, stats)
    if fmt == "txt":
        return iter_txt(path, spec.get("txt_unit", "file"), stats)
    if fmt == "parquet":
        return iter_parquet(path, field_name, stats)
    if fmt == "hf":
        return iter_hf(path, field_name, spec.get("hf", {}), stats)
    raise CorpusError(f"unknown corpus format {fmt!r}; expected one of {', '.join(FORMATS)}")
