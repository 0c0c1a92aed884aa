"""Frame sources for ``lsdseg segment``: video files, images, folders, globs, webcams, streams.

:func:`open_source` turns the SOURCE argument into a :class:`Source`, probing it at once (the
first frame is decoded before any output is created), so that every way a source can be wrong
becomes one :class:`~lsdseg.cli.errors.UserError` naming the source and what to do. Every frame a
source yields is ``(H, W, 3)`` uint8 BGR, whatever the file held (grey, BGRA, 16-bit).
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lsdseg.cli.errors import UserError
from lsdseg.data import IMAGE_EXTENSIONS, DataError, natural_key, read_image, to_rgb8

if TYPE_CHECKING:
    import cv2

Kind = Literal["video", "images", "webcam", "stream"]
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
DEFAULT_LIVE_FPS = 30.0  # used when a camera or stream does not report its frame rate
STALL_MARGIN_MS = 5000  # FFmpeg's read timeout beyond --timeout (see _capture)


@dataclass
class Frame:
    """One decoded frame and where it came from."""

    index: int  # position in the source, counted before --vid-stride
    image: np.ndarray  # (H, W, 3) uint8 BGR
    timestamp: float | None  # seconds: index / fps for files, since start for live sources
    name: str  # the image's path as found (images), or the source's name


def _quiet_opencv() -> None:
    """Silence OpenCV's and FFmpeg's own stderr chatter; our errors say what went wrong.

    FFmpeg reads ``OPENCV_FFMPEG_LOGLEVEL`` once, on the first capture, so this runs before any
    capture is opened. ``LSDSEG_DEBUG`` (or a level the user set) keeps the chatter.
    """
    import cv2

    if os.environ.get("LSDSEG_DEBUG"):
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)


def to_bgr8(image: np.ndarray, where: str) -> np.ndarray:
    """Any decoded frame (grey, BGR, BGRA; 8/16-bit or float) -> (H, W, 3) uint8 BGR."""
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    try:
        return to_rgb8(image, where)  # keeps channel order: BGR(A) in, BGR out
    except DataError as e:
        raise UserError(str(e)) from None


class Source:
    """A probed frame source. Iterate :meth:`frames`; call :meth:`close` when done.

    Attributes:
        kind: ``video``, ``images``, ``webcam`` or ``stream``.
        name: a short name for output files (the file stem, ``webcam0``, ``stream``).
        label: how messages name the source (the path, URL or ``webcam N``).
        fps: frames per second of the source (a default for live sources that report none).
        total: number of frames :meth:`frames` will yield, when known (stride and limit applied).
        live: frames arrive in real time (webcam, stream) rather than on demand.
        first_shape: (H, W) of the first frame.
    """

    kind: Kind
    name: str
    label: str
    fps: float
    total: int | None
    live: bool
    first_shape: tuple[int, int]
    warning: str = ""  # set when the source ended early (truncated file, stalled stream)
    abandoned: bool = False  # a reader thread is stuck in a read: never release under it

    def frames(self, pace: bool = False) -> Iterator[Frame]:
        """Yield frames; ``pace`` replays a file at its own fps (simulates a live feed)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


class ImageSource(Source):
    """One image file, or many (a folder or a glob), read with :func:`lsdseg.data.read_image`.

    Of many images, one that cannot be decoded is skipped: ``on_skip`` is called with its path
    and the reason, it is listed in :attr:`skipped`, and the others are segmented (the command
    then fails at the end, as ``lsdseg evaluate`` does). A single image that cannot be decoded,
    or many of which none can, is a :class:`~lsdseg.cli.errors.UserError`.

    Args:
        paths: the image files, in order.
        name: a short name for output files.
        max_frames: at most this many images (0: all).
        on_skip: called with (path, reason) for each image skipped.
    """

    def __init__(
        self,
        paths: list[Path],
        name: str,
        max_frames: int = 0,
        on_skip: Callable[[str, str], None] | None = None,
    ) -> None:
        self.paths = paths[:max_frames] if max_frames else paths
        self.kind, self.name, self.fps, self.live = "images", name, 1.0, False
        self.label = name
        self.total = len(self.paths)
        self.skipped: list[tuple[str, str]] = []  # (path, reason), in order
        self._on_skip = on_skip
        self._start, self._first = self._probe()
        self.first_shape = self._first.shape[:2]

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        rgb = read_image(path)
        return np.ascontiguousarray(rgb[..., ::-1])  # RGB -> BGR, the order OpenCV frames have

    def _probe(self) -> tuple[int, np.ndarray]:
        """The first image that decodes, and its position; the ones before it are skipped."""
        failed: list[tuple[str, str]] = []
        for i, path in enumerate(self.paths):
            try:
                image = self._read(path)
            except (DataError, OSError) as e:
                failed.append((str(path), str(e)))
                continue
            for skip in failed:
                self._skip(*skip)
            return i, image
        if len(failed) == 1:
            raise UserError(failed[0][1])
        raise UserError(
            f"{self.label}: none of the {len(failed)} images could be decoded (the first: "
            f"{failed[0][1]}); check the files"
        )

    def _skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))
        if self._on_skip is not None:
            self._on_skip(path, reason)

    def frames(self, pace: bool = False) -> Iterator[Frame]:
        for i, path in enumerate(self.paths):
            if i < self._start:
                continue
            if i == self._start:
                image = self._first
            else:
                try:
                    image = self._read(path)
                except (DataError, OSError) as e:  # OSError: gone or unreadable since
                    self._skip(str(path), str(e))
                    continue
            yield Frame(i, image, None, str(path))  # the path: names repeat across folders


