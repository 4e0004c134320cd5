"""Readers for pretraining (source) corpora: jsonl / txt / parquet files and Hugging Face datasets.

Data files may be local (a file, a directory, a glob) or remote: an ``hf://datasets/...`` path read
with huggingface_hub's ``HfFileSystem`` (globs allowed), an ``https://`` URL, or a URL list (a text
file naming one data file per line, as Dolma publishes). Remote files are streamed, never stored.

Every reader is a generator of texts so that a corpus of any size can be sampled in one pass; the
``ReadStats`` object collects what was read (files with checksums, counts, warnings) for provenance.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import gzip
import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import time
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Iterator, Mapping

from analysis.errors import CorpusError
from analysis.io import sha256_file

# fsspec (remote files), pyarrow (parquet) and datasets (hf) are imported by the readers that use
# them: a job reading local jsonl or txt loads none of them.

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "txt", "parquet", "hf")
_EXTENSIONS = {
    "jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz"),
    "txt": (".txt", ".txt.gz"),
    "parquet": (".parquet",),
}
# A remote read waits this long for a connection or a block of data before it gives up, and resumes
# a dropped http(s) transfer (HTTP Range) this many times, the wait doubling from URL_BACKOFF_S.
URL_TIMEOUT_S = 30
URL_RETRIES = 5
URL_BACKOFF_S = 2.0
_READ_CHUNK = 1 << 20
_HF_DATASET = re.compile(r"^hf://datasets/(?P<repo>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]+))?/(?P<inner>.+)$")


@dataclass
class ReadStats:
    """What a reader saw: files (path, sha256), counts, warnings. Filled while iterating."""

    files: list[dict] = field(default_factory=list)
    n_records: int = 0
    n_empty: int = 0
    n_invalid_lines: int = 0
    warnings: list[str] = field(default_factory=list)
    hf: dict | None = None
    url_list: dict | None = None

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
        if self.url_list is not None:
            out["url_list"] = self.url_list
        return out


@dataclass(frozen=True)
class Source:
    """One data file to read: a local path or a URL; ``listed`` is the URL-list entry a local mirror
    file stands in for."""

    location: str
    listed: str | None = None


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


class _UrlReader:
    """Sequential reader of an http(s):// or file:// URL (urllib, bounded timeouts).

    Opening fails at once (an unreachable host or a missing file is not transient); a transfer that
    drops later is resumed from the byte it stopped at, up to ``URL_RETRIES`` times.
    """

    def __init__(self, url: str):
        self.url = url
        self.position = 0
        self._response = self._open(0)

    def _open(self, offset: int):
        headers = {"User-Agent": "adaptation-odyssey"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=URL_TIMEOUT_S)
        if offset and getattr(response, "status", 206) == 200:  # the server ignored Range: skip ahead
            remaining = offset
            while remaining:
                chunk = response.read(min(remaining, _READ_CHUNK))
                if not chunk:
                    raise OSError(f"{self.url} is shorter than before ({offset} bytes read earlier)")
                remaining -= len(chunk)
        return response

    def read(self, size: int = -1) -> bytes:
        failures = 0
        while True:
            try:
                if self._response is None:
                    self._response = self._open(self.position)
                data = self._response.read(size)
                missing = getattr(self._response, "length", None)
                if not data and size != 0 and missing:  # http.client reports a cut transfer as EOF
                    raise http.client.IncompleteRead(b"", missing)
            except (OSError, http.client.HTTPException) as exc:  # resets, timeouts, IncompleteRead
                failures += 1
                self.close()
                if failures > URL_RETRIES:
                    raise
                log.warning("%s: %s; resuming at byte %d (retry %d of %d)", self.url, exc, self.position,
                            failures, URL_RETRIES)
                time.sleep(URL_BACKOFF_S * 2 ** (failures - 1))
                continue
            self.position += len(data)
            return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None


def is_remote(path: str) -> bool:
    """True for a URL (``hf://``, ``https://``, ``file://``, any fsspec protocol), False for a local path."""
    return "://" in str(path)


def _scheme(location: str) -> str:
    return location.split("://", 1)[0].lower()


def _filesystem(location: str):
    """The fsspec filesystem of a non-http URL (``hf://`` is huggingface_hub's HfFileSystem) and the path in it."""
    import fsspec

    return fsspec.core.url_to_fs(location)


def _open_location(location: str, seekable: bool = False) -> IO[bytes]:
    """A binary reader of a local path or a URL, streamed for sequential formats."""
    if not is_remote(location):
        return open(location, "rb")
    if _scheme(location) in ("http", "https", "file"):
        if seekable:
            raise CorpusError(f"{location}: parquet files are read from local paths or hf:// paths, not from URLs")
        return _UrlReader(location)
    fs, path = _filesystem(location)
    # HfFileSystem streams one GET (and resumes it once) with block_size=0; parquet needs seeking.
    kwargs = {"block_size": 0} if not seekable and "hf" in _protocols(fs) else {}
    return fs.open(path, "rb", **kwargs)


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _reason(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}".rstrip(": ")


def staging_hint(path: str, url_list: bool) -> str:
    """How to read a remote corpus path without network: what to download and where to point ``path``."""
    match = _HF_DATASET.match(path)
    if match:
        repo, inner = match["repo"], match["inner"]
        revision = f" --revision {match['revision']}" if match["revision"] else ""
        if url_list:
            folder = posixpath.dirname(inner)
            return (
                f"download the list and the files it names where the network is reachable (`hf download {repo} "
                f"{inner} --repo-type dataset{revision} --local-dir DIR`, then `wget -i DIR/{inner} -P "
                f"DIR/{folder or '.'}`), copy DIR to this machine and set the corpus path to DIR/{inner} "
                "(listed files are read from the list's directory)"
            )
        return (
            f"download it where the hub is reachable (`hf download {repo} --repo-type dataset{revision} --include "
            f"'{inner}' --local-dir DIR`), copy DIR to this machine and set the corpus path to DIR/{inner}"
        )
    if url_list and not is_remote(path):
        folder = os.path.dirname(path) or "."
        return f"download the listed files into the list's directory (`wget -i {path} -P {folder}`)"
    if url_list:
        name = posixpath.basename(urllib.parse.urlparse(path).path)
        return (
            f"download the list and its files (`wget -P DIR {path}` then `wget -i DIR/{name} -P DIR`) and set "
            f"the corpus path to DIR/{name}"
        )
    return f"download {path} where the network is reachable and set the corpus path to the local copy"


def _cannot_read(location: str, exc: BaseException, hint: str) -> str:
    """One line: what failed, why, and (for a network failure) what to pre-download and where."""
    if isinstance(exc, FileNotFoundError) or getattr(exc, "code", None) == 404:
        return f"cannot read {location}: not found ({_reason(exc)})"
    message = f"cannot read {location} ({_reason(exc)}); without network access, {hint}"
    status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "code", None)
    if status in (401, 403) or "Gated" in type(exc).__name__:
        message += "; if the repository is gated, accept its terms on huggingface.co and set HF_TOKEN"
    return message


