"""lsdseg.files: the one atomic write and the one file hash; lsdseg.data.natural_key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lsdseg.data import natural_key
from lsdseg.files import atomic_path, sha256_file, write_bytes_atomic, write_text_atomic


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "summary.json"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, '{"ü": 1}\n')
    assert path.read_bytes() == '{"ü": 1}\n'.encode()
    assert write_bytes_atomic(path, b"\x00\x01") == path and path.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("kept\n")
    with pytest.raises(OSError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert path.read_text() == "kept\n" and [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write_text_atomic(path / "x.json", "{}")


def test_sha256_file_hashes_the_files_one_after_the_other(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"weights" * 100_000)  # more than one 1 MiB chunk
    b.write_bytes(b"config")
    whole = hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert sha256_file(a, b) == whole[:16]
    assert sha256_file(a, digits=64) == hashlib.sha256(a.read_bytes()).hexdigest()


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["10.png", "2.png", "Frame_1.png", "1.png", "frame_10.png", "frame_9.png"]
    got = sorted((Path(n) for n in names), key=natural_key)
    assert [p.name for p in got] == [
        "1.png",
        "2.png",
        "10.png",
        "Frame_1.png",
        "frame_9.png",
        "frame_10.png",
    ]
