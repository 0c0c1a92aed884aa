"""The frame-level decision over time: a vote with hysteresis over the last frames.

A presence head judges each frame on its own, so on a video a single doubtful frame would
flash a contour for 40 ms, and one frame of a polyp in a bad light would make it vanish. The
:class:`PresenceFilter` turns the per-frame decisions into what a video shows: a polyp appears
once ``on`` of the last ``window`` frames hold one, and disappears once fewer than ``off`` of
them do. With the defaults (5, 3, 2) an isolated false alarm is never drawn, a polyp shows
from its third frame (about 0.1 s at 25 frames/s), and a polyp that stays survives dips of up
to three frames in five.

``lsdseg segment`` applies it to videos and streams (``--presence-filter``); still images are
judged one by one. What it costs in delay and saves in false alarms is measured in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["PresenceFilter"]


@dataclass
class PresenceFilter:
    """Votes over the last ``window`` per-frame decisions, with hysteresis.

    Args:
        window: frames voted over (1 turns the filter off: each frame decides alone).
        on: a polyp is shown once at least this many of them hold one.
        off: a polyp shown stays until fewer than this many of them hold one.

    Raises:
        ValueError: unless 1 <= off <= on <= window.
    """

    window: int = 5
    on: int = 3
    off: int = 2
    _votes: deque = field(init=False, repr=False)
    showing: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if not 1 <= self.off <= self.on <= self.window:
            raise ValueError(
                f"PresenceFilter(window={self.window}, on={self.on}, off={self.off}) needs "
                "1 <= off <= on <= window"
            )
        self._votes = deque(maxlen=self.window)

    def update(self, present: bool) -> bool:
        """Add this frame's decision; returns whether a polyp is shown on it."""
        self._votes.append(bool(present))
        n = sum(self._votes)
        self.showing = n >= (self.off if self.showing else self.on)
        return self.showing

    def reset(self) -> None:
        """Forget the frames seen (a new video)."""
        self._votes.clear()
        self.showing = False