class VideoSource(Source):
    """A video file, webcam or stream read with ``cv2.VideoCapture``.

    Args:
        cap: an opened capture whose first frame has not been read yet.
        kind, name: see :class:`Source`.
        stride: yield every ``stride``-th frame (``--vid-stride``).
        max_frames: stop after this many yielded frames (0: no limit).
    """

    def __init__(
        self,
        cap: cv2.VideoCapture,
        kind: Kind,
        name: str,
        label: str,
        stride: int = 1,
        max_frames: int = 0,
    ) -> None:
        import cv2

        self.cap, self.kind, self.name, self.label = cap, kind, name, label
        self.stride, self.max_frames = stride, max_frames
        self.live = kind in ("webcam", "stream")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps <= 1000 else DEFAULT_LIVE_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else -1
        self.frame_count = count if count > 0 else None  # as the container reports it
        self.total = None
        if self.frame_count is not None:
            self.total = (self.frame_count + stride - 1) // stride
            if max_frames:
                self.total = min(self.total, max_frames)
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise UserError(self._no_frames_message())
        self._first = to_bgr8(first, label)
        self.first_shape = self._first.shape[:2]
        self.decoded = 1  # frames decoded so far (grabbed ones included)

    def _no_frames_message(self) -> str:
        if self.kind == "video":
            return (
                f"{self.label}: the video has no decodable frames (empty, corrupt or "
                "truncated file); check that it plays, or re-encode it"
            )
        return f"{self.label}: opened, but no frame arrived; check the camera or stream"

    def frames(self, pace: bool = False) -> Iterator[Frame]:
        start = time.monotonic()
        emitted, index = 0, 0
        image: np.ndarray | None = self._first
        while image is not None:
            if self.live:
                stamp = time.monotonic() - start
            else:
                stamp = index / self.fps
                if pace:  # replay at the file's own rate, like a live feed
                    time.sleep(max(0.0, stamp - (time.monotonic() - start)))
            yield Frame(index, image, stamp, self.name)
            emitted += 1
            if self.max_frames and emitted >= self.max_frames:
                return
            image = self._next()
            index += self.stride
        self._check_end(emitted)

    def _next(self) -> np.ndarray | None:
        """Skip ``stride - 1`` frames (grab without decoding) and decode the next one."""
        for _ in range(self.stride - 1):
            if not self.cap.grab():
                return None
            self.decoded += 1
        ok, image = self.cap.read()
        if not ok or image is None:
            return None
        self.decoded += 1
        return to_bgr8(image, self.label)

    def _check_end(self, emitted: int) -> None:
        """Note a file that ended well before its container said (allowing for estimates)."""
        if self.live:
            self.warning = f"{self.label}: the stream ended after {emitted} frames"
            return
        if self.frame_count and self.decoded < self.frame_count * 0.98 - 1:
            self.warning = (
                f"{self.label}: decoding stopped at frame {self.decoded} of "
                f"{self.frame_count} (truncated or corrupt file); the outputs "
                "cover the frames before it"
            )

    def close(self) -> None:
        if not self.abandoned:  # releasing under a blocked read can crash FFmpeg
            self.cap.release()


def _capture(target: str | int, kind: Kind, timeout: float) -> cv2.VideoCapture | None:
    """Open a capture, giving up after ``timeout`` seconds even if OpenCV would not."""
    import cv2

    _quiet_opencv()
    box: dict = {}

    def open_it() -> None:
        if kind == "stream":
            # FFmpeg gives up on a read later than the reader counts the stream as stalled:
            # a read that FFmpeg abandons looks like the end of the stream, a stall does not
            ms = int(timeout * 1000)
            read_ms = ms + STALL_MARGIN_MS
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
            box["cap"] = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        else:
            box["cap"] = cv2.VideoCapture(target)

    if kind == "video":
        open_it()
    else:  # cameras and networks can block: do it on a thread we may abandon
        t = threading.Thread(target=open_it, daemon=True)
        t.start()
        t.join(timeout + 2.0)
        if t.is_alive():
            raise UserError(
                f"{target}: no answer within {timeout:.0f} s (unreachable or "
                "stalled); check the address, or raise --timeout"
            )
    cap = box["cap"]
    return cap if cap.isOpened() else None


