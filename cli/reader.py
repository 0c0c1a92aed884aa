"""The reader thread of ``lsdseg segment``: decodes frames ahead of the model.

A :class:`FrameReader` pulls frames from a :class:`~lsdseg.cli.sources.Source` on its own thread
into a bounded queue. On a live source (``--realtime``) a frame that arrives while the model is
busy replaces the one waiting, and is counted as dropped; otherwise the reader waits for room,
so every frame is processed. A source that delivers nothing for ``timeout`` seconds raises
:class:`Stalled` in the consumer instead of hanging it.
"""

from __future__ import annotations

import queue
import threading
import time

from lsdseg.cli.sources import Frame, Source


class Stalled(Exception):
    """No frame arrived within the timeout."""


_END = object()  # put by the reader after the last frame


class FrameReader:
    """Decodes frames on a thread into a bounded queue, so decoding overlaps inference.

    With ``realtime`` the queue holds one frame and a new frame replaces one the consumer has
    not taken yet (counted in :attr:`dropped`): the model always sees the newest frame. Without
    it the reader waits for room, so every frame is processed. A file read in real time is
    replayed at its own fps, like a live feed.

    Args:
        source: the probed source.
        realtime: drop frames that arrive while the consumer is busy.
        depth: queue length when not real time.
    """

    def __init__(self, source: Source, realtime: bool, depth: int = 4) -> None:
        self.source, self.realtime = source, realtime
        self.queue: queue.Queue = queue.Queue(maxsize=1 if realtime else depth)
        self.dropped = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lsdseg-reader", daemon=True)

    def start(self) -> FrameReader:
        self._thread.start()
        return self

    def _put(self, item: object) -> bool:
        """Blocking put that gives up when stopped; returns whether it was queued."""
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self.source.frames(pace=self.realtime and not self.source.live):
                if self._stop.is_set():
                    break
                if not self.realtime:
                    self._put(frame)
                    continue
                try:
                    self.queue.put_nowait(frame)
                except queue.Full:  # the model is busy: replace the waiting frame
                    try:
                        self.queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
                    self.queue.put_nowait(frame)  # we are the only producer: room exists
        except BaseException as e:  # handed to the consumer, which reports it
            self.error = e
        finally:
            self._put(_END)

    def get(self, timeout: float, stop: threading.Event | None = None) -> Frame | None:
        """The next frame, or None at the end (or when ``stop`` is set).

        Raises:
            Stalled: nothing arrived for ``timeout`` seconds.
            The reader's own error, if decoding failed.
        """
        deadline = time.monotonic() + timeout
        while stop is None or not stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise Stalled(
                        f"{self.source.label} stalled: no frame for {timeout:g} s and no "
                        "end of stream (raise --timeout to wait longer)"
                    ) from None
                continue
            if item is _END:
                if self.error is not None:
                    raise self.error
                return None
            return item
        return None

    def stop(self) -> None:
        """Ask the thread to finish; it may stay blocked in a read of a stalled stream."""
        self._stop.set()
        self._thread.join(timeout=1.0)
        if self._thread.is_alive():
            self.source.abandoned = True  # left to the daemon thread and process exit
        else:
            self.source.close()