@contextlib.contextmanager
def _converting_errors(location: str, hint: str) -> Iterator[None]:
    """Turn read failures into a CorpusError naming the file (a remote one: also what to download)."""
    try:
        yield
    except CorpusError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        if not is_remote(location):
            raise CorpusError(f"cannot read {location}: {exc}") from None
        raise CorpusError(_cannot_read(location, exc, hint)) from None
    except Exception as exc:  # the hub client raises its own types (httpx errors, HfHubHTTPError, ...)
        if not is_remote(location):
            raise
        raise CorpusError(_cannot_read(location, exc, hint)) from None


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


def _resolve_remote(path: str, fmt: str) -> list[Source]:
    """A URL as is; an fsspec path (hf://...) as one file, a directory's matching files, or a glob's matches."""
    if _scheme(path) in ("http", "https", "file"):
        return [Source(path)]
    fs, inner = _filesystem(path)
    if globlib.has_magic(inner):
        matches = sorted(p for p, info in fs.glob(inner, detail=True).items() if info.get("type") == "file")
        what = "glob match"
    elif fs.isdir(inner):
        matches = sorted(p for p in fs.find(inner) if p.endswith(_EXTENSIONS[fmt]))
        what = f"{fmt} file ({', '.join(_EXTENSIONS[fmt])}) in that directory"
    else:
        return [Source(path)]
    if not matches:
        raise CorpusError(f"corpus path {path}: no {what}")
    return [Source(fs.unstrip_protocol(p)) for p in matches]


