"""What ``lsdseg segment`` shows while it runs: a progress bar or counter, and a window.

The terminal gets a rich progress bar when the number of frames is known (files) and a live
frame counter otherwise (webcams, streams). ``--show`` opens an OpenCV window, which needs a GUI
build of OpenCV and a display; :func:`check_gui` says how to get them instead of letting OpenCV
abort the process.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lsdseg.cli.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

    from lsdseg.cli.sources import Source


def check_gui() -> None:
    """--show needs a GUI build of OpenCV and a display; say how to get them otherwise."""
    import cv2

    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui is None or gui.group(1).upper() == "NONE":
        raise UserError(
            "--show needs a GUI build of OpenCV, and this one is headless: "
            "pip uninstall opencv-python-headless && pip install opencv-python; "
            "or drop --show and open the saved video"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise UserError(
            "--show needs a display, and DISPLAY is not set (no desktop session or "
            "ssh -X); drop --show and open the saved video"
        )


def make_show() -> Callable[[np.ndarray], bool]:
    """The --show callback: shows a frame; returns False when q or Esc is pressed."""
    import cv2

    def show(image: np.ndarray) -> bool:
        cv2.imshow("lsdseg segment (q to quit)", image)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    return show


class ProgressDisplay:
    """A rich progress bar (files: frames known) or live counter (streams); a context manager
    yielding the ``on_frame(done, dropped)`` callback."""

    def __init__(self, console: Console, source: Source) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.total = source.total
        columns = [TextColumn("{task.description}"), BarColumn()]
        if self.total:
            columns += [MofNCompleteColumn(), TimeRemainingColumn()]
        else:
            columns += [TextColumn("{task.completed} frames"), TimeElapsedColumn()]
        columns.append(TextColumn("{task.fields[info]}"))
        self.progress = Progress(*columns, console=console, transient=False)

    def __enter__(self) -> Callable[[int, int], None]:
        self.progress.__enter__()
        task = self.progress.add_task("segment", total=self.total, info="")

        def on_frame(done: int, dropped: int) -> None:
            self.progress.update(task, completed=done, info=f"dropped {dropped}" if dropped else "")

        return on_frame

    def __exit__(self, *exc: object) -> None:
        return self.progress.__exit__(*exc)


class PlainProgress:
    """Progress for a log (output not a terminal, where a live bar stays silent): one line on
    stderr every ``every`` seconds while the run goes on (a short run prints none):
    ``lsdseg evaluate: 120 of 612 images (19%), 1:30 elapsed, about 6:09 left``."""

    def __init__(
        self,
        prefix: str,
        total: int,
        unit: str = "images",
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix, self.total, self.unit, self.every, self.clock = (
            prefix,
            total,
            unit,
            every,
            clock,
        )
        self.done = 0
        self.start = self.last = clock()

    @staticmethod
    def _clock_text(seconds: float) -> str:
        m, s = divmod(round(seconds), 60)
        return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"

    def advance(self) -> None:
        self.done += 1
        now = self.clock()
        if now - self.last < self.every or self.done >= self.total:  # the summary says the end
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / self.done * (self.total - self.done)
        share = f" ({100 * self.done // max(1, self.total)}%)"
        print(
            f"{self.prefix}: {self.done} of {self.total} {self.unit}{share}, "
            f"{self._clock_text(elapsed)} elapsed, about {self._clock_text(left)} left",
            file=sys.stderr,
            flush=True,
        )
