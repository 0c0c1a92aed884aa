"""Sample-set metrics for multi-annotator data: GED and Hungarian-matched IoU."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lsdseg.metrics._validate import _SETS, _binary
from lsdseg.metrics.accumulate import _Accumulator


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
