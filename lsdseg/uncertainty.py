"""Aggregate K mask hypotheses into a confidence map and uncertainty maps.

All functions take per-hypothesis foreground probabilities ``p`` of shape (..., K, H, W) and
reduce over the K axis (dim -3). Entropies are in bits, so a binary pixel's entropy is in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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


def aggregate(p: torch.Tensor) -> Aggregate:
    """Mean, std, predictive entropy and mutual information over the hypothesis axis.

    Shapes:
        p: (..., K, H, W) probabilities in [0, 1] -> each field (..., H, W).
    """
    if p.dim() < 3:
        raise ValueError(f"p has shape {tuple(p.shape)}; expected (..., K, H, W)")
    p = p.float()
    mean = p.mean(dim=-3)
    std = (p - mean.unsqueeze(-3)).square_().mean(dim=-3).sqrt_()  # population std
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
