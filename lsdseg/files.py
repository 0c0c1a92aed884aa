"""Atomic file writes, file hashes and JSON-ready values, one of each for the whole package.

A file written with these goes to a temporary sibling first and is renamed into place with
``os.replace``, so a crash, a kill, a full disk or an error never leaves a half-written
graph, engine, metrics table, ``splits.json`` or summary under the final name.

Only a regular file (or a new name) is replaced that way. A symbolic link stays a link: the
file it points to is written. A character device or a FIFO (``/dev/stdout``, ``/dev/null``, a
named pipe) is written in place, never replaced by a file; any other kind of file (a block
device, a socket) is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary file is removed when the block raises (or writes nothing).

    A symbolic link is followed (the file it points to is written, the link stays); a
    character device or a FIFO is yielded itself, to be written in place (see the module).

    Raises:
        ValueError: ``path``'s folder is an existing file, or ``path`` is a block device, a
            socket or another kind of file that is neither replaced nor written in place.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # the link's target: a loop raises RuntimeError (OSError on 3.13)
    kind = _kind(path)
    if kind == "stream":
        yield path
        return
    if kind == "other" and path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    if kind == "other":
        raise ValueError(
            f"{path} is neither a regular file nor a character device or FIFO; write to a "
            "file name instead"
        )
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


def _kind(path: Path) -> str:
    """``file`` (a regular file, or nothing yet), ``stream`` (a character device or FIFO,
    written in place) or ``other``."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there yet (or a file above it)
        return "file"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream"
    return "other"


def is_replaceable(path: str | Path) -> bool:
    """Whether ``path`` is a regular file or missing, so removing or replacing it loses no
    device, pipe or link (a writer that cleans up after a failed write asks this first)."""
    path = Path(path)
    return not path.is_symlink() and _kind(path) == "file"


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename); a character
    device or FIFO is written in place (see :func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if _kind(tmp) == "file":  # fsync of a device or pipe fails (EINVAL)
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


def json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts, lists and tuples) made None,
    so JSON files get ``null`` instead of the bare ``NaN`` that JSON does not allow."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value
