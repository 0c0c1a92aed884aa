"""The split variant of GroupNorm+SiLU, for groups too big for one program's registers.

Each group is cut into tiles of at most ``SPLIT_TILE`` elements. A stats kernel writes every
tile's count, mean and centred sum of squares; a finalize kernel merges them per group with Chan
et al.'s parallel-variance formula (stable where sum and sum of squares would cancel); an apply
kernel normalises each tile. The activation is read twice and written once, and the parallelism
no longer depends on batch x groups. The host wrapper with the checks is
:func:`lsdseg.kernels.group_norm.group_norm_silu`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lsdseg.kernels._device import next_power_of_2
from lsdseg.kernels._modulate import _affine_and_modulation

SPLIT_TILE = 4096  # elements per program of the split variant
FINALIZE_BLOCK = 256  # partial statistics merged per step by the finalize kernel


def num_warps_for(block: int) -> int:
    """Warps for a program over ``block`` elements: about 16 per thread, 1 to 16 warps."""
    return max(1, min(16, block // 512))


@triton.jit
def _group_norm_stats_kernel(
    X,  # input (B, C, H, W), read through the strides below
    Part,  # partial statistics (3, B * G * T) fp32: count, mean, centred sum of squares
    stride_xb,  # X: elements between samples
    stride_xc,  # X: between channels
    stride_xs,  # X: between spatial positions (H and W flattened)
    G,  # groups
    CPG,  # channels per group
    HW,  # spatial positions
    T,  # tiles per group
    T_HW,  # tiles along the spatial axis (T = channel tiles x T_HW)
    BLOCK_C: tl.constexpr,  # channels per tile, power of two
    BLOCK_HW: tl.constexpr,  # spatial positions per tile, power of two
):
    pid = tl.program_id(0)  # one program per (sample, group, tile)
    bg = pid // T
    tile = pid % T
    b = bg // G
    ch = (tile // T_HW) * BLOCK_C + tl.arange(0, BLOCK_C)  # channel within the group
    sp = (tile % T_HW) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = ch < CPG
    mask_s = sp < HW
    mask = mask_c[:, None] & mask_s[None, :]
    c = (bg % G) * CPG + ch
    x_ptrs = X + b * stride_xb + c[:, None] * stride_xc + sp[None, :] * stride_xs
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    count = tl.sum(mask_c.to(tl.float32), axis=0) * tl.sum(mask_s.to(tl.float32), axis=0)
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
    xc = tl.where(mask, x - mean, 0.0)
    m2 = tl.sum(tl.sum(xc * xc, axis=1), axis=0)
    n_parts = tl.num_programs(0)
    tl.store(Part + pid, count)
    tl.store(Part + n_parts + pid, mean)
    tl.store(Part + 2 * n_parts + pid, m2)


@triton.jit
def _group_norm_finalize_kernel(
    Part,  # partial statistics (3, B * G * T) fp32, from the stats kernel
    Stats,  # output (2, B * G) fp32: mean and 1 / std per group
    n_groups,  # B * G
    T,  # tiles per group
    eps,  # added to the variance
    BLOCK_T: tl.constexpr,  # tiles merged per step, power of two
):
    bg = tl.program_id(0)  # one program per (sample, group)
    n_parts = n_groups * T
    base = Part + bg * T
    offs = tl.arange(0, BLOCK_T)
    # pass 1: total count and mean; pass 2: M2 = sum(m2_t + n_t (mean_t - mean)^2)
    total = tl.zeros([BLOCK_T], dtype=tl.float32)
    weighted = tl.zeros([BLOCK_T], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        m = t0 + offs < T
        n_t = tl.load(base + t0 + offs, mask=m, other=0.0)
        mean_t = tl.load(base + n_parts + t0 + offs, mask=m, other=0.0)
        total += n_t
        weighted += n_t * mean_t
    count = tl.sum(total, axis=0)
    mean = tl.sum(weighted, axis=0) / count
    m2 = tl.zeros([BLOCK_T], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        m = t0 + offs < T
        n_t = tl.load(base + t0 + offs, mask=m, other=0.0)
        mean_t = tl.load(base + n_parts + t0 + offs, mask=m, other=0.0)
        m2_t = tl.load(base + 2 * n_parts + t0 + offs, mask=m, other=0.0)
        delta = mean_t - mean
        m2 += m2_t + n_t * delta * delta
    var = tl.sum(m2, axis=0) / count
    tl.store(Stats + bg, mean)
    tl.store(Stats + n_groups + bg, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _group_norm_apply_kernel(
    X,  # input (B, C, H, W), read through the strides below
    Y,  # output, same shape
    Stats,  # (2, B * G) fp32: mean and 1 / std per group, from the finalize kernel
    Weight,  # affine weight (C,)
    Bias,  # affine bias (C,)
    Scale,  # timestep scale (B, C), stride_sb 0 for one row; a dummy when HAS_SCALE is False
    Shift,  # timestep shift (B, C), stride_tb 0 for one row; a dummy when HAS_SHIFT is False
    stride_xb,  # X: elements between samples
    stride_xc,  # X: between channels
    stride_xs,  # X: between spatial positions
    stride_yb,  # Y: the same three strides
    stride_yc,
    stride_ys,
    stride_w,  # Weight: between channels
    stride_bias,  # Bias: between channels
    stride_sb,  # Scale: between samples
    stride_sc,  # Scale: between channels
    stride_tb,  # Shift: between samples
    stride_tc,  # Shift: between channels
    n_groups,  # B * G
    G,  # groups
    CPG,  # channels per group
    HW,  # spatial positions
    T,  # tiles per group
    T_HW,  # tiles along the spatial axis
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_C: tl.constexpr,  # channels per tile, power of two
    BLOCK_HW: tl.constexpr,  # spatial positions per tile, power of two
):
    pid = tl.program_id(0)  # one program per (sample, group, tile)
    bg = pid // T
    tile = pid % T
    b = bg // G
    ch = (tile // T_HW) * BLOCK_C + tl.arange(0, BLOCK_C)
    sp = (tile % T_HW) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = ch < CPG
    mask = mask_c[:, None] & (sp < HW)[None, :]
    c = (bg % G) * CPG + ch
    mean = tl.load(Stats + bg)
    rstd = tl.load(Stats + n_groups + bg)
    x_ptrs = X + b * stride_xb + c[:, None] * stride_xc + sp[None, :] * stride_xs
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)

    a, d = _affine_and_modulation(
        Weight,
        Bias,
        Scale,
        Shift,
        b,
        c,
        mask_c,
        rstd,
        stride_w,
        stride_bias,
        stride_sb,
        stride_sc,
        stride_tb,
        stride_tc,
        HAS_SCALE,
        HAS_SHIFT,
    )  # y = (x - mean) * a + d: norm, affine and modulation in one multiply-add per element
    y = (x - mean) * a[:, None] + d[:, None]
    if SILU:
        y = y * tl.sigmoid(y)
    y_ptrs = Y + b * stride_yb + c[:, None] * stride_yc + sp[None, :] * stride_ys
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)


def launch(
    x: torch.Tensor,
    out: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    stride_xs: int,
    stride_ys: int,
    mod_strides: tuple[int, ...],
    groups: int,
    eps: float,
    flags: dict[str, bool],
    tile: int,
) -> None:
    """Launch the split variant: stats per tile, merge per group, normalise per tile."""
    bsz, c, h, w = x.shape
    cpg, hw = c // groups, h * w
    # tiles run along the axis that is contiguous in memory, so loads coalesce
    if x.stride(1) < stride_xs:  # channels-last: channels first
        block_c = min(next_power_of_2(cpg), tile)
        block_hw = min(next_power_of_2(hw), tile // block_c)
    else:  # NCHW: spatial first
        block_hw = min(next_power_of_2(hw), tile)
        block_c = min(next_power_of_2(cpg), tile // block_hw)
    t_hw = triton.cdiv(hw, block_hw)
    n_tiles = triton.cdiv(cpg, block_c) * t_hw
    n_groups = bsz * groups
    part = torch.empty(3, n_groups * n_tiles, device=x.device, dtype=torch.float32)
    stats = torch.empty(2, n_groups, device=x.device, dtype=torch.float32)
    warps = num_warps_for(block_c * block_hw)
    grid = (n_groups * n_tiles,)
    _group_norm_stats_kernel[grid](
        x, part,
        x.stride(0), x.stride(1), stride_xs,
        groups, cpg, hw, n_tiles, t_hw,
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=warps,
    )  # fmt: skip
    _group_norm_finalize_kernel[(n_groups,)](
        part, stats, n_groups, n_tiles, eps,
        BLOCK_T=min(next_power_of_2(n_tiles), FINALIZE_BLOCK), num_warps=1,
    )  # fmt: skip
    _group_norm_apply_kernel[grid](
        x, out, stats, weight, bias, scale, shift,
        x.stride(0), x.stride(1), stride_xs,
        out.stride(0), out.stride(1), stride_ys,
        weight.stride(0), bias.stride(0), *mod_strides,
        n_groups, groups, cpg, hw, n_tiles, t_hw,
        **flags, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=warps,
    )  # fmt: skip
