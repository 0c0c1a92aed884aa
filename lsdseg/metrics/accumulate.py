"""Accumulating metric classes: per-image values across batches, NaN-aware means."""

from __future__ import annotations

import torch
from torch import Tensor

from lsdseg.metrics._validate import _pair
from lsdseg.metrics.calibration import _ece_bins, uncertainty_auroc
from lsdseg.metrics.distance import _spacing, hd95
from lsdseg.metrics.overlap import dice, iou, precision, recall


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
