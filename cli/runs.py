"""Run folders: ``runs/<command>/exp``, ``exp2``, ... as users of detection tools expect."""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_run_folder_options(parser: argparse._ActionsContainer, project: str) -> None:
    """``--project``, ``--name`` and ``--exist-ok``, as every command that writes a run has."""
    parser.add_argument("--project", default=project, help="parent of the run folders")
    parser.add_argument("--name", default="exp", help="run folder name (exp, exp2, ...)")
    parser.add_argument("--exist-ok", action="store_true", help="reuse the run folder if it exists")
