"""Reader for the M2D2 release: ``<root>/<domain>/{train,valid,test}.txt`` or ``<root>/<domain>.tar.gz``.

In the release one line is one paragraph and blank lines separate documents; both are kept exactly
(lines are split on ``\\n`` only, never on other Unicode line breaks). How lines become texts is an
explicit, recorded policy (``documents``). The ``datasets`` loading script of M2D2 is not used: it is
gone in datasets 4 and it strips every line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from analysis.corpora import catalogue
from analysis.errors import CorpusError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DOCUMENT_POLICIES = ("line", "paragraph")
#: How a split becomes language-model text (``lm_texts``):
#: ``keep``: the split exactly as released, one text (lines joined with "\n", blank lines kept): the
#: release's own layout and the text the M2D2 evaluation script scores;
#: ``strip``: every line stripped, blank lines dropped, the texts concatenated with no separator
#: (what a ``datasets`` loader that strips lines feeds to a ``run_clm``-style pipeline: no newline
#: is ever trained on);
#: ``line`` / ``paragraph``: the document policies, each text followed by EOS.
JOIN_POLICIES = ("keep", "strip", *DOCUMENT_POLICIES)


@dataclass(frozen=True)
class DomainLocation:
    """Where a domain's splits live: a directory, or a member-per-split archive."""

    domain: str
    kind: str  # "directory" or "archive"
    path: Path

    def input_files(self, splits=SPLITS) -> list[Path]:
        """The files a workflow rule should depend on to read ``splits`` of this domain."""
        if self.kind == "archive":
            return [self.path]
        return [self.path / f"{split}.txt" for split in splits]


