"""Segmentation, calibration, uncertainty and sample-set metrics for binary masks.

MONAI-style: vectorised functions plus thin accumulating classes. Shared conventions:

* Masks are ``torch.Tensor`` of dtype bool, or integer/float holding only 0 and 1. Per-image
  arguments have shape ``(N, H, W)``; ``(H, W)`` is treated as ``N = 1``. Sample-set arguments
  have shape ``(N, K, H, W)``; ``(K, H, W)`` is treated as ``N = 1``.
* Per-image functions return ``float64`` tensors of shape ``(N,)`` on the input device;
  ``*_pooled`` functions return a 0-d ``float64`` tensor.
* NaN means "undefined for this image" (documented per function). The accumulating classes
  aggregate with NaN-aware means, so undefined images are skipped rather than counted as 0.
* Caller errors raise ``TypeError`` (not a tensor, complex dtype, bad argument type) or
  ``ValueError`` (bad shape, non-binary mask, probability outside [0, 1], ...).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_MASKS = "(N, H, W) or (H, W)"
_SETS = "(N, K, H, W) or (K, H, W)"
_CHUNK = 1 << 22  # elements per temporary block (32 MiB of float64)


# --------------------------------------------------------------------------- validation
def _batched(x: object, name: str, ndim: int, layout: str) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
    if x.ndim == ndim - 1:
        x = x.unsqueeze(0)
    elif x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {x.ndim}-D shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not have a zero-sized dimension, got {tuple(x.shape)}")
    return x


def _binary(x: object, name: str, ndim: int = 3, layout: str = _MASKS) -> Tensor:
    x = _batched(x, name, ndim, layout)
    if x.dtype == torch.bool:
        return x
    bad = (x != 0) & (x != 1)
    if bad.any():
        raise ValueError(
            f"{name} must be a binary mask with values in {{0, 1}}, found {x[bad][0].item()!r}; "
            "threshold probabilities first (e.g. prob > 0.5)"
        )
    return x != 0


def _real(x: object, name: str) -> Tensor:
    x = _batched(x, name, 3, _MASKS).double()
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; clean or mask it before computing metrics")
    return x


def _same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")


def _pair(pred: object, target: object) -> tuple[Tensor, Tensor]:
    p, t = _binary(pred, "pred"), _binary(target, "target")
    _same_shape(p, t, "pred", "target")
    return p, t


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


# --------------------------------------------------------------------------- HD95
def _spacing(spacing: object) -> tuple[float, float]:
    if spacing is None:
        return 1.0, 1.0
    try:
        vals = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        msg = f"spacing must be None or a pair (dy, dx) of numbers, got {spacing!r}"
        raise TypeError(msg) from exc
    if len(vals) != 2 or not all(0 < v < float("inf") for v in vals):
        raise ValueError(f"spacing must be two positive finite numbers (dy, dx), got {spacing!r}")
    return vals[0], vals[1]


def _boundary(mask: Tensor) -> Tensor:
    """``mask XOR erode(mask)``: 4-connected cross, outside = background (scipy/medpy default)."""
    inner = mask.clone()
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[:, :, 1:] &= mask[:, :, :-1]
    inner[:, :, :-1] &= mask[:, :, 1:]
    inner[:, [0, -1]] = False
    inner[:, :, [0, -1]] = False
    return mask & ~inner


def _nearest(src: Tensor, dst: Tensor, dst_mask: Tensor, scale: tuple[float, float]) -> Tensor:
    """Euclidean distance from each ``src`` pixel index (S, 2) to the closest ``dst`` pixel."""
    h, w = dst_mask.shape
    dev, f64 = src.device, torch.float64
    out = []
    if dst.shape[0] <= w:  # brute force, O(|src| |dst|): chunked cdist
        sc = torch.tensor(scale, dtype=f64, device=dev)
        a, b = src.double() * sc, dst.double() * sc
        step = max(1, _CHUNK // b.shape[0])
        for i in range(0, a.shape[0], step):
            d = torch.cdist(a[i : i + step], b, compute_mode="donot_use_mm_for_euclid_dist")
            out.append(d.min(1).values)
        return torch.cat(out)
    # Exact separable form, O(|src| W): vertical distance to the nearest dst pixel per column,
    # then the minimum over columns x' of (dy * gy)^2 + (dx * (x - x'))^2.
    rows = torch.arange(h, dtype=f64, device=dev)[:, None].expand(h, w)
    above = torch.where(dst_mask, rows, -torch.inf).cummax(0).values
    below = torch.where(dst_mask, rows, torch.inf).flip(0).cummin(0).values.flip(0)
    g2 = (torch.minimum(rows - above, below - rows) * scale[0]) ** 2
    cols = torch.arange(w, dtype=f64, device=dev)
    step = max(1, _CHUNK // w)
    for i in range(0, src.shape[0], step):
        y, x = src[i : i + step, 0], src[i : i + step, 1].double()
        out.append((g2[y] + ((x[:, None] - cols) * scale[1]) ** 2).min(1).values.sqrt())
    return torch.cat(out)


def _percentile(x: Tensor, q: float) -> Tensor:
    """Linear-interpolation percentile, as ``numpy.percentile``'s default method."""
    s = x.sort().values
    pos = q / 100 * (s.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, s.numel() - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def hd95(pred: Tensor, target: Tensor, spacing: tuple[float, float] | None = None) -> Tensor:
    """95th-percentile symmetric Hausdorff distance between mask boundaries, as medpy ``hd95``.

    Boundary = ``mask XOR binary_erosion(mask)`` with the 4-connected cross and the outside of
    the image counted as background (medpy's default ``connectivity=1``). The distances from
    every boundary pixel of each mask to the nearest boundary pixel of the other are pooled
    (both directions) and their 95th percentile is taken with linear interpolation. Loops over
    images; cost per image ``O(|dP| min(|dT|, W))``, memory bounded by chunking.

    Args:
        pred: Binary predicted mask.
        target: Binary reference mask.
        spacing: Pixel size ``(dy, dx)`` (row, column); ``None`` gives distances in pixels.

    Shapes:
        pred, target: ``(N, H, W)`` or ``(H, W)``, equal shapes.

    Returns:
        ``float64`` tensor ``(N,)``; 0.0 when both masks are empty, NaN when exactly one is
        (undefined; medpy raises). Aggregate with a NaN-aware mean and report the NaN count.

    Raises:
        TypeError: If a mask is not a real-valued tensor or ``spacing`` is not numeric.
        ValueError: On wrong ndim, shape mismatch, non-binary values or bad ``spacing``.
    """
    p, t = _pair(pred, target)
    scale = _spacing(spacing)
    bp, bt = _boundary(p), _boundary(t)
    out = torch.full((p.shape[0],), torch.nan, dtype=torch.float64, device=p.device)
    for i in range(p.shape[0]):
        ip, it = bp[i].nonzero(), bt[i].nonzero()
        if ip.shape[0] == 0 or it.shape[0] == 0:
            if ip.shape[0] == it.shape[0]:
                out[i] = 0.0
            continue
        d = torch.cat([_nearest(ip, it, bt[i], scale), _nearest(it, ip, bp[i], scale)])
        out[i] = _percentile(d, 95.0)
    return out


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


# --------------------------------------------------------------------------- sample sets
def _sets(samples: Tensor, annotations: Tensor) -> tuple[Tensor, Tensor]:
    s = _binary(samples, "samples", 4, _SETS)
    y = _binary(annotations, "annotations", 4, _SETS)
    if s.shape[0] != y.shape[0] or s.shape[2:] != y.shape[2:] or s.device != y.device:
        raise ValueError(
            f"samples {tuple(s.shape)} and annotations {tuple(y.shape)} must agree in N, H, W "
            f"and device (got {s.device} and {y.device}); only K and A may differ"
        )
    exact32 = s.shape[2] * s.shape[3] < (1 << 24)  # float32 matmul counts are exact below 2^24
    dtype = torch.float32 if exact32 else torch.float64
    return s.flatten(2).to(dtype), y.flatten(2).to(dtype)


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of all pairs of flattened masks, ``(N, K, P) x (N, A, P) -> (N, K, A)`` float64."""
    inter = (a @ b.transpose(1, 2)).double()
    union = a.sum(-1).double()[:, :, None] + b.sum(-1).double()[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


def ged(samples: Tensor, annotations: Tensor) -> Tensor:
    """Squared generalised energy distance between sample and annotation sets, per image.

    ``D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with ``d = 1 - IoU`` and
    IoU(empty, empty) = 1. Each expectation is the mean over all ordered pairs, including
    ``S = S'`` and ``Y = Y'`` (d = 0), as in the Probabilistic U-Net / PHiSeg reference code.
    Pairwise IoUs come from matrix products of the flattened masks.

    Args:
        samples: Binary predicted samples, K per image.
        annotations: Binary reference annotations (e.g. one per rater), A per image.

    Shapes:
        samples: ``(N, K, H, W)`` or ``(K, H, W)``; annotations: ``(N, A, H, W)`` or
        ``(A, H, W)``.

    Returns:
        ``float64`` tensor ``(N,)``; 0 for identical sets.

    Raises:
        TypeError: If an argument is not a real-valued tensor.
        ValueError: On wrong ndim, non-binary values or mismatched N, H, W.
    """
    s, y = _sets(samples, annotations)

    def mean_d(a: Tensor, b: Tensor) -> Tensor:
        return 1.0 - _pairwise_iou(a, b).mean((1, 2))

    return 2 * mean_d(s, y) - mean_d(s, s) - mean_d(y, y)


def _linear_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost perfect matching of a square matrix (shortest augmenting paths, O(n^3)).

    Returns ``(rows, cols)`` like ``scipy.optimize.linear_sum_assignment``.
    """
    n = cost.shape[0]
    u, v = np.zeros(n + 1), np.zeros(n + 1)  # dual potentials (index 0 is a sentinel)
    p = np.zeros(n + 1, dtype=np.int64)  # p[j]: 1-based row matched to column j, 0 = none
    way = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while p[j0] != 0:
            used[j0] = True
            i0, free = p[j0], ~used[1:]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
        while j0:  # augment along the alternating path
            p[j0] = p[way[j0]]
            j0 = way[j0]
    rows = p[1:] - 1
    order = np.argsort(rows)
    return rows[order], order


def hm_iou(samples: Tensor, annotations: Tensor) -> Tensor:
    """Hungarian-matched IoU between sample and annotation sets, per image.

    As in Kohl et al. (2019, Hierarchical Probabilistic U-Net) the sets are equalised by
    replication: with ``L = lcm(K, A)`` each sample is repeated ``L / K`` times and each
    annotation ``L / A`` times (for A dividing K: the annotations are repeated K / A times).
    The L x L IoU matrix (IoU(empty, empty) = 1) is solved for the maximum-IoU one-to-one
    matching and the matched IoUs are averaged. The assignment runs in numpy on the CPU, one
    image at a time, in ``O(L^3)``.

    Args:
        samples: Binary predicted samples, K per image.
        annotations: Binary reference annotations, A per image.

    Shapes:
        samples: ``(N, K, H, W)`` or ``(K, H, W)``; annotations: ``(N, A, H, W)`` or
        ``(A, H, W)``.

    Returns:
        ``float64`` tensor ``(N,)`` in [0, 1].

    Raises:
        TypeError: If an argument is not a real-valued tensor.
        ValueError: On wrong ndim, non-binary values or mismatched N, H, W.
    """
    s, y = _sets(samples, annotations)
    ious = _pairwise_iou(s, y).cpu().numpy()
    k, a = ious.shape[1:]
    lcm = int(np.lcm(k, a))
    out = np.empty(ious.shape[0])
    for i, m in enumerate(ious):
        m = np.repeat(np.repeat(m, lcm // k, axis=0), lcm // a, axis=1)
        rows, cols = _linear_assignment(1.0 - m)
        out[i] = m[rows, cols].mean()
    return torch.as_tensor(out, dtype=torch.float64, device=s.device)


# --------------------------------------------------------------------------- accumulators
class _Accumulator:
    """Per-image metric values collected across ``update`` calls; NaN-aware ``compute``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._values: dict[str, list[Tensor]] = {}
        self._ids: list[str] = []

    def _append(self, batch: dict[str, Tensor], ids: list[str] | None) -> None:
        n = next(iter(batch.values())).shape[0]
        if ids is not None and len(ids) != n:
            raise ValueError(f"ids must have one entry per image ({n}), got {len(ids)}")
        if self._values and set(batch) != set(self._values):
            raise ValueError(
                f"this update yields metrics {sorted(batch)} but earlier ones yielded "
                f"{sorted(self._values)}; pass the same optional inputs every time or reset()"
            )
        for key, val in batch.items():
            self._values.setdefault(key, []).append(val.detach().cpu())
        start = len(self._ids)
        self._ids.extend(ids if ids is not None else [str(start + j) for j in range(n)])

    def per_image(self) -> dict[str, Tensor]:
        """Metric name -> ``float64`` tensor ``(num_images,)`` of all values so far."""
        return {k: torch.cat(v) for k, v in self._values.items()}

    def rows(self) -> list[dict[str, str | float]]:
        """One dict per image, ``{"id": ..., metric: value, ...}``, for ``csv.DictWriter``."""
        cols = {k: v.tolist() for k, v in self.per_image().items()}
        return [{"id": i, **{k: c[j] for k, c in cols.items()}} for j, i in enumerate(self._ids)]

    def compute(self) -> dict[str, float]:
        """NaN-aware mean of each metric over all images (NaN only if every image is NaN).

        Raises:
            ValueError: If called before any ``update``.
        """
        if not self._values:
            raise ValueError(f"{type(self).__name__}.compute() called before any update()")
        return {k: torch.nanmean(v).item() for k, v in self.per_image().items()}


class SegmentationMetrics(_Accumulator):
    """Accumulates dice, iou, precision, recall, hd95 and optionally ece, uncertainty_auroc.

    Args:
        spacing: Pixel size ``(dy, dx)`` for :func:`hd95`; ``None`` for pixels.
        ece_bins: Number of bins for :func:`ece`.
        with_hd95: ``False`` skips HD95, the slowest metric.
    """

    def __init__(
        self, spacing: tuple[float, float] | None = None, ece_bins: int = 15, with_hd95: bool = True
    ) -> None:
        _ece_bins(torch.zeros(1, 1), torch.zeros(1, 1), ece_bins)  # validate ece_bins now
        self.spacing, self.ece_bins, self.with_hd95 = _spacing(spacing), ece_bins, with_hd95
        super().__init__()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        super().reset()
        self._ece_sums: Tensor | None = None  # (2, bins): pooled sum(prob), sum(target) per bin
        self._ece_pixels = 0

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        prob: Tensor | None = None,
        uncertainty: Tensor | None = None,
        ids: list[str] | None = None,
    ) -> dict[str, Tensor]:
        """Add a batch of images; every optional input must be given in all updates or none.

        Args:
            pred: Binary predicted masks.
            target: Binary reference masks.
            prob: Foreground probabilities, adds ``ece`` (and ``ece_pooled`` to compute()).
            uncertainty: Uncertainty maps, adds ``uncertainty_auroc`` for ``pred != target``.
            ids: Image identifiers for :meth:`rows` (default: running index as str).

        Shapes:
            All tensors: ``(N, H, W)`` or ``(H, W)``, equal shapes.

        Returns:
            This batch's values, metric name -> ``float64`` tensor ``(N,)``.

        Raises:
            TypeError, ValueError: As the metric functions; ValueError also if the optional
                inputs differ from earlier updates or ``len(ids) != N``.
        """
        batch = {f.__name__: f(pred, target) for f in (dice, iou, precision, recall)}
        if self.with_hd95:
            batch["hd95"] = hd95(pred, target, self.spacing)
        if prob is not None:
            sp, sy, npix = _ece_bins(prob, target, self.ece_bins)
            batch["ece"] = (sp - sy).abs().sum(1) / npix
        if uncertainty is not None:
            p, t = _pair(pred, target)
            batch["uncertainty_auroc"] = uncertainty_auroc(uncertainty, p != t)
        self._append(batch, ids)  # raises on inconsistent input before any state changes
        if prob is not None:
            sums = torch.stack([sp.sum(0), sy.sum(0)]).cpu()
            self._ece_sums = sums if self._ece_sums is None else self._ece_sums + sums
            self._ece_pixels += npix * sp.shape[0]
        return batch

    def compute(self) -> dict[str, float]:
        """NaN-aware means of the per-image metrics, plus ``ece_pooled`` if ``prob`` was given."""
        out = super().compute()
        if self._ece_sums is not None:
            out["ece_pooled"] = (self._ece_sums[0] - self._ece_sums[1]).abs().sum().item()
            out["ece_pooled"] /= self._ece_pixels
        return out


class SampleSetMetrics(_Accumulator):
    """Accumulates :func:`ged` and :func:`hm_iou` of sample sets against annotation sets."""

    def update(
        self, samples: Tensor, annotations: Tensor, ids: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Add a batch: samples ``(N, K, H, W)``, annotations ``(N, A, H, W)``; see :func:`ged`.

        Returns:
            This batch's values, metric name -> ``float64`` tensor ``(N,)``.

        Raises:
            TypeError, ValueError: As :func:`ged`; ValueError also if ``len(ids) != N``.
        """
        batch = {"ged": ged(samples, annotations), "hm_iou": hm_iou(samples, annotations)}
        self._append(batch, ids)
        return batch
