"""Aggregate K mask hypotheses into a confidence map and uncertainty maps.

All functions take per-hypothesis foreground probabilities ``p`` of shape (..., K, H, W) and
reduce over the K axis (dim -3). Entropies are in bits, so a binary pixel's entropy is in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# pixels some hypotheses call polyp: the seed of the candidate region of unsure_score
UNSURE_CANDIDATE = 0.1


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of Bernoulli(p), elementwise; exactly 0 at p in {0, 1}."""
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)) / math.log(2.0)


@dataclass(frozen=True)
class Aggregate:
    """Per-pixel summaries of K hypotheses; every field has shape (..., H, W)."""

    mean: torch.Tensor  # mean foreground probability: the confidence map
    std: torch.Tensor  # population std of the K probabilities
    entropy: torch.Tensor  # entropy of the mean (total predictive uncertainty), bits
    mutual_info: torch.Tensor  # entropy of mean - mean of entropies (disagreement), bits


def mean_std(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std over the hypothesis axis, in the dtype of ``p``.

    The one definition of both: :func:`aggregate` and the exported graph
    (:meth:`lsdseg.model.LatentSegmenter.forward`) use it.

    Shapes:
        p: (..., K, H, W) -> mean, std, each (..., H, W).

    Raises:
        ValueError: ``p`` has fewer than 3 dimensions.
    """
    if p.dim() < 3:
        raise ValueError(f"p has shape {tuple(p.shape)}; expected (..., K, H, W)")
    k = p.dim() - 3  # the K axis counted from the front, as the exported graph's ReduceMean has it
    mean = p.mean(dim=k)
    std = (p - mean.unsqueeze(k)).square_().mean(dim=k).sqrt_()  # in place: fresh tensors
    return mean, std


def aggregate(p: torch.Tensor) -> Aggregate:
    """Mean, std, predictive entropy and mutual information over the hypothesis axis.

    Shapes:
        p: (..., K, H, W) probabilities in [0, 1] -> each field (..., H, W).

    Raises:
        ValueError: ``p`` has fewer than 3 dimensions.
    """
    p = p.float()
    mean, std = mean_std(p)
    entropy = binary_entropy(mean)
    expected = binary_entropy(p).mean(dim=-3)
    mutual_info = (entropy - expected).clamp_min(0.0)  # >= 0 by Jensen, up to rounding
    return Aggregate(mean, std, entropy, mutual_info)


def agreement(masks: torch.Tensor) -> torch.Tensor:
    """Mean pairwise Dice between the K binary masks (1 when K == 1 or all pairs are empty).

    Shapes:
        masks: (..., K, H, W) bool or {0, 1} -> (...,).
    """
    m = masks.float().flatten(-2)  # (..., K, P)
    k = m.shape[-2]
    if k < 2:
        return torch.ones(m.shape[:-2])
    inter = m @ m.transpose(-1, -2)  # (..., K, K)
    area = m.sum(dim=-1)  # (..., K)
    denom = area[..., :, None] + area[..., None, :]
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))
    off = ~torch.eye(k, dtype=torch.bool)
    return dice[..., off].mean(dim=-1)


def unsure_window(size: int) -> int:
    """Side of the square dilation window of :func:`unsure_score` at model size ``size``.

    ``max(3, size // 16)``, rounded up to the next odd number so the window is centred.
    """
    side = max(3, size // 16)
    return side if side % 2 else side + 1


def unsure_score(
    mean: torch.Tensor,
    entropy: torch.Tensor,
    candidate: float = UNSURE_CANDIDATE,
    window: int | None = None,
) -> torch.Tensor:
    """How unsure the model is about one frame: mean entropy over its candidate region.

    The candidate region is every pixel where ``mean > candidate`` (default 0.1: anything some
    of the hypotheses call polyp), dilated by a square ``window`` x ``window`` max-pool (default
    :func:`unsure_window` of the map's size: ``max(3, S // 16)``, odd) so that the uncertain rim
    around it counts too. The score is the mean of ``entropy`` (bits, so in [0, 1]) over that
    region: near 0 when every hypothesis draws the same crisp mask, near 1 when they disagree
    everywhere in it. A frame with an empty region (the model is sure there is no polyp)
    scores exactly 0. Compute it at the model's S x S resolution, before resizing to the frame.

    Shapes:
        mean, entropy: (..., H, W), equal shapes -> (...,) float32.

    Raises:
        ValueError: on mismatched or too few dimensions, or an even or non-positive window.
    """
    if mean.shape != entropy.shape or mean.dim() < 2:
        raise ValueError(
            f"mean {tuple(mean.shape)} and entropy {tuple(entropy.shape)} must have the same "
            "shape (..., H, W)"
        )
    if window is None:
        window = unsure_window(max(mean.shape[-2:]))
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window} must be a positive odd number of pixels")
    lead, (h, w) = mean.shape[:-2], mean.shape[-2:]
    seed = (mean > candidate).float().reshape(-1, 1, h, w)  # (N, 1, H, W)
    region = F.max_pool2d(seed, window, stride=1, padding=window // 2) > 0
    region = region.reshape(*lead, h, w)
    ent = entropy.float()
    total = torch.where(region, ent, torch.zeros_like(ent)).sum(dim=(-2, -1))
    count = region.sum(dim=(-2, -1))
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
