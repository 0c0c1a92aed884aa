"""The presence head: does this frame hold a polyp at all?

Most frames of a colonoscopy show none, and a segmenter trained only on polyp frames draws one
anyway. The head reads the image encoder's feature maps once per frame (it does not scale with
K): for the pretrained encoder, the backbone's features at S/32 and S/16 (what the frame is),
the merged pyramid at S/8 (what the segmentation sees) and the latent z_x. Each map gives its
spatial mean and maximum per channel; a hidden layer and one logit follow. Mean pooling says
what the frame is like overall; max pooling keeps a small polyp from being averaged away.

Which maps, and a hidden layer rather than a linear one, were chosen on validation
(``benchmarks/RESULTS.md``, "Knowing when there is no polyp"). Training is ``lsdseg train
--stage presence`` (:mod:`lsdseg.presence_train`), with the rest of the model frozen.

Shapes:
    maps [(B, C_i, h_i, w_i)] -> logits (B,).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PresenceHead", "pool"]


def pool(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """[(B, C_i, h_i, w_i)] -> (B, 2 * sum C_i): the spatial mean and maximum of every
    channel, map after map."""
    return torch.cat([t for h in maps for t in (h.mean(dim=(2, 3)), h.amax(dim=(2, 3)))], dim=1)


class PresenceHead(nn.Module):
    """Pooled feature maps -> hidden layer (SiLU) -> one logit per frame.

    Args:
        channels: the channels of each map it reads, in order.
        hidden: the hidden layer's width.
    """

    def __init__(self, channels: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(2 * sum(channels), hidden)
        self.out = nn.Linear(hidden, 1)

    def forward_pooled(self, v: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 2 * sum C_i) -> logits (B,)."""
        return self.out(F.silu(self.hidden(v)))[:, 0]

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward_pooled(pool(maps))  # (B,)
