"""Atomic output writers and checksums.

Every output is written to a temporary file in the destination directory and renamed into place, so
a crash or a kill never leaves a half-written table that a later run would mistake for a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

_HASH_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp_path
        # mkdtemp makes 0700, and some writers 0600: give the outputs the usual modes.
        os.chmod(tmp_path, 0o777 & ~_umask())
        for item in tmp_path.rglob("*"):
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` when the block exits without error."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable across runs), atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (no newline translation)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def derive_seed(base_seed: int, *names: str) -> int:
    """A 31-bit seed for one item (a corpus, a domain) derived from the config's single seed.

    Derived per item so that adding a domain to the config leaves every other domain's sample as it was.
    """
    digest = hashlib.sha256(":".join([str(base_seed), *names]).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def user_cache_dir() -> Path:
    """Where the pipeline keeps what it may recompute at any time (checks that passed, configs read
    from GGUF files): ``$XDG_CACHE_HOME/adaptation-odyssey``, ``~/.cache`` by default."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adaptation-odyssey"
