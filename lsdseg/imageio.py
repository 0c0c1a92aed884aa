"""Reading images and masks, whatever their channels, bit depth or container, and resizing them.

Every reader returns the same thing: ``(H, W, 3)`` uint8 RGB images and ``(H, W)`` bool masks,
binarised by one documented rule. Errors are :class:`DataError` with the path and a fix.
The segmenter's frames come through here too: :func:`as_frames` checks what a call was given,
:func:`frame_to_model` resizes a frame to the model's ``S x S`` input and :func:`resize_maps`
the model's ``S x S`` maps back to the frame's size (torch is imported only there).
:func:`resize_square` is the one rule by which images (and masks) become ``S x S``, in
training (:func:`lsdseg.augment.resize_pair`) as at inference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch


class DataError(ValueError):
    """A dataset problem (unreadable file, bad layout, size mismatch...) with a fix hint."""


# ----------------------------------------------------------------------------- reading

# The most pixels an image file may declare, as Pillow's MAX_IMAGE_PIXELS (about 89.5 MP, a
# quarter of a GiB of 24-bit RGB): a few-MB PNG can declare 30000 x 30000 pixels and decode to
# GBs (a decompression bomb). None: no limit. LSDSEG_MAX_IMAGE_PIXELS or the commands'
# --max-pixels raise it for genuine large images.
MAX_IMAGE_PIXELS: int | None = 89_478_485
_BYTES_PER_PIXEL = 8  # the most an image file needs per pixel (16-bit RGBA, uncompressed)
_FILE_SLACK = 1 << 20  # headers, metadata, a thumbnail


def max_image_pixels() -> int | None:
    """The pixel limit in force: ``$LSDSEG_MAX_IMAGE_PIXELS`` when set, else
    :data:`MAX_IMAGE_PIXELS` (0 or ``none`` in the variable: no limit)."""
    env = os.environ.get("LSDSEG_MAX_IMAGE_PIXELS", "").strip().lower()
    if not env:
        return MAX_IMAGE_PIXELS
    if env in ("0", "none"):
        return None
    try:
        return max(1, int(float(env)))
    except (ValueError, OverflowError):
        raise ValueError(
            f"LSDSEG_MAX_IMAGE_PIXELS={env!r} must be a number of pixels (0: no limit)"
        ) from None


def _declared_size(path: Path, head: bytes) -> tuple[int, int] | None:
    """(width, height) that a PNG, JPEG or BMP header declares, read without decoding; None
    for other files (TIFF is checked through tifffile, which reads its header lazily)."""
    import struct

    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # BITMAPCOREHEADER: 16-bit sides
            return struct.unpack("<HH", head[18:22])
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(path)
    return None


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """The frame size of a JPEG's first SOF marker (segments walked, data never read)."""
    import struct

    with open(path, "rb") as f:
        f.seek(2)
        for _ in range(10_000):  # markers before the frame header; a real file has a few
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            kind = marker[1]
            if kind == 0xFF:  # fill byte
                f.seek(-1, 1)
                continue
            if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:  # no length
                continue
            size = f.read(2)
            if len(size) < 2:
                return None
            length = struct.unpack(">H", size)[0]
            if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
                body = f.read(5)
                if len(body) < 5:
                    return None
                h, w = struct.unpack(">HH", body[1:5])
                return w, h
            f.seek(length - 2, 1)
    return None


def _check_pixels(path: Path, width: int, height: int) -> None:
    limit = max_image_pixels()
    if limit is not None and width * height > limit:
        raise DataError(
            f"{path} declares {width}x{height} pixels ({width * height / 1e6:.0f} MP), above "
            f"the limit of {limit / 1e6:.1f} MP that guards against decompression bombs; if "
            "the image is genuine, raise the limit (--max-pixels, or LSDSEG_MAX_IMAGE_PIXELS)"
        )


def _check_file_size(path: Path) -> None:
    """Refuse a file larger than any image within the pixel limit can be, before reading it."""
    limit = max_image_pixels()
    size = path.stat().st_size
    if limit is not None and size > limit * _BYTES_PER_PIXEL + _FILE_SLACK:
        raise DataError(
            f"{path} is {size / 1e9:.1f} GB, larger than an image within the pixel limit "
            f"({limit / 1e6:.1f} MP) can be; if the image is genuine, raise the limit "
            "(--max-pixels, or LSDSEG_MAX_IMAGE_PIXELS)"
        )


