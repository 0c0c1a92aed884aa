"""lsdseg.files: the one atomic write and the one file hash; lsdseg.data.natural_key."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest

from lsdseg.data import natural_key
from lsdseg.files import (
    atomic_path,
    is_replaceable,
    printable_name,
    sha256_file,
    write_bytes_atomic,
    write_text_atomic,
)


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


def test_a_fifo_is_written_in_place_never_replaced(tmp_path: Path) -> None:
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    path_fifo_backup = tmp_path / "pipe.keep"  # a hard link: still the pipe if fifo is replaced
    os.link(fifo, path_fifo_backup)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    try:
        write_text_atomic(fifo, "through the pipe\n")
        reader.join(10)
    finally:
        if reader.is_alive():  # the pipe was replaced, say: free the blocked reader
            with contextlib.suppress(OSError):
                os.close(os.open(path_fifo_backup, os.O_WRONLY | os.O_NONBLOCK))
    assert got == [b"through the pipe\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the pipe, not a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "pipe.keep"]  # no temporary
    assert not is_replaceable(fifo)


def test_a_private_character_device_is_written_in_place(tmp_path: Path) -> None:
    import stat

    node = tmp_path / "null"  # a private node of the null device, in a temporary folder
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        node.write_bytes(b"probe")  # a folder on a nodev mount cannot open device nodes
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make or open a device node here: {e}")
    write_bytes_atomic(node, b"discarded")
    assert stat.S_ISCHR(os.stat(node).st_mode)  # before: replaced by a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_a_symlink_stays_a_link_and_its_target_is_written(tmp_path: Path) -> None:
    target = tmp_path / "real" / "out.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and not target.is_symlink()
    assert not is_replaceable(link) and is_replaceable(target)


def test_other_kinds_of_file_are_refused(tmp_path: Path) -> None:
    import socket

    sock_path = tmp_path / "s"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        with pytest.raises(ValueError, match="neither a regular file"):
            write_text_atomic(sock_path, "x")
    finally:
        sock.close()
    with pytest.raises(ValueError, match="is a folder"):
        write_text_atomic(tmp_path, "x")


def test_printable_name_keeps_utf8_and_escapes_other_bytes() -> None:
    assert printable_name("polyp é.png") == "polyp é.png"
    assert printable_name(os.fsdecode(b"a\xff.png")) == "a\\xff.png"
    assert printable_name("lone \ud800") == "lone \\ud800"
