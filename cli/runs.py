"""Run folders: ``runs/<command>/exp``, ``exp2``, ... as users of detection tools expect."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from lsdseg.cli.errors import UserError


def next_run_dir(project: str, name: str, exist_ok: bool) -> Path:
    """``project/name``, or the first free ``project/name2``, ``name3``... (created)."""
    base = Path(project) / name
    if exist_ok:
        base.mkdir(parents=True, exist_ok=True)
        return base
    n = 1
    while True:
        path = base if n == 1 else Path(project) / f"{name}{n}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1


def check_apart(project: str, name: str, exist_ok: bool, inputs: list[Path]) -> None:
    """Refuse a run whose outputs would land on, or in the folder of, one of its inputs.

    Only a reused run folder (``--exist-ok`` and ``project/name`` exists) can hold inputs; a
    new one is empty. An input file or folder that is, or lies inside, that folder could be
    overwritten (an overlay over an input image, the output video over the input video).
    Nothing is created.

    Raises:
        UserError: one line naming the input and the run folder.
    """
    base = Path(project) / name
    if not exist_ok or not base.is_dir():
        return
    out = base.resolve()
    for path in inputs:
        try:
            where = Path(path).resolve()
        except (OSError, RuntimeError):  # a symlink loop: nothing there can be overwritten
            continue
        if where == out or out in where.parents:
            raise UserError(
                f"--project/--name {base} holds the input {path}: the outputs would be written "
                "over the inputs; choose another --project or --name"
            )


def add_run_folder_options(parser: argparse._ActionsContainer, project: str) -> None:
    """``--project``, ``--name`` and ``--exist-ok``, as every command that writes a run has."""
    parser.add_argument("--project", default=project, help="parent of the run folders")
    parser.add_argument("--name", default="exp", help="run folder name (exp, exp2, ...)")
    parser.add_argument("--exist-ok", action="store_true", help="reuse the run folder if it exists")


def check_writable(path: str | Path, option: str, folder: bool = True) -> None:
    """Fail now, in one line naming the path, if a command could not write ``path`` later.

    ``path`` is a folder to create or write into (``folder``), or a file to write. Nothing is
    created: a run that never starts leaves nothing behind.

    Raises:
        UserError: the path, or one of the folders above it, is a file; a file path is a
            folder; or the nearest existing folder is not writable.
    """
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise UserError(f"{option} {path}: is a file, not a folder; choose another {option}")
    if not folder and target.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    probe = target if folder else target.parent
    while not probe.exists() and probe != probe.parent:  # the nearest folder that exists
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {path}: {probe} is a file, so nothing can be written under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: {probe} is not writable (permission denied)")


LOCK_NAME = ".lock"  # in a run folder: held (flock) by the process writing the run


@contextlib.contextmanager
def run_lock(folder: str | Path, option: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on the run folder ``folder`` while the block runs.

    The lock is ``flock`` on ``folder/.lock``, which holds the holder's PID; the kernel frees
    it when the process ends, however it ends (a stale file never blocks a run). A folder this
    call created and the block left empty is removed again.

    Raises:
        UserError: another process holds the lock; the line names its PID.
    """
    import fcntl

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise UserError(
                f"{option} {folder} is in use by another lsdseg run (PID {holder}); wait for it "
                f"to end, or choose another {option}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                path.unlink(missing_ok=True)  # a run that wrote nothing leaves nothing
                folder.rmdir()
    finally:
        os.close(fd)
