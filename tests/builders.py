"""Builders for small M2D2 trees in both release forms, written byte for byte."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Blank lines separate documents; the last split ends without a trailing newline on purpose.
WIKI_TRAIN = "Title one\nFirst paragraph.\nSecond paragraph.\n\nTitle two\nOnly paragraph.\n\n"
WIKI_VALID = "Valid title\nValid paragraph.\n"
WIKI_TEST = "Test title\n  indented paragraph  \n\nLast one"
PAPER_TRAIN = "A paper\nAbstract\nWe measure $x$.\n1 Introduction\n$$ E = mc^2 $$\n\nSecond paper\nText.\n"


def write_domain_dir(root: Path, domain: str, splits: dict[str, str | bytes]) -> Path:
    directory = root / domain
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in splits.items():
        data = text.encode("utf-8") if isinstance(text, str) else text
        (directory / f"{split}.txt").write_bytes(data)
    return directory


def write_domain_archive(root: Path, domain: str, splits: dict[str, str], prefix: str | None = None) -> Path:
    """``<domain>.tar.gz`` with members ``<prefix>/<split>.txt`` (prefix defaults to the domain)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{domain}.tar.gz"
    prefix = domain if prefix is None else prefix
    with tarfile.open(path, "w:gz") as tar:
        for split, text in splits.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{prefix}/{split}.txt" if prefix else f"{split}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


