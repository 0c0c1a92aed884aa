"""Overlap metrics: Dice, IoU, precision, recall (per image, empty-mask conventions)."""

from __future__ import annotations

import torch
from torch import Tensor

from lsdseg.metrics._validate import _pair


# --------------------------------------------------------------------------- overlap metrics
def _counts(pred: object, target: object) -> tuple[Tensor, Tensor, Tensor]:
    p, t = _pair(pred, target)
    tp = (p & t).sum((1, 2)).double()
    return tp, p.sum((1, 2)).double(), t.sum((1, 2)).double()


def _ratio(num: Tensor, den: Tensor, fallback: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), fallback)


def dice(pred: Tensor, target: Tensor) -> Tensor:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` per image.

    Args:
        pred: Binary predicted mask (bool, or int/float holding only 0/1).
        target: Binary reference mask.

    Shapes:
        pred, target: ``(N, H, W)`` or ``(H, W)`` (treated as ``N = 1``), equal shapes.

    Returns:
        ``float64`` tensor ``(N,)``; 1.0 when both masks are empty, 0.0 when exactly one is.

    Raises:
        TypeError: If an argument is not a real-valued tensor.
        ValueError: On wrong ndim, shape mismatch, zero-sized dims or non-binary values.
    """
    tp, ps, ts = _counts(pred, target)
    return _ratio(2 * tp, ps + ts, torch.ones_like(tp))


def iou(pred: Tensor, target: Tensor) -> Tensor:
    """Intersection over union (Jaccard) ``|P∩T| / |P∪T|`` per image.

    Args, Shapes, Raises: as :func:`dice`.

    Returns:
        ``float64`` tensor ``(N,)``; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    tp, ps, ts = _counts(pred, target)
    return _ratio(tp, ps + ts - tp, torch.ones_like(tp))


def precision(pred: Tensor, target: Tensor) -> Tensor:
    """Precision ``TP / (TP + FP)`` per image.

    Args, Shapes, Raises: as :func:`dice`.

    Returns:
        ``float64`` tensor ``(N,)``. If ``pred`` is empty (0/0): 1.0 when ``target`` is empty
        too, else 0.0 (the Dice convention; medpy gives 0.0 and MONAI NaN for every 0/0).
    """
    tp, ps, ts = _counts(pred, target)
    return _ratio(tp, ps, (ts == 0).double())


def recall(pred: Tensor, target: Tensor) -> Tensor:
    """Recall (sensitivity) ``TP / (TP + FN)`` per image.

    Args, Shapes, Raises: as :func:`dice`.

    Returns:
        ``float64`` tensor ``(N,)``. If ``target`` is empty (0/0): 1.0 when ``pred`` is empty
        too, else 0.0 (false positives on a negative image are not rewarded), mirroring
        :func:`precision`.
    """
    tp, ps, ts = _counts(pred, target)
    return _ratio(tp, ts, (ps == 0).double())
