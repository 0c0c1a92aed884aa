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

from lsdseg.metrics.accumulate import SegmentationMetrics
from lsdseg.metrics.calibration import (
    detection_auroc,
    ece,
    ece_pooled,
    uncertainty_auroc,
    uncertainty_auroc_pooled,
)
from lsdseg.metrics.distance import hd95
from lsdseg.metrics.overlap import dice, iou, precision, recall
from lsdseg.metrics.sets import SampleSetMetrics, ged, hm_iou

__all__ = [
    "SampleSetMetrics",
    "SegmentationMetrics",
    "detection_auroc",
    "dice",
    "ece",
    "ece_pooled",
    "ged",
    "hd95",
    "hm_iou",
    "iou",
    "precision",
    "recall",
    "uncertainty_auroc",
    "uncertainty_auroc_pooled",
]
