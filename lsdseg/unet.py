"""The latent denoiser: a small UNet over mask latents, conditioned on the image latent.

Conditioning is channel concatenation of z_t and z_x at the input. Because the first layer is a
convolution, ``conv(concat(z_t, z_x)) = conv_z(z_t) + conv_x(z_x)``: :meth:`UNet.condition`
computes the z_x half once per frame and :meth:`UNet.denoise` adds it to every hypothesis, so
the image side never scales with K.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from lsdseg.config import UNetConfig
from lsdseg.layers import Downsample, GroupNormAct, ResBlock, SelfAttention, Upsample


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in "Attention is all you need".

    Shapes:
        t: (N,) -> (N, dim), [cos | sin] halves.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None, :]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class UNet(nn.Module):
    """Denoiser: (z_t, t, z_x) -> prediction (eps or v) with the shape of z_t.

    Shapes:
        z_t: (N, c_m, h, w); t: (N,); z_x: (N, c_x, h, w) -> (N, c_m, h, w).
    """

    def __init__(self, cfg: UNetConfig, latent_channels: int, cond_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        ch, g, emb = cfg.channels, cfg.groups, cfg.time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(latent_channels, ch[0], 3, padding=1)
        self.cond_in = nn.Conv2d(cond_channels, ch[0], 3, padding=1, bias=False)

        self.down = nn.ModuleList()
        for i, c in enumerate(ch):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, c, g, emb))
                if i in cfg.attention_levels:
                    blocks.append(SelfAttention(c, g, cfg.head_dim))
            self.down.append(blocks)
        self.downsample = nn.ModuleList(Downsample(a, b) for a, b in itertools.pairwise(ch))
        self.mid = ResBlock(ch[-1], ch[-1], g, emb)
        self.up = nn.ModuleList()
        for i, c in enumerate(ch):
            blocks = nn.ModuleList()
            for j in range(cfg.num_res_blocks):
                # only the first block of a level sees the concatenated skip (2c channels)
                blocks.append(ResBlock(2 * c if j == 0 else c, c, g, emb))
                if i in cfg.attention_levels:
                    blocks.append(SelfAttention(c, g, cfg.head_dim))
            self.up.append(blocks)
        self.upsample = nn.ModuleList(Upsample(b, a) for a, b in itertools.pairwise(ch))
        self.norm_out = GroupNormAct(ch[0], g)
        self.conv_out = nn.Conv2d(ch[0], latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def condition(self, z_x: torch.Tensor) -> torch.Tensor:
        """The image half of the first convolution: (B, c_x, h, w) -> (B, ch[0], h, w)."""
        return self.cond_in(z_x)

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predict from z_t (N, c_m, h, w), t (N,) and ``condition(z_x)`` (N, ch[0], h, w)."""
        emb = self.time_mlp(timestep_embedding(t, self.cfg.channels[0]))  # (N, emb)
        h = self.conv_in(z_t) + cond  # (N, ch[0], h, w)
        skips = []
        for i, blocks in enumerate(self.down):
            h = self._run(blocks, h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (N, ch[i+1], h/2, w/2)
        h = self.mid(h, emb)
        for i in reversed(range(len(self.up))):
            h = torch.cat([h, skips.pop()], dim=1)  # (N, 2 ch[i], ., .)
            h = self._run(self.up[i], h, emb)
            if i > 0:
                h = self.upsample[i - 1](h)  # (N, ch[i-1], 2., 2.)
        return self.conv_out(self.norm_out(h))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, z_x: torch.Tensor) -> torch.Tensor:
        return self.denoise(z_t, t, self.condition(z_x))

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h
