"""Polyp-free frames made from polyp frames: the largest square away from the polyp.

Neither Kvasir-SEG nor CVC-ClinicDB holds a frame without a polyp, but most of each frame is
mucosa, folds, stool and scope border seen by the same cameras. A square crop that keeps clear
of the (dilated) polyp mask, resized to the model's size, is a polyp-free frame of that camera:
:func:`polyp_free_crop` cuts one. Training uses them as negatives beside real polyp-free
frames, and validation scores false alarms on crops of the validation frames.

Shapes:
    image (H, W, 3) uint8, mask (H, W) bool -> crop (s, s, 3) uint8 or None.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["MARGIN", "MIN_SIDE", "free_squares", "polyp_free_crop"]

MARGIN = 0.08  # the polyp mask is dilated by this share of the frame's shorter side
MIN_SIDE = 0.3  # a crop's side is at least this share of the frame's shorter side
_GRID = 96  # the free-square search runs on a grid of this many cells along the shorter side


def free_squares(mask: np.ndarray, margin: float = MARGIN) -> tuple[np.ndarray, float]:
    """The side of the largest mask-free square ending at each cell of a coarse grid.

    Returns:
        ``(sides, cell)``: ``sides`` (h, w) int32, in cells, where cell (i, j) is the bottom-right
        corner of the square; ``cell`` is a cell's size in frame pixels.
    """
    h, w = mask.shape
    cell = min(h, w) / _GRID
    gh, gw = max(1, round(h / cell)), max(1, round(w / cell))
    # a cell is blocked when any pixel of it is mask (INTER_AREA averages; > 0 keeps slivers)
    coarse = cv2.resize(mask.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA) > 0
    r = max(1, round(margin * _GRID))
    blocked = cv2.dilate(coarse.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    sides = np.zeros((gh, gw), np.int32)
    for i in range(gh):  # the classic maximal-square recurrence, one row at a time
        prev = sides[i - 1] if i else np.zeros(gw, np.int32)
        row = sides[i]
        for j in range(gw):
            if not blocked[i, j]:
                row[j] = 1 + (min(prev[j], row[j - 1], prev[j - 1]) if i and j else 0)
    return sides, cell


def polyp_free_crop(
    image: np.ndarray,
    mask: np.ndarray,
    size: int | None = None,
    rng: np.random.Generator | None = None,
    margin: float = MARGIN,
    min_side: float = MIN_SIDE,
) -> np.ndarray | None:
    """A square crop of ``image`` that keeps ``margin`` clear of ``mask``, or None.

    Without ``rng`` the crop is the largest such square (the first in row order when several
    tie); with it, one square drawn among those at least 0.8 times the largest. ``size`` resizes
    the crop to ``size`` x ``size`` (INTER_AREA).

    Returns:
        (s, s, 3) uint8, or None when no free square reaches ``min_side`` of the shorter side.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    sides, cell = free_squares(mask, margin)
    best = int(sides.max())
    if best * cell < min_side * min(mask.shape):
        return None
    if rng is None:
        i, j = np.unravel_index(int(np.argmax(sides)), sides.shape)
        s = best
    else:
        ii, jj = np.nonzero(sides >= max(1, int(0.8 * best)))
        k = int(rng.integers(len(ii)))
        i, j = int(ii[k]), int(jj[k])
        s = int(rng.integers(max(1, int(0.8 * best)), sides[i, j] + 1))
    side = int(s * cell)
    y1 = min(mask.shape[0], round((i + 1) * cell))
    x1 = min(mask.shape[1], round((j + 1) * cell))
    crop = image[max(0, y1 - side) : y1, max(0, x1 - side) : x1]
    if size is not None:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)
