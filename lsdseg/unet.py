"""The latent denoiser: a small UNet over mask latents, conditioned on the image latent.

Conditioning is channel concatenation of z_t and z_x at the input. Because the first layer is a
convolution, ``conv(concat(z_t, z_x)) = conv_z(z_t) + conv_x(z_x)``: :meth:`UNet.condition`
computes the z_x half once per frame and :meth:`UNet.denoise` adds it to every hypothesis, so
the image side never scales with K. An optional :class:`ConditionPyramid` (``cond_channels``)
adds per-frame features of z_x at every level of the down path as well, also once per frame.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from lsdseg.config import UNetConfig
from lsdseg.layers import (
    Downsample,
    GroupNormAct,
    ResBlock,
    SelfAttention,
    Upsample,
    zero_conv,
)


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


Condition = tuple[torch.Tensor, ...]  # UNet.condition's output: one tensor per level it feeds


class ConditionPyramid(nn.Module):
    """Per-frame features of z_x for each level of the denoiser's down path.

    With 1-4 trailing DDIM steps the first step starts from pure noise, so the denoiser
    segments from the image alone; without this branch, everything it knows of the image
    enters through ``cond_in``, one convolution into its first level (``channels[0]`` wide).
    This branch runs once per frame (its cost does not scale with K) and hands every level its
    own features of z_x, at that level's resolution. Its output projections start at zero, so
    a trained denoiser grown with it (:func:`lsdseg.checkpoint.grow_checkpoint`) starts out
    computing the same thing.

    Shapes:
        z_x: (B, c_x, h, w) -> one (B, out[i], h / 2**i, w / 2**i) per level i.
    """

    def __init__(
        self,
        c_x: int,
        widths: tuple[int, ...],
        out: tuple[int, ...],
        groups: int,
        depth: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c_x, widths[0], 3, padding=1)
        self.levels = nn.ModuleList(
            nn.Sequential(
                *([Downsample(widths[i - 1], w)] if i else []),
                *(ResBlock(w, w, groups) for _ in range(depth)),
            )
            for i, w in enumerate(widths)
        )
        self.proj = nn.ModuleList(zero_conv(w, c) for w, c in zip(widths, out, strict=True))

    def forward(self, z_x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(z_x)  # (B, widths[0], h, w)
        feats = []
        for level, proj in zip(self.levels, self.proj, strict=True):
            h = level(h)  # (B, widths[i], h / 2**i, w / 2**i)
            feats.append(proj(h))
        return feats


def repeat_condition(cond: Condition, k: int) -> Condition:
    """Repeat each image's condition for its K hypotheses: (B, C, h, w) -> (B*K, C, h, w) each."""
    out = []
    for c in cond:
        b = c.shape[0]
        out.append(c[:, None].expand(b, k, *c.shape[1:]).reshape(b * k, *c.shape[1:]))
    return tuple(out)


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
        self.cond_pyramid = (
            ConditionPyramid(cond_channels, cfg.cond_channels, ch, g, cfg.cond_depth)
            if cfg.cond_channels
            else None
        )

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

    def condition(self, z_x: torch.Tensor) -> Condition:
        """Everything the denoiser needs of the image, once per frame.

        Shapes:
            z_x: (B, c_x, h, w) -> ((B, ch[0], h, w),): the image half of the first
            convolution; with a condition pyramid, one (B, ch[i], h / 2**i, w / 2**i) per level.
        """
        first = self.cond_in(z_x)
        if self.cond_pyramid is None:
            return (first,)
        feats = self.cond_pyramid(z_x)
        return (first + feats[0], *feats[1:])

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Predict from z_t (N, c_m, h, w), t (N,) or (1,) and ``condition(z_x)``, repeated to N.

        A (1,) t is one timestep row for all N latents (every ResBlock broadcasts it).
        """
        emb = self.time_mlp(timestep_embedding(t, self.cfg.channels[0]))  # (N or 1, emb)
        h = self.conv_in(z_t) + cond[0]  # (N, ch[0], h, w)
        skips = []
        for i, blocks in enumerate(self.down):
            if 0 < i < len(cond):
                h = h + cond[i]  # (N, ch[i], h / 2**i, w / 2**i)
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
