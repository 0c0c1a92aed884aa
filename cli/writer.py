"""Outputs of ``lsdseg segment``: overlay video or images, mask PNGs, on a writer thread.

The :class:`WriterThread` renders and encodes while the main thread runs the model. For every
frame it writes, in this order, the overlay (video frame or image), the optional mask PNGs and
then the record, so a record always means its frame is in the video. :meth:`WriterThread.close`
drains the queue and releases the video, which leaves a playable file after Ctrl-C too.

OpenCV's video writer reports no write errors, so a full disk is found when the video is
closed: the frames the finished file holds are counted and the records cut to them, and the
error names the file (:class:`~lsdseg.cli.errors.OutputError`). Every other output file that
cannot be written is named the same way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lsdseg.cli.errors import OutputError, UserError, output_error
from lsdseg.cli.overlay import View
from lsdseg.cli.records import RecordWriter
from lsdseg.cli.sources import Frame
from lsdseg.files import is_replaceable

FOURCC = "mp4v"  # the pip OpenCV build cannot write avc1/H.264


# what FFmpeg's MPEG-4 part 2 encoder (mp4v) takes, measured with OpenCV 5.0's FFmpeg
MP4V_MAX_SIDE = 8191  # pixels
MP4V_FPS = (0.002, 65535.0)  # frames per second


def _why_no_video(path: Path, fps: float, size: tuple[int, int]) -> str:
    """Why an mp4v writer did not open, and what to do (the limits first: a folder that is
    writable is not the problem then)."""
    import os

    h, w = size
    if max(h, w) > MP4V_MAX_SIDE:
        return (
            f"{FOURCC} frames are at most {MP4V_MAX_SIDE} pixels a side: segment a smaller "
            "video, or use --overlay mask (grid makes the frame wider)"
        )
    if not MP4V_FPS[0] <= fps <= MP4V_FPS[1]:
        return (
            f"{FOURCC} stores {MP4V_FPS[0]:g} to {MP4V_FPS[1]:g} frames per second: re-encode "
            "the source at a usual frame rate (or change --vid-stride)"
        )
    free = _free_mb(path)
    if free is not None and free < 1.0:
        return f"its disk is full ({free:.1f} MB free)"
    if not os.access(path.parent, os.W_OK):
        return "its folder is not writable"
    return "OpenCV's FFmpeg could not open the writer (run with LSDSEG_DEBUG=1 to see its log)"


class VideoOut:
    """An mp4 (mp4v) writer of fixed size.

    MPEG-4 part 2 needs even sizes: an odd height or width is padded with one black row or
    column (FFmpeg would otherwise crop it). A frame whose size differs from the first (a stream
    that changes resolution) is resized to it.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import cv2

        self.path, self.fps, self.size = path, fps, size  # size (H, W) of rendered frames
        h, w = size
        self._pad = (h % 2, w % 2)
        self.frames = 0
        self._writer = cv2.VideoWriter(
            str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (w + self._pad[1], h + self._pad[0])
        )
        if not self._writer.isOpened():
            raise UserError(
                f"cannot write the video {path} ({FOURCC}, {w}x{h} at {fps:g} fps); "
                + _why_no_video(path, fps, (h + self._pad[0], w + self._pad[1]))
            )

    def write(self, image: np.ndarray) -> None:
        import cv2

        h, w = self.size
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        if any(self._pad):
            image = cv2.copyMakeBorder(
                image, 0, self._pad[0], 0, self._pad[1], cv2.BORDER_CONSTANT, value=(0, 0, 0)
            )
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        """Release the file and check that it holds every frame written.

        Raises:
            OutputError: the finished file holds fewer frames (``frames`` is then what it
                holds): FFmpeg could not write it, a full disk most often.
        """
        self._writer.release()
        held = count_frames(self.path)
        if held < self.frames:
            written, self.frames = self.frames, held
            free = _free_mb(self.path)
            cause = (
                f"no space left on its disk ({free:.1f} MB free)"
                if free is not None and free < 1.0
                else "FFmpeg could not write the rest"
            )
            raise OutputError(
                f"the video {self.path} holds {held} of the {written} frames written"
                f"{' and cannot be played' if held == 0 else ''}: {cause}"
            )


def _free_mb(path: Path) -> float | None:
    """Megabytes free on the disk of ``path`` (None if that cannot be told)."""
    import shutil

    try:
        return shutil.disk_usage(path.parent).free / 1e6
    except OSError:
        return None