def _resolve_url_list(path: str, stats: ReadStats) -> list[Source]:
    """The files a URL list names, one per non-blank line (``#`` starts a comment line).

    A local list is a mirror's index: a listed http(s) file found in the list's directory under its
    own name is read from there, any other is fetched.
    """
    with contextlib.closing(_open_location(path)) as handle:
        raw = handle.read()
    try:
        entries = [line.strip() for line in raw.decode("utf-8").splitlines()]
    except UnicodeDecodeError:
        raise CorpusError(f"URL list {path} is not UTF-8 text (url_list: true expects one URL per line)") from None
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise CorpusError(f"URL list {path} names no files")
    if entries[0].startswith(("{", "[")):
        raise CorpusError(f"URL list {path} holds JSON, not one URL per line; is url_list: true meant?")
    local = not is_remote(path)
    base = os.path.dirname(os.path.abspath(path)) if local else path.rsplit("/", 1)[0]
    sources = []
    for entry in entries:
        if _scheme(entry) in ("http", "https") and local:
            name = PurePosixPath(urllib.parse.urlparse(entry).path).name
            mirrored = os.path.join(base, name)
            sources.append(Source(mirrored, listed=entry) if os.path.isfile(mirrored) else Source(entry))
        elif is_remote(entry) or os.path.isabs(entry):
            sources.append(Source(entry))
        else:  # a path relative to the list
            sources.append(Source(os.path.join(base, entry) if local else f"{base}/{entry}"))
    names = [PurePosixPath(urllib.parse.urlparse(e).path).name for e in entries]
    if local and len(set(names)) < len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise CorpusError(f"URL list {path} names two files called {duplicate}; a mirror keeps files by name")
    stats.url_list = {
        "path": path,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "n_files": len(sources),
        "n_from_local_mirror": sum(s.listed is not None for s in sources),
    }
    return sources


def resolve_sources(path: str, fmt: str, stats: ReadStats, url_list: bool = False) -> list[Source]:
    """The data files a corpus spec names, in reading order (local paths and URLs; no network for local ones)."""
    hint = staging_hint(path, url_list)
    with _converting_errors(path, hint):
        if url_list:
            return _resolve_url_list(path, stats)
        if is_remote(path):
            return _resolve_remote(path, fmt)
    return [Source(str(p)) for p in resolve_files(path, fmt)]


def _finish_file(source: Source, raw: IO[bytes], hashing: _HashingReader, stats: ReadStats) -> None:
    # Hash whatever the decompressor left unread (gzip trailer padding) so the sum covers the file.
    for chunk in iter(lambda: hashing.read(_READ_CHUNK), b""):
        pass
    raw.close()
    record = {"path": source.location, "sha256": hashing.digest.hexdigest()}
    if source.listed is not None:
        record["url"] = source.listed
    stats.files.append(record)


def _binary_lines(stream: IO[bytes]) -> Iterator[bytes]:
    buffer = b""
    for chunk in iter(lambda: stream.read(_READ_CHUNK), b""):
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


