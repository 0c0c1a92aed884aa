"""The segmentation loop of ``lsdseg segment``: reader thread -> model -> writer thread.

Decoding (:class:`~lsdseg.cli.reader.FrameReader`), inference (this thread) and rendering plus
encoding (:class:`~lsdseg.cli.writer.WriterThread`) overlap through bounded queues. SIGINT,
SIGTERM and SIGHUP (a closed terminal) set a flag the loop checks between frames: the frame
being segmented is finished and written, the writer drains and releases the video, and the run
ends with its summary. A second signal interrupts at once (the outputs are still closed on the
way out).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lsdseg.cli.errors import OutputError
from lsdseg.cli.overlay import OverlayOptions, hud_text, make_view, uncertainty_map
from lsdseg.cli.reader import FrameReader, Stalled
from lsdseg.cli.records import Summary, frame_record
from lsdseg.cli.remote import RemoteSegmenter, ServerError
from lsdseg.cli.sources import Frame, Source
from lsdseg.cli.writer import Work, WriterThread
from lsdseg.decision import PresenceFilter

if TYPE_CHECKING:
    from types import FrameType

    from lsdseg.segmenter import Result, Segmenter


# the record fields one hypothesis cannot give (no spread between samples): left empty at K = 1
ONE_SAMPLE_EMPTY = ("unc_mean", "unc_max", "unc_frame_mean", "agreement", "unsure", "unsure_flag")
ONE_SAMPLE_NOTICE = (
    "--hypotheses 1: one sample has no spread, so no uncertainty is measured (records leave "
    "unc_*, agreement and unsure empty; the heads-up text says so); use K >= 2 for uncertainty"
)


@dataclass(frozen=True)
class SampleOptions:
    """Per-frame Segmenter settings; None takes the checkpoint's default."""

    hypotheses: int = 8  # K
    steps: int | None = None  # DDIM steps
    eta: float | None = None  # DDIM eta
    threshold: float | None = None  # mask = mean > threshold
    seed: int | None = 0  # the same seed for every frame (steady video); None: a new one each
    temporal_t: int | None = None  # warm-start from the previous frame at this timestep
    presence_threshold: float | None = None  # a frame holds a polyp when its score reaches it
    # filter the frame-level decision over time (lsdseg.decision.PresenceFilter); None: off
    presence_filter: PresenceFilter | None = None


