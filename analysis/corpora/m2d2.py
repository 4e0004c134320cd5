"""Reader for the M2D2 release: ``<root>/<domain>/{train,valid,test}.txt`` or ``<root>/<domain>.tar.gz``.

In the release one line is one paragraph and blank lines separate documents; both are kept exactly
(lines are split on ``\\n`` only, never on other Unicode line breaks). How lines become texts is an
explicit, recorded policy (``documents``). The ``datasets`` loading script of M2D2 is not used: it is
gone in datasets 4 and it strips every line.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

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


def _decode(data: bytes, source: str, max_invalid_fraction: float) -> tuple[list[str], int, int]:
    """Split bytes on newlines and decode each line as UTF-8.

    Undecodable bytes become U+FFFD and are counted; if more than ``max_invalid_fraction`` of the
    lines are damaged the file is not treated as text at all.
    Returns (lines, n_invalid_lines, n_replaced_bytes).
    """
    if data.endswith(b"\n"):
        data = data[:-1]
    raw_lines = data.split(b"\n") if data else []
    try:
        return [line.decode("utf-8") for line in raw_lines], 0, 0
    except UnicodeDecodeError:
        pass
    lines, n_invalid, n_bytes = [], 0, 0
    for raw in raw_lines:
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            n_invalid += 1
            n_bytes += _count_invalid_bytes(raw)
            lines.append(text)
    if raw_lines and n_invalid / len(raw_lines) > max_invalid_fraction:
        raise CorpusError(
            f"{source}: not UTF-8 text: {n_invalid} of {len(raw_lines)} lines contain invalid "
            f"UTF-8 bytes (more than the allowed fraction {max_invalid_fraction}; see "
            "m2d2.max_invalid_line_fraction)"
        )
    return lines, n_invalid, n_bytes


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


def read_split(
    root: str | Path, domain: str, split: str, max_invalid_fraction: float = 0.01
) -> SplitText:
    """Read one split of one domain, from a directory or directly from its archive."""
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    location = locate_domain(root, domain)
    if location.kind == "directory":
        path = location.path / f"{split}.txt"
        if not path.is_file():
            raise CorpusError(f"M2D2 split file not found: {path}")
        data = path.read_bytes()
        source = str(path)
    else:
        source, data = _read_archive_split(location.path, domain, split)

    lines, n_invalid, n_bytes = _decode(data, source, max_invalid_fraction)
    n_blank = sum(1 for line in lines if not line.strip())
    if len(lines) == n_blank:
        raise CorpusError(f"M2D2 split is empty (no non-blank line): {source}")
    result = SplitText(
        domain=domain,
        split=split,
        source=source,
        lines=lines,
        sha256=hashlib.sha256(data).hexdigest(),
        n_blank_lines=n_blank,
        n_invalid_lines=n_invalid,
        n_replaced_bytes=n_bytes,
    )
    if n_invalid:
        message = (
            f"{source}: {n_invalid} of {len(lines)} lines had invalid UTF-8; "
            f"{n_bytes} bytes were replaced with U+FFFD"
        )
        log.warning(message)
        result.warnings.append(message)
    return result


def _read_archive_split(archive: Path, domain: str, split: str) -> tuple[str, bytes]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            member = _archive_member(tar, archive, domain, split)
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CorpusError(f"cannot read M2D2 archive {archive}: corrupted or truncated ({exc})") from None
    return f"{archive}:{member.name}", data


def documents(lines: list[str], policy: str) -> list[str]:
    """Turn a split's lines into texts.

    ``line``: every non-blank line is a text (a paragraph in the release).
    ``paragraph``: each run of non-blank lines between blank lines is a text, joined with ``\\n``.
    Lines are returned exactly as released (no stripping).
    """
    if policy == "line":
        return [line for line in lines if line.strip()]
    if policy == "paragraph":
        docs, current = [], []
        for line in lines:
            if line.strip():
                current.append(line)
            elif current:
                docs.append("\n".join(current))
                current = []
        if current:
            docs.append("\n".join(current))
        return docs
    raise CorpusError(f"unknown document policy {policy!r}; expected one of {DOCUMENT_POLICIES}")


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