def _byte_lines(source: Source, stats: ReadStats, hint: str) -> Iterator[bytes]:
    """The lines of one (optionally gzipped) file, hashed while read; errors name the file."""
    log.info("reading %s", source.location)
    with _converting_errors(source.location, hint):
        raw = _open_location(source.location)
        try:
            hashing = _HashingReader(raw)
            name = urllib.parse.urlparse(source.location).path if is_remote(source.location) else source.location
            stream = gzip.GzipFile(fileobj=hashing, mode="rb") if name.endswith(".gz") else hashing
            yield from _binary_lines(stream)
            _finish_file(source, raw, hashing, stats)
        finally:
            raw.close()


def iter_jsonl(sources: list[Source], text_field: str, stats: ReadStats, hint: str = "") -> Iterator[str]:
    """Texts from JSON-lines files (optionally gzipped): one object per line, text in ``text_field``."""
    for source in sources:
        for lineno, line in enumerate(_byte_lines(source, stats, hint), start=1):
            if not line.strip():
                continue
            where = f"{source.location}:{lineno}"
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


def iter_txt(sources: list[Source], unit: str, stats: ReadStats, hint: str = "") -> Iterator[str]:
    """Texts from plain-text files: one per non-blank ``line``, per blank-line ``paragraph``, or per ``file``."""
    if unit not in ("line", "paragraph", "file"):
        raise CorpusError(f"unknown txt_unit {unit!r}; expected line, paragraph or file")
    for source in sources:
        lines = (_decode_line(b, source.location, stats) for b in _byte_lines(source, stats, hint))
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
        else:
            text = "\n".join(lines)
            stats.n_records += 1
            if text.strip():
                yield text
            else:
                stats.n_empty += 1


def iter_parquet(sources: list[Source], text_field: str, stats: ReadStats, hint: str = "") -> Iterator[str]:
    """Texts from the ``text_field`` column of parquet files, read in record batches."""
    import pyarrow.parquet as pq

    for source in sources:
        location = source.location
        log.info("reading %s", location)
        with _converting_errors(location, hint):
            with contextlib.closing(_open_location(location, seekable=True)) as handle:
                try:
                    parquet = pq.ParquetFile(handle)
                except (OSError, EOFError, zlib.error):
                    raise
                except Exception as exc:  # pyarrow raises ArrowInvalid and other non-OSError types
                    raise CorpusError(f"cannot read parquet file {location}: {exc}") from None
                columns = parquet.schema_arrow.names
                if text_field not in columns:
                    raise CorpusError(
                        f"{location}: no column {text_field!r} (columns: {', '.join(columns)}); set text_field"
                    )
                for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
                    for text in batch.column(0).to_pylist():
                        stats.n_records += 1
                        if not isinstance(text, str) or not text.strip():
                            stats.n_empty += 1
                            continue
                        yield text
        stats.files.append({"path": location, "sha256": _parquet_checksum(location)})


def _parquet_checksum(location: str) -> str | None:
    """SHA-256 of a local file; for a remote one the hub's LFS checksum where it has one (no second download)."""
    if not is_remote(location):
        return sha256_file(location)
    try:
        fs, path = _filesystem(location)
        return (fs.info(path).get("lfs") or {}).get("sha256")
    except Exception:  # provenance only: a missing checksum is recorded as null
        return None


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
    if fmt == "hf":
        if spec.get("url_list"):
            raise CorpusError("url_list applies to the jsonl, txt and parquet formats, not to hf")
        return iter_hf(path, field_name, spec.get("hf", {}), stats)
    if fmt not in FORMATS:
        raise CorpusError(f"unknown corpus format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _iter_files(spec, path, stats)


def _iter_files(spec: Mapping, path: str, stats: ReadStats) -> Iterator[str]:
    fmt, url_list = spec["format"], bool(spec.get("url_list", False))
    sources = resolve_sources(path, fmt, stats, url_list)
    hint = staging_hint(path, url_list)
    field_name = spec.get("text_field", "text")
    if fmt == "jsonl":
        yield from iter_jsonl(sources, field_name, stats, hint)
    elif fmt == "txt":
        yield from iter_txt(sources, spec.get("txt_unit", "file"), stats, hint)
    else:
        yield from iter_parquet(sources, field_name, stats, hint)