def _decode(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Decode a file to an array in RGB(A) channel order; also return whether it is JPEG."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:  # OpenCV asserts on an empty buffer instead of returning None
        raise DataError(f"cannot decode image {path}: the file is empty (0 bytes)")
    _check_file_size(path)  # a sparse or padded file is never read whole
    declared = _declared_size(path, head)
    if declared is not None:
        _check_pixels(path, *declared)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            import tifffile
        except ImportError:
            raise RuntimeError(
                f"reading TIFF {path} needs tifffile: pip install tifffile"
            ) from None
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                _check_pixels(path, int(page.imagewidth), int(page.imagelength))
                arr, axes = page.asarray(), getattr(page, "axes", "")
        except DataError:
            raise
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise DataError(f"cannot decode TIFF {path}: {exc}; re-save it as PNG") from exc
        if arr.ndim == 3 and (
            axes.startswith("S") or (axes == "" and arr.shape[0] <= 4 < arr.shape[2])
        ):
            arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
        return arr, False
    import cv2

    try:
        with _decoder_warnings(path):
            arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV raises for some malformed buffers, returns None for others
        arr = None
    if arr is None:
        raise DataError(f"cannot decode image {path}: not a readable JPEG/PNG/BMP/TIFF file")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    return arr, head[:2] == b"\xff\xd8"


_STDERR_LOCK = threading.Lock()
_DECODER_NOISE = ("libpng warning:", "libpng error:", "Corrupt JPEG data:", "Premature end of JPEG")


@contextlib.contextmanager
def _decoder_warnings(path: Path) -> Iterator[None]:
    """Keep the C decoders' own warnings (libpng's ``libpng warning: tEXt: CRC error``, libjpeg's
    ``Corrupt JPEG data``), which they print on the process's stderr, off the user's terminal:
    they go to the log at debug level. Anything else written to stderr meanwhile (another
    thread's message) is passed on after the call. ``LSDSEG_DEBUG`` keeps them."""
    if os.environ.get("LSDSEG_DEBUG"):
        yield
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr: nothing to keep clean
            yield
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            rest = []
            for line in text.splitlines(keepends=True):
                if line.startswith(_DECODER_NOISE):
                    logging.getLogger(__name__).debug("%s: %s", path, line.strip())
                else:
                    rest.append(line)
            if rest:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write("".join(rest))


def _colour_channels(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Return (H, W, C) with alpha removed: C is 1 (grey) or 3 (RGB)."""
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or min(arr.shape[:2]) < 1:
        raise DataError(
            f"unsupported image layout {arr.shape} in {path}: expected (H, W) or (H, W, 1-4)"
        )
    c = arr.shape[2]
    return arr[..., :1] if c in (1, 2) else arr[..., :3]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB.

    JPEG/PNG/BMP are decoded with OpenCV (``IMREAD_UNCHANGED``, BGR converted to RGB, EXIF
    orientation ignored so images and masks stay consistent). TIFF (detected by magic bytes,
    not extension) is read with tifffile, which honours samples-per-pixel (CVC-ClinicDB TIFFs
    are RGB tagged as greyscale) and planar ``(3, H, W)`` storage. Channels: grey is
    replicated, grey+alpha keeps grey, RGBA drops alpha. Values: uint8 as is; uint16 is
    divided by 257 (full 16-bit range -> 8-bit, so dim 12-bit data stays dim); other integer
    types are cast if max <= 255 else scaled by their max; floats are clipped to [0, 1] when
    max <= 1, else min-max normalised; NaN -> 0.

    Args:
        path: Image file.

    Returns:
        Contiguous ``(H, W, 3)`` uint8 RGB array.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: If the file cannot be decoded or has an unsupported layout.
        RuntimeError: If a TIFF is given and tifffile is not installed.
    """
    arr, _ = _decode(path)
    return to_rgb8(arr, str(path))


def to_rgb8(arr: np.ndarray, source: str = "array") -> np.ndarray:
    """Convert a decoded image (grey, grey+alpha, RGB, RGBA; any numeric type) to uint8 RGB.

    The value rules are those of :func:`read_image`; channel order is kept as given.

    Shapes:
        (H, W) or (H, W, 1|2|3|4) -> (H, W, 3) uint8.

    Raises:
        DataError: an unsupported layout or pixel type (``source`` names it in the message).
    """
    arr = _colour_channels(np.asarray(arr), source)
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.integer):
        hi = max(int(arr.max()), 1)
        arr = np.clip(arr, 0, None)
        arr = arr.astype(np.uint8) if hi <= 255 else (arr * (255.0 / hi) + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        x = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if x.max() > 1.0:
            lo, hi = min(float(x.min()), 0.0), float(x.max())
            x = (x - lo) / (hi - lo)
        arr = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise DataError(f"unsupported pixel type {arr.dtype} in {source}: re-save as 8-bit PNG")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a segmentation mask as ``(H, W)`` bool.

    Binarisation: colour masks are reduced by the max over colour channels (alpha ignored);
    then foreground = ``value > scale / 2`` where ``scale`` is 1 if max <= 1 (0/1 masks, any
    dtype, incl. float probability maps -> ``> 0.5``), 255 if max <= 255 (``> 127``, robust to
    JPEG artefacts and anti-aliasing), else 65535 (16-bit, ``> 32767``). JPEG masks always use
    ``> 127`` so faint compression noise in an empty mask is never foreground.

    Args:
        path: Mask file.

    Returns:
        ``(H, W)`` bool array.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: If the file cannot be decoded or has an unsupported layout.
    """
    arr, is_jpeg = _decode(path)
    arr = _colour_channels(arr, Path(path)).max(axis=2)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr, nan=0.0)
    hi = float(arr.max()) if arr.size else 0.0
    scale = 255.0 if is_jpeg or 1.0 < hi <= 255.0 else 1.0 if hi <= 1.0 else 65535.0
    return np.ascontiguousarray(arr > scale / 2.0)


# ----------------------------------------------------------------------------- frames


_FRAME = "a numpy array (H, W, 3) uint8 BGR or (H, W) grey"
_EXPECTED = f"{_FRAME}, or a batch of them (a list, or (B, H, W, 3))"


def _not_a_frame(value: object, what: str, expected: str) -> TypeError:
    """The error for a ``value`` that is no image array, saying what it was and what to do."""
    if value is None:
        got, fix = "None", "; cv2.imread returns None for a missing or unreadable file"
    elif isinstance(value, (str, Path)):
        got = f"the {type(value).__name__} {str(value)!r}"
        fix = "; read the file first (cv2.imread)"
    else:
        got, fix = f"a {type(value).__name__}", ""
    return TypeError(f"{what} is {got}; expected {expected}{fix}")


def as_frames(image: object) -> tuple[list[np.ndarray], bool]:
    """The frames of a segmenter call (a list of arrays) and whether one frame was passed.

    One frame is (H, W) or (H, W, 1-4); a batch is a list of them or a (B, H, W, C) array.

    Raises:
        TypeError: ``image`` (or a frame of a batch) is not a numpy array.
        ValueError: an empty batch, or an array with no frame layout.
    """
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4)):
            return [image], True
        if image.ndim == 3:  # (64, 64, 5): 5 channels, or 64 grey frames? neither is guessed
            raise ValueError(
                f"image has shape {image.shape}: {image.shape[-1]} channels is not an image "
                f"(1-4 channels: grey, grey + alpha, BGR, BGRA); pass grey frames as a list "
                f"of (H, W) arrays; expected {_EXPECTED}"
            )
        if image.ndim != 4:
            raise ValueError(f"image has shape {image.shape}; expected {_EXPECTED}")
        frames = list(image)
    elif isinstance(image, Sequence) and not isinstance(image, (str, bytes)):
        frames = list(image)
    else:
        raise _not_a_frame(image, "image", _EXPECTED)
    if not frames:
        raise ValueError("image is an empty batch; pass at least one frame")
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray):
            raise _not_a_frame(f, f"frame {i} of the batch", _FRAME)
    return frames, False


# ----------------------------------------------------------------------------- resizing


def check_size(size: int) -> int:
    """``size`` as an int, for a ``size x size`` output.

    Raises:
        ValueError: ``size`` is not a positive int (a bool is not one).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size={size!r}: use a positive int such as 256")
    return int(size)


def resize_square(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` resized to ``size x size`` (aspect ratio not kept), ``array`` itself, uncopied,
    when it is that size already.

    ``INTER_AREA`` when both sides shrink (anti-aliased), else ``INTER_LINEAR``: the rule of
    every model input, training's images and masks (:func:`lsdseg.augment.resize_pair`) and
    inference's frames (:func:`frame_to_model`).

    Shapes:
        (H, W) or (H, W, C) -> (size, size) or (size, size, C), in the dtype of ``array``.

    Raises:
        ValueError: ``size`` is not a positive int.
    """
    import cv2

    size = check_size(size)
    h, w = array.shape[:2]
    if (h, w) == (size, size):
        return array
    interp = cv2.INTER_AREA if size <= h and size <= w else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interp)


def frame_to_model(frame: np.ndarray, size: int, order: Literal["bgr", "rgb"]) -> np.ndarray:
    """A frame as the model's input: uint8 RGB at ``size x size`` (aspect ratio not kept).

    Pixels are converted by :func:`to_rgb8`'s rules, BGR frames (OpenCV's order) reordered to
    RGB, and the image resized as training resizes it (:func:`resize_square`: ``INTER_AREA``
    when both sides shrink, else ``INTER_LINEAR``). A frame already RGB uint8 at that size is
    returned as is, uncopied.

    Shapes:
        (H, W) or (H, W, 1|2|3|4) -> (size, size, 3) uint8 RGB.

    Raises:
        DataError: an unsupported layout or pixel type.
    """
    rgb = to_rgb8(frame, "frame")
    if order == "bgr":
        rgb = np.ascontiguousarray(rgb[..., ::-1])  # OpenCV resizes contiguous arrays only
    return resize_square(rgb, size)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps at the model's size back to a frame's: bilinear, half-pixel centres
    (``align_corners=False``); the same tensor, uncopied, when it is that size already.

    Shapes:
        (C, S, S) -> (C, H, W), ``size`` = (H, W).
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    import torch.nn.functional as F

    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