def _cameras() -> str:
    found = sorted(
        glob.glob("/dev/video*"),
        key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p)],
    )
    return ", ".join(found) if found else "none"


def _not_found(spec: str) -> UserError:
    if Path(spec).is_symlink():  # it is there, but leads nowhere
        return UserError(
            f"source {spec!r} is a symbolic link to nothing (a loop, or a missing target); "
            "pass the file it should point to"
        )
    hint = ""
    parent = Path(spec).parent
    if parent.is_dir():
        names = [p.name for p in parent.iterdir() if p.name != Path(spec).name]
        close = difflib.get_close_matches(Path(spec).name, names, n=1, cutoff=0.75)
        if close:
            hint = f" (did you mean {parent / close[0]}?)"
    return UserError(
        f"source {spec!r} not found{hint}: expected a video or image file, a folder "
        "or glob of images, a webcam index such as 0, or an rtsp:// or http(s):// "
        "stream URL"
    )


def _images_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file()]
    images = sorted((p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key)
    if images:  # without any, the error says what to do
        _warn_about_videos(str(folder), files)
    return images


def _warn_about_videos(spec: str, files: list[Path]) -> None:
    """A folder or glob is segmented as images: say which videos it leaves out."""
    videos = sorted((p.name for p in files if p.suffix.lower() in VIDEO_EXTENSIONS), key=str.lower)
    if videos:
        shown = ", ".join(videos[:3]) + (" ..." if len(videos) > 3 else "")
        print(
            f"lsdseg segment: warning: {spec}: {len(videos)} video(s) left out ({shown}); a "
            "folder or glob is segmented as images: pass each video on its own",
            file=sys.stderr,
        )


def open_source(
    spec: str,
    stride: int = 1,
    max_frames: int = 0,
    timeout: float = 10.0,
    on_skip: Callable[[str, str], None] | None = None,
) -> Source:
    """Turn the SOURCE argument into a probed :class:`Source`.

    Args:
        spec: a video or image file, a folder or glob of images, a webcam index, or a URL.
        stride: process every ``stride``-th video frame.
        max_frames: process at most this many frames (0: all).
        timeout: seconds to wait for a camera or stream to open.
        on_skip: called with (path, reason) for each image of a folder or glob that cannot be
            decoded and is skipped (see :class:`ImageSource`).

    Raises:
        UserError: the source does not exist, cannot be opened or holds no frames.
    """
    if stride < 1:
        raise UserError(f"--vid-stride {stride} must be >= 1")
    path = Path(spec)
    if spec.isdigit() and not path.exists():
        cap = _capture(int(spec), "webcam", timeout)
        if cap is None:
            raise UserError(
                f"webcam {spec}: no camera with this index (video devices here: "
                f"{_cameras()}); pass another index, a file or a stream URL"
            )
        return VideoSource(cap, "webcam", f"webcam{spec}", f"webcam {spec}", stride, max_frames)
    if spec.lower().startswith(STREAM_SCHEMES):
        cap = _capture(spec, "stream", timeout)
        if cap is None:
            raise UserError(
                f"{spec}: cannot open the stream (unreachable, wrong URL, or not a "
                "video stream); check that it plays in a media player"
            )
        return VideoSource(cap, "stream", "stream", spec, stride, max_frames)
    if path.is_dir():
        files = _images_in(path)
        if not files:
            raise UserError(
                f"{spec}: the folder holds no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); pass a video file instead"
            )
        return ImageSource(files, path.resolve().name or "images", max_frames, on_skip)
    if not path.exists() and glob.has_magic(spec):
        matches = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
        files = sorted(
            (p for p in matches if p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key
        )
        if not files:
            what = f"{len(matches)} files but no images" if matches else "nothing"
            raise UserError(
                f"{spec}: the pattern matches {what}; pass images, or one video file at a time"
            )
        _warn_about_videos(spec, matches)
        return ImageSource(files, "images", max_frames, on_skip)
    if not path.exists():
        raise _not_found(spec)
    if not path.is_file():
        raise UserError(f"{spec}: not a regular file")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource([path], path.stem, max_frames)
    cap = _capture(str(path), "video", timeout)
    if cap is None:
        raise UserError(
            f"{spec}: not a video OpenCV can read (unknown format, or a corrupt or "
            "truncated file); check that it plays, or re-encode it to mp4"
        )
    return VideoSource(cap, "video", path.stem, spec, stride, max_frames)
