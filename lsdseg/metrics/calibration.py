"""Calibration (ECE) and uncertainty quality (AUROC of uncertainty for error pixels)."""

from __future__ import annotations

import torch
from torch import Tensor

from lsdseg.metrics._validate import _CHUNK, _batched, _binary, _real, _same_shape


# --------------------------------------------------------------------------- calibration
def _ece_bins(prob: Tensor, target: Tensor, bins: int) -> tuple[Tensor, Tensor, int]:
    """Per-image, per-bin sums of ``prob`` and of ``target`` (each ``(N, bins)``) and H*W."""
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise TypeError(f"bins must be an int, got {type(bins).__name__}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, t = _real(prob, "prob"), _binary(target, "target")
    _same_shape(p, t, "prob", "target")
    if (p < 0).any() or (p > 1).any():
        raise ValueError(
            f"prob must contain probabilities in [0, 1], got min {p.min().item():.4g} and "
            f"max {p.max().item():.4g}; apply a sigmoid to logits first"
        )
    n = p.shape[0]
    p, y = p.reshape(n, -1), t.reshape(n, -1).double()
    b = (p * bins).floor().long().clamp_(max=bins - 1)
    idx = (b + bins * torch.arange(n, device=p.device)[:, None]).flatten()
    zeros = torch.zeros(n * bins, dtype=torch.float64, device=p.device)
    sp = zeros.index_add(0, idx, p.flatten()).view(n, bins)
    sy = zeros.index_add(0, idx, y.flatten()).view(n, bins)
    return sp, sy, p.shape[1]


def ece(prob: Tensor, target: Tensor, bins: int = 15) -> Tensor:
    """Expected calibration error of per-pixel foreground probabilities, per image.

    Each pixel is a binary prediction with confidence ``prob``. Pixels go to equal-width bin
    ``b = min(floor(prob * bins), bins - 1)``, i.e. ``[b/bins, (b+1)/bins)`` with the last bin
    closed at 1, and ``ECE = sum_b (n_b / n) |mean(prob in b) - mean(target in b)|``: the
    count-weighted gap between mean probability and observed foreground frequency (binary
    reliability diagram); empty bins add 0. :func:`ece_pooled` pools the pixels of all images.

    Args:
        prob: Foreground probabilities in [0, 1], any real dtype.
        target: Binary reference mask.
        bins: Number of bins, >= 1.

    Shapes:
        prob, target: ``(N, H, W)`` or ``(H, W)``, equal shapes.

    Returns:
        ``float64`` tensor ``(N,)`` in [0, 1]; always defined.

    Raises:
        TypeError: If an argument is not a real-valued tensor or ``bins`` is not an int.
        ValueError: On shape mismatch, ``prob`` outside [0, 1] or NaN, non-binary ``target``
            or ``bins < 1``.
    """
    sp, sy, npix = _ece_bins(prob, target, bins)
    return (sp - sy).abs().sum(1) / npix


def ece_pooled(prob: Tensor, target: Tensor, bins: int = 15) -> Tensor:
    """ECE as :func:`ece`, with the pixels of all N images pooled in one reliability diagram.

    Args, Shapes, Raises: as :func:`ece`.

    Returns:
        0-d ``float64`` tensor.
    """
    sp, sy, npix = _ece_bins(prob, target, bins)
    return (sp.sum(0) - sy.sum(0)).abs().sum() / (npix * sp.shape[0])


# --------------------------------------------------------------------------- uncertainty AUROC
def _auroc_rows(score: Tensor, label: Tensor) -> Tensor:
    """Mann-Whitney AUROC of each row of ``score`` (M, P) for bool ``label`` (M, P)."""
    m, n = score.shape
    s, order = torch.sort(score, dim=1)
    lab = torch.gather(label, 1, order).double()
    pos = torch.arange(n, device=score.device).expand(m, n)
    new = torch.ones_like(lab, dtype=torch.bool)  # first element of a tie group
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    last = torch.ones_like(new)  # last element of a tie group
    last[:, :-1] = new[:, 1:]
    start = torch.where(new, pos, 0).cummax(1).values
    end = torch.where(last, pos, n - 1).flip(1).cummin(1).values.flip(1)
    rank = (start + end).double() / 2 + 1  # average 1-based rank of the tie group
    n_pos = lab.sum(1)
    n_neg = n - n_pos
    u = (rank * lab).sum(1) - n_pos * (n_pos + 1) / 2
    return torch.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg).clamp(min=1), torch.nan)


def _auroc_inputs(uncertainty: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    u, e = _real(uncertainty, "uncertainty"), _binary(error, "error")
    _same_shape(u, e, "uncertainty", "error")
    return u.reshape(u.shape[0], -1), e.reshape(e.shape[0], -1)


def uncertainty_auroc(uncertainty: Tensor, error: Tensor) -> Tensor:
    """AUROC of per-pixel uncertainty as a score for detecting erroneous pixels, per image.

    Positives are error pixels (``error = pred != target``); higher uncertainty should mean
    "more likely wrong". Exact Mann-Whitney form with average ranks for ties,
    ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` (equals sklearn's ``roc_auc_score``),
    vectorised over pixels and images (in chunks of about 4M pixels).

    Args:
        uncertainty: Real-valued per-pixel uncertainty (entropy, variance, ...); NaN rejected.
        error: Binary mask of erroneous pixels.

    Shapes:
        uncertainty, error: ``(N, H, W)`` or ``(H, W)``, equal shapes.

    Returns:
        ``float64`` tensor ``(N,)``; NaN for an image with no error pixel or no correct pixel.

    Raises:
        TypeError: If an argument is not a real-valued tensor.
        ValueError: On shape mismatch, NaN in ``uncertainty`` or non-binary ``error``.
    """
    u, e = _auroc_inputs(uncertainty, error)
    step = max(1, _CHUNK // u.shape[1])
    return torch.cat(
        [_auroc_rows(u[i : i + step], e[i : i + step]) for i in range(0, len(u), step)]
    )


def uncertainty_auroc_pooled(uncertainty: Tensor, error: Tensor) -> Tensor:
    """AUROC as :func:`uncertainty_auroc` over the pixels of all N images pooled.

    Args, Shapes, Raises: as :func:`uncertainty_auroc`.

    Returns:
        0-d ``float64`` tensor; NaN if there is no error pixel or no correct pixel at all.
    """
    u, e = _auroc_inputs(uncertainty, error)
    return _auroc_rows(u.reshape(1, -1), e.reshape(1, -1))[0]


def detection_auroc(score: Tensor, label: Tensor) -> Tensor:
    """AUROC of ``score`` for detecting the ``label`` items (e.g. frames with Dice < 0.5).

    The same exact Mann-Whitney form as :func:`uncertainty_auroc`, over one set of items
    (per-frame scores, not pixels).

    Shapes:
        score, label: ``(N,)``, equal shapes.

    Returns:
        0-d ``float64`` tensor; NaN when every item, or none, is labelled.

    Raises:
        TypeError, ValueError: as :func:`uncertainty_auroc`.
    """
    for x, name in ((score, "score"), (label, "label")):
        if isinstance(x, Tensor) and x.dim() != 1:
            raise ValueError(f"{name} must have shape (N,), got {tuple(x.shape)}")
    u = _batched(score, "score", 2, "(N,)").double()  # (1, N)
    if torch.isnan(u).any():
        raise ValueError("score contains NaN; drop those items first")
    e = _binary(label, "label", 2, "(N,)")
    _same_shape(u, e, "score", "label")
    return _auroc_rows(u, e)[0]
