"""Run folders: ``runs/<command>/exp``, ``exp2``, ... as users of detection tools expect."""

from __future__ import annotations

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