class StopFlag:
    """Turns SIGINT / SIGTERM / SIGHUP into a flag while active (a context manager).

    Handlers can only be installed from the main thread; elsewhere the flag still works when
    set by hand, and signals keep their handlers.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self.closing = False  # outputs are being finalised: further signals wait for it
        self._old: dict[int, object] = {}

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set() and not self.closing:  # a second signal: stop now
            raise KeyboardInterrupt
        self.set(signal.Signals(signum).name)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()


def decide(result: Result, presence_filter: PresenceFilter | None) -> bool:
    """Whether a polyp is shown on this frame: its own decision (``result.present``), filtered
    over time when a filter is given. ``result.mask`` is made to agree: emptied when nothing is
    shown, and drawn from the mean (``mean > result.threshold``) on a frame the filter holds
    although its own score fell short."""
    shown = result.present if presence_filter is None else presence_filter.update(result.present)
    if shown and not result.present and result.mean.size:
        result.mask = result.mean > result.threshold
    elif not shown and result.mask.any():
        result.mask = np.zeros_like(result.mask)
    return shown


def state_word(present: bool, shown: bool, flagged: bool) -> str:
    """What the HUD says of the frame, in a clinician's words: ``POLYP``, ``no polyp``, or
    ``UNSURE`` (a polyp shown on a frame flagged unsure, or one the frame's own score sees that
    the time filter has not confirmed yet)."""
    if shown:
        return "UNSURE" if flagged else "POLYP"
    return "UNSURE" if present else "no polyp"


def _work(
    frame: Frame,
    result: Result,
    latency: float,
    fps: float,
    overlay: OverlayOptions,
    keep_mean: bool,
    unsure_threshold: float | None = None,
    still: bool = False,
    presence_filter: PresenceFilter | None = None,
) -> Work:
    """A processed frame for the writer: its record, its view with the heads-up text.

    ``still``: the frame is a still image, which gets no frame rate or latency burned in.
    ``presence_filter``: the decision over time (videos and streams), see :func:`decide`.
    With one hypothesis there is no spread to measure: the record's uncertainty fields,
    agreement and unsure score are empty and the heads-up text says so.
    """
    k = int(result.hypotheses.shape[0])
    present = result.present
    shown = decide(result, presence_filter)
    unc = uncertainty_map(result, overlay.measure)
    record = frame_record(
        frame.index,
        frame.timestamp,
        frame.name,
        latency,
        result.mask,
        unc,
        result.agreement,
        result.seed,
        result.unsure,
        unsure_threshold,
        result.score,
        present,
        shown,
    )
    if k < 2:
        for key in ONE_SAMPLE_EMPTY:
            record[key] = None
    flagged = bool(record["unsure_flag"])
    word = state_word(present, shown, flagged)
    state = word if math.isnan(result.score) else f"{word} | p={result.score:.2f}"
    hud = hud_text(
        k,
        overlay.measure,
        float(unc.mean()),  # the frame's mean
        record["unsure"],
        False,  # the state line says UNSURE already
        None if still else fps,
        None if still else latency,
        state=state,
    )
    view = make_view(result, overlay, hud, alert=word == "UNSURE")
    return Work(frame, view, record, result.mean if keep_mean else None)


def run_pipeline(
    segmenter: Segmenter | RemoteSegmenter,
    source: Source,
    writer: WriterThread,
    overlay: OverlayOptions,
    sample: SampleOptions,
    realtime: bool,
    timeout: float,
    stop: StopFlag,
    on_frame: Callable[[int, int], None] | None = None,
    keep_mean: bool = False,
    unsure_threshold: float | None = None,
) -> Summary:
    """Segment every frame ``source`` delivers and hand each result to ``writer``.

    Args:
        segmenter: a :class:`lsdseg.Segmenter`, or a
            :class:`~lsdseg.cli.remote.RemoteSegmenter` (inference on a server).
        source: the probed source.
        writer: the outputs (closed here, whatever happens).
        overlay: what the writer draws and which uncertainty map the records measure.
        sample: the sampler settings.
        realtime: drop frames that arrive while the model is busy.
        timeout: seconds without a frame after which a source counts as stalled.
        stop: the flag that ends the run early (signals, the --show window).
        on_frame: called with (frames processed, frames dropped) after each frame.
        keep_mean: pass the confidence map to the writer (for --save-masks).
        unsure_threshold: flag frames whose unsure score exceeds it (records, HUD, summary).

    Returns:
        The run's summary (``stopped_by`` says why it ended early, if it did: ``server``
        when the inference server failed, vanished or stopped answering, ``error`` when an
        output could not be written (a full disk), with the reason in ``warning``; the
        records then hold only the frames the outputs hold; ``skipped`` counts the images of
        a folder or glob that could not be decoded, ``skipped_files`` names each with its
        reason).
    """
    summary = Summary(source=source.label)
    reader = FrameReader(source, realtime).start()
    latencies: list[float] = []
    flags: list[bool] = []  # per frame: flagged unsure
    shown: list[bool] = []  # per frame: a polyp shown
    t_start: float | None = None
    t_last: float | None = None
    fps = 0.0
    previous = None  # the last result, for --temporal warm starts
    try:
        while not stop.event.is_set() and not writer.quit.is_set():
            try:
                frame = reader.get(timeout, stop.event)
            except Stalled as e:
                summary.stopped_by, summary.warning = "stall", str(e)
                break
            if frame is None:
                break
            t0 = time.perf_counter()
            t_start = t0 if t_start is None else t_start
            warm = {}
            if sample.temporal_t is not None and previous is not None:
                warm = {"warm_start": previous, "warm_timestep": sample.temporal_t}
            if not isinstance(segmenter, RemoteSegmenter):  # a server sends what it has
                warm["hypotheses_size"] = "model"  # only the grid shows them, as thumbnails
            try:
                result = segmenter(
                    frame.image,
                    hypotheses=sample.hypotheses,
                    steps=sample.steps,
                    eta=sample.eta,
                    seed=sample.seed,
                    threshold=sample.threshold,
                    presence_threshold=sample.presence_threshold,
                    **warm,
                )
            except ServerError as e:  # the frames written so far stay; the run ends cleanly
                summary.stopped_by, summary.warning = "server", str(e)
                break
            previous = result if sample.temporal_t is not None else None
            t1 = time.perf_counter()
            latency = (t1 - t0) * 1e3
            latencies.append(latency)
            rate = 1.0 / (t1 - t_last) if t_last is not None and t1 > t_last else 1e3 / latency
            fps = rate if len(latencies) == 1 else 0.8 * fps + 0.2 * rate  # smoothed for the HUD
            t_last = t1
            work = _work(
                frame,
                result,
                latency,
                fps,
                overlay,
                keep_mean,
                unsure_threshold,
                still=source.kind == "images",
                presence_filter=sample.presence_filter,
            )
            flags.append(bool(work.record["unsure_flag"]))
            shown.append(bool(work.record["polyp_shown"]))
            del result  # the work item keeps only what rendering and records need
            writer.put(work)
            writer.display()
            if on_frame is not None:
                on_frame(len(latencies), reader.dropped)
    except OutputError as e:  # a full disk: what was written stays, cut to whole frames
        summary.stopped_by, summary.warning = "error", str(e)
    finally:
        stop.closing = True
        reader.stop()
        try:
            writer.close()
        except OutputError as e:
            if summary.stopped_by != "error":
                summary.stopped_by, summary.warning = "error", str(e)
        finally:
            summary.dropped = reader.dropped
            elapsed = time.perf_counter() - t_start if t_start is not None else 0.0
            summary.finish(latencies[: writer.written], elapsed)
            if unsure_threshold is not None:
                summary.unsure_frames = sum(flags[: writer.written])
            summary.polyp_frames = sum(shown[: writer.written])
            summary.skipped_files = [list(s) for s in getattr(source, "skipped", [])]
            summary.skipped = len(summary.skipped_files)
    if stop.reason and not summary.stopped_by:
        summary.stopped_by = stop.reason
    elif writer.quit.is_set() and not summary.stopped_by:
        summary.stopped_by = "the --show window (q)"
    if source.warning and not summary.warning:
        summary.warning = source.warning
    return summary
