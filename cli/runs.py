"""Run folders: ``runs/<command>/exp``, ``exp2``, ... as users of detection tools expect."""

from __future__ import annotations

import argparse
import os
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
