"""Atomic file writes and file hashes, one of each for the whole package.

A file written with these goes to a temporary sibling first and is renamed into place with
``os.replace``, so a crash, a kill, a full disk or an error never leaves a half-written
graph, engine, metrics table, ``splits.json`` or summary under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary file is removed when the block raises (or writes nothing).

    Raises:
        ValueError: ``path``'s folder is an existing file.
    """
    path = Path(path)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder; choose another output folder")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.stat().st_size == 0:
            raise RuntimeError(f"nothing was written for {path}")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp creates private (0600) files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def printable_name(name: str) -> str:
    """A file name as text any writer can store: bytes of the name that are not UTF-8 (which
    ``os.fsdecode`` turns into lone surrogates that no UTF-8 file can hold) as ``\\xNN``.

    ``printable_name(os.fsdecode(b"a\\xff.png")) == "a\\\\xff.png"``; a UTF-8 name is unchanged.
    """
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def sha256_file(*paths: str | Path, digits: int = 16) -> str:
    """SHA-256 of the bytes of ``paths`` one after the other, the first ``digits`` hex digits."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:digits]