@dataclass
class SplitText:
    """The lines of one split exactly as released (trailing newline removed), with read statistics."""

    domain: str
    split: str
    source: str  # file path, or "archive.tar.gz:member"
    lines: list[str]
    sha256: str
    n_blank_lines: int = 0
    n_invalid_lines: int = 0
    n_replaced_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def locate_domain(root: str | Path, domain: str) -> DomainLocation:
    """Find a domain under ``root`` as a directory or an archive; a clear error otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"M2D2 root directory not found: {root}")
    directory = root / domain
    if directory.is_dir():
        return DomainLocation(domain, "directory", directory)
    for suffix in ARCHIVE_SUFFIXES:
        archive = root / f"{domain}{suffix}"
        if archive.is_file():
            return DomainLocation(domain, "archive", archive)
    hint = catalogue.did_you_mean(domain, available_domains(root))
    raise CorpusError(
        f"M2D2 domain {domain!r} not found: neither directory {directory} nor archive "
        f"{root / (domain + '.tar.gz')} exists{hint}"
    )


def available_domains(root: str | Path) -> set[str]:
    """Domain names present under an M2D2 root, as directories or archives."""
    names = set()
    for entry in Path(root).iterdir():
        if entry.is_dir():
            names.add(entry.name)
            continue
        for suffix in ARCHIVE_SUFFIXES:
            if entry.name.endswith(suffix):
                names.add(entry.name[: -len(suffix)])
                break
    return names


def _decode_lines(block: bytes, counts: "_DecodeCounts") -> list[str]:
    """The lines of ``block`` (complete lines joined by ``\\n``, without the last line's newline).

    Undecodable bytes become U+FFFD and are counted in ``counts``. A newline byte never occurs inside
    a multi-byte UTF-8 sequence, so decoding line by line equals decoding the whole file.
    """
    try:
        return block.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        pass
    lines = []
    for raw in block.split(b"\n"):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            counts.invalid_lines += 1
            counts.replaced_bytes += _count_invalid_bytes(raw)
            lines.append(raw.decode("utf-8", errors="replace"))
    return lines


@dataclass
class _DecodeCounts:
    invalid_lines: int = 0
    replaced_bytes: int = 0


def _count_invalid_bytes(raw: bytes) -> int:
    count, start = 0, 0
    while start < len(raw):
        try:
            raw[start:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            count += exc.end - exc.start
            start += exc.end
    return count


def _archive_member(tar: tarfile.TarFile, archive: Path, domain: str, split: str) -> tarfile.TarInfo:
    """The archive member holding ``split``: ``<split>.txt`` at any depth, preferring ``<domain>/``."""
    wanted = f"{split}.txt"
    candidates = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name == wanted]
    if not candidates:
        raise CorpusError(f"split file {wanted!r} not found in archive {archive}")
    if len(candidates) == 1:
        return candidates[0]
    preferred = [m for m in candidates if Path(m.name).parent.name == domain]
    if len(preferred) == 1:
        return preferred[0]
    names = ", ".join(m.name for m in candidates)
    raise CorpusError(f"archive {archive} holds several {wanted!r} files ({names}); cannot choose")


_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class SplitStream:
    """The lines of one split, streamed from its file or archive member in bounded memory.

    Iterating yields the lines exactly as released (split on ``\\n`` only, the file's final newline
    removed), decoded as UTF-8; each iteration reads the file again. The checks that need the whole
    split run when an iteration ends: more than ``max_invalid_fraction`` damaged lines, or no non-blank
    line, raise ``CorpusError`` naming the file; afterwards ``sha256`` and the counts describe it.
    """

    def __init__(self, root: str | Path, domain: str, split: str, max_invalid_fraction: float = 0.01,
                 chunk_bytes: int = 1 << 22):
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        self.domain, self.split = domain, split
        self.location = locate_domain(root, domain)
        self.max_invalid_fraction = max_invalid_fraction
        self.chunk_bytes = chunk_bytes
        if self.location.kind == "directory":
            self.path = self.location.path / f"{split}.txt"
            if not self.path.is_file():
                raise CorpusError(f"M2D2 split file not found: {self.path}")
            self.source = str(self.path)
        else:
            self.path = self.location.path
            self.source = str(self.path)  # completed with the member's name on the first read
        self.sha256: str | None = None
        self.n_lines = self.n_blank_lines = self.n_invalid_lines = self.n_replaced_bytes = 0
        self.warnings: list[str] = []

    def _chunks(self) -> Iterator[bytes]:
        if self.location.kind == "directory":
            with open(self.path, "rb") as handle:
                yield from iter(lambda: handle.read(self.chunk_bytes), b"")
            return
        try:
            with tarfile.open(self.path, "r:*") as tar:
                member = _archive_member(tar, self.path, self.domain, self.split)
                self.source = f"{self.path}:{member.name}"
                handle = tar.extractfile(member)
                if handle is not None:
                    yield from iter(lambda: handle.read(self.chunk_bytes), b"")
        except _ARCHIVE_ERRORS as exc:
            raise CorpusError(
                f"cannot read M2D2 archive {self.path}: corrupted or truncated ({exc})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        digest = hashlib.sha256()
        counts = _DecodeCounts()
        n_lines = n_blank = 0
        remainder = b""
        for chunk in self._chunks():
            digest.update(chunk)
            data = remainder + chunk if remainder else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                remainder = data
                continue
            remainder = data[cut + 1 :]
            for line in _decode_lines(data[:cut], counts):
                n_lines += 1
                if not line.strip():
                    n_blank += 1
                yield line
        if remainder:  # a last line without a final newline
            for line in _decode_lines(remainder, counts):
                n_lines += 1
                if not line.strip():
                    n_blank += 1
                yield line
        self._finish(digest.hexdigest(), n_lines, n_blank, counts)

    def _finish(self, sha256: str, n_lines: int, n_blank: int, counts: _DecodeCounts) -> None:
        if n_lines and counts.invalid_lines / n_lines > self.max_invalid_fraction:
            raise CorpusError(
                f"{self.source}: not UTF-8 text: {counts.invalid_lines} of {n_lines} lines contain invalid "
                f"UTF-8 bytes (more than the allowed fraction {self.max_invalid_fraction}; see "
                "m2d2.max_invalid_line_fraction)"
            )
        if n_lines == n_blank:
            raise CorpusError(f"M2D2 split is empty (no non-blank line): {self.source}")
        self.sha256, self.n_lines, self.n_blank_lines = sha256, n_lines, n_blank
        self.n_invalid_lines, self.n_replaced_bytes = counts.invalid_lines, counts.replaced_bytes
        self.warnings = []
        if counts.invalid_lines:
            message = (
                f"{self.source}: {counts.invalid_lines} of {n_lines} lines had invalid UTF-8; "
                f"{counts.replaced_bytes} bytes were replaced with U+FFFD"
            )
            log.warning(message)
            self.warnings.append(message)


def read_split(
    root: str | Path, domain: str, split: str, max_invalid_fraction: float = 0.01
) -> SplitText:
    """Read one split of one domain, from a directory or directly from its archive, into memory.

    For small splits and tests; the pipeline's stages stream with ``SplitStream``.
    """
    stream = SplitStream(root, domain, split, max_invalid_fraction)
    lines = list(stream)
    return SplitText(
        domain=domain,
        split=split,
        source=stream.source,
        lines=lines,
        sha256=stream.sha256,
        n_blank_lines=stream.n_blank_lines,
        n_invalid_lines=stream.n_invalid_lines,
        n_replaced_bytes=stream.n_replaced_bytes,
        warnings=stream.warnings,
    )


def text_bytes(root: str | Path, domain: str, splits=SPLITS) -> int:
    """About how many bytes of text ``splits`` of a domain hold, without reading them (0 when the
    domain is not there yet): file sizes, or a whole archive's uncompressed size (gzip's trailer;
    4x the compressed size for other compressions). For resources planned before a job runs."""
    try:
        location = locate_domain(root, domain)
    except CorpusError:
        return 0
    if location.kind == "directory":
        return sum(p.stat().st_size for p in location.input_files(splits) if p.is_file())
    return archive_text_bytes(location.path)


def archive_text_bytes(path: str | Path) -> int:
    """The uncompressed size of a ``.tar.gz`` from gzip's ISIZE trailer (the size modulo 2^32,
    completed on the assumption that the text is at least as large as the archive); a plain ``.tar``
    is its own size; other archives 4x their size."""
    path = Path(path)
    size = path.stat().st_size
    if path.name.endswith(".tar"):
        return size
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b" or size < 18:
            return 4 * size
        handle.seek(-4, os.SEEK_END)
        isize = int.from_bytes(handle.read(4), "little")
    while isize < size:
        isize += 1 << 32
    return isize


def iter_documents(lines: Iterable[str], policy: str) -> Iterator[str]:
    """Turn a split's lines into texts, one at a time.

    ``line``: every non-blank line is a text (a paragraph in the release).
    ``paragraph``: each run of non-blank lines between blank lines is a text, joined with ``\\n``.
    Lines are returned exactly as released (no stripping).
    """
    if policy == "line":
        yield from (line for line in lines if line.strip())
        return
    if policy == "paragraph":
        current: list[str] = []
        for line in lines:
            if line.strip():
                current.append(line)
            elif current:
                yield "\n".join(current)
                current = []
        if current:
            yield "\n".join(current)
        return
    raise CorpusError(f"unknown document policy {policy!r}; expected one of {DOCUMENT_POLICIES}")


def documents(lines: list[str], policy: str) -> list[str]:
    """``iter_documents`` as a list."""
    if policy not in DOCUMENT_POLICIES:
        raise CorpusError(f"unknown document policy {policy!r}; expected one of {DOCUMENT_POLICIES}")
    return list(iter_documents(lines, policy))


def lm_texts(lines: list[str], policy: str) -> list[str]:
    """The texts a language model reads from a split's lines under a join policy (``JOIN_POLICIES``)."""
    if policy == "keep":
        return ["\n".join(lines)]
    if policy == "strip":
        return [line.strip() for line in lines if line.strip()]
    if policy in DOCUMENT_POLICIES:
        return documents(lines, policy)
    raise CorpusError(f"unknown join policy {policy!r}; expected one of {JOIN_POLICIES}")


def ends_with_eos(policy: str) -> bool:
    """Whether each text of the policy is followed by EOS in the token stream (all but ``strip``)."""
    return policy != "strip"