def count_frames(path: Path) -> int:
    """Frames a finished video file holds as OpenCV reads it: 0 when it cannot be opened (an
    mp4 whose index, written last, is missing)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if n > 0:
            return n
        n = 0  # no count in the container: read them
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


class ImagesOut:
    """One overlay PNG per input image, named after it (``name.png``, ``name_2.png``...)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.frames = folder, 0
        self._used: set[str] = set()

    def unique_stem(self, name: str) -> str:
        stem, stem_n, n = Path(name).stem, Path(name).stem, 2
        while stem in self._used:
            stem, n = f"{stem_n}_{n}", n + 1
        self._used.add(stem)
        return stem

    def write(self, image: np.ndarray, stem: str) -> None:
        write_png(self.folder / f"{stem}.png", image)
        self.frames += 1

    def close(self) -> None:
        pass


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``image`` as a PNG; a file that cannot be written whole is removed.

    Raises:
        OutputError: naming ``path`` (a full disk, a missing folder).
    """
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OutputError(f"cannot encode {path} as PNG ({image.shape} {image.dtype})")
    try:
        buf.tofile(str(path))  # also works for non-ASCII paths, unlike cv2.imwrite on Windows
    except OSError as e:
        if is_replaceable(path):  # never a device, pipe or link the user named
            Path(path).unlink(missing_ok=True)
        raise output_error(path, e) from None


class MasksOut:
    """``--save-masks``, in ``masks/``, with fixed scales so that frames compare:

    - ``<stem>_mask.png``: the mask, 8-bit, 0 or 255;
    - ``<stem>_conf.png``: the confidence map (mean of the K probabilities), 8-bit,
      ``round(mean * 255)``;
    - ``<stem>_unc.png``: the uncertainty map, 16-bit, ``round(value / unc_range * 65535)``:
      1 bit = 65535 for entropy and mutual information, a std of 0.5 = 65535 (resolution
      1.5e-5 bits; the same scale in every frame and every run);
    - ``<stem>_maps.npz``: both maps losslessly, float32 ``mean`` and ``uncertainty``
      (``numpy.load``).
    """

    def __init__(self, folder: Path, unc_range: float) -> None:
        self.folder, self.unc_range = folder, unc_range
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, stem: str, mask: np.ndarray, mean: np.ndarray, unc: np.ndarray) -> None:
        write_png(self.folder / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        write_png(self.folder / f"{stem}_conf.png", quantise(mean, 1.0, np.uint8))
        write_png(self.folder / f"{stem}_unc.png", quantise(unc, self.unc_range, np.uint16))
        path = self.folder / f"{stem}_maps.npz"
        try:
            with open(path, "wb") as f:
                np.savez_compressed(
                    f, mean=mean.astype(np.float32), uncertainty=unc.astype(np.float32)
                )
        except OSError as e:
            path.unlink(missing_ok=True)
            raise output_error(path, e) from None


def quantise(values: np.ndarray, vmax: float, dtype: type[np.integer]) -> np.ndarray:
    """``values`` in [0, vmax] -> ``dtype``'s full range (``vmax`` -> 255 or 65535), rounded."""
    top = float(np.iinfo(dtype).max)
    return (np.clip(values / vmax, 0.0, 1.0) * top + 0.5).astype(dtype)


@dataclass
class Work:
    """One processed frame on its way to the outputs."""

    frame: Frame
    view: View
    record: dict
    mean: np.ndarray | None = None  # (H, W) confidence map, only with --save-masks


_END = object()


class WriterThread:
    """Renders and writes processed frames from a bounded queue, on its own thread.

    Args:
        render: ``(frame, view) -> image``, the overlay.
        records: the CSV/JSONL writer.
        video: the video writer (video, webcam and stream sources), or None.
        images: the per-image writer (image sources), or None.
        masks: the mask-PNG writer (``--save-masks``), or None.
        show: ``image -> keep going``, the --show window; called by :meth:`display` on the
            main thread (GUI toolkits want that) with the newest rendered image.
        depth: queue length; a full queue makes :meth:`put` wait (back-pressure).
    """

    def __init__(
        self,
        render: Callable[[np.ndarray, View], np.ndarray],
        records: RecordWriter,
        video: VideoOut | None = None,
        images: ImagesOut | None = None,
        masks: MasksOut | None = None,
        show: Callable[[np.ndarray], bool] | None = None,
        depth: int = 4,
    ) -> None:
        if (video is None) == (images is None):
            raise ValueError("WriterThread needs exactly one of video= or images=")
        self.render, self.records = render, records
        self.video, self.images, self.masks, self.show = video, images, masks, show
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.quit = threading.Event()  # set when the user closes the --show window
        self._latest: np.ndarray | None = None  # newest rendered image, for --show
        self._thread = threading.Thread(target=self._run, name="lsdseg-writer", daemon=True)
        self._thread.start()

    def _write(self, work: Work) -> None:
        image = self.render(work.frame.image, work.view)
        if self.video is not None:
            self.video.write(image)
            stem = f"{work.frame.index:06d}"
        else:
            stem = self.images.unique_stem(work.frame.name)  # type: ignore[union-attr]
            self.images.write(image, stem)  # type: ignore[union-attr]
        if self.masks is not None and work.mean is not None:
            self.masks.write(stem, work.view.mask, work.mean, work.view.uncertainty)
        self.records.write(work.record)
        if self.show is not None:
            self._latest = image  # replaced, never queued: the window shows the newest

    def display(self) -> None:
        """Show the newest rendered image in the --show window (call from the main thread)."""
        image, self._latest = self._latest, None
        if self.show is not None and image is not None and not self.show(image):
            self.quit.set()

    def _run(self) -> None:
        while True:
            work = self.queue.get()
            if work is _END:
                return
            if self.error is not None:
                continue  # keep draining so put() never blocks forever
            try:
                self._write(work)
            except BaseException as e:  # reported by put() / close() on the main thread
                self.error = e

    def put(self, work: Work) -> None:
        """Queue a frame; raises the writer's error if writing failed."""
        if self.error is not None:
            raise self.error
        self.queue.put(work)

    def close(self) -> None:
        """Write what is queued, then release every output (the video stays playable) and cut
        the records to the frames the video holds.

        Raises:
            The first error of writing or closing (an OutputError names the file).
        """
        self.queue.put(_END)
        self._thread.join()
        errors = [] if self.error is None else [self.error]
        for out in (self.video, self.images):
            if out is not None:
                try:
                    out.close()
                except OutputError as e:
                    errors.append(e)
        try:  # a record must never claim a frame the video lacks
            self.records.close(keep=self.video.frames if self.video is not None else None)
        except OutputError as e:
            errors.append(e)
        if errors:
            raise errors[0]

    @property
    def written(self) -> int:
        return self.records.rows
