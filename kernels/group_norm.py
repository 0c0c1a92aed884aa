"""Fused GroupNorm (+ timestep scale/shift) (+ SiLU): one read and one write of the activation.

``y = silu((group_norm(x) * weight + bias) * (1 + scale) + shift)``, statistics in fp32, the
reference being :func:`lsdseg.ops.group_norm_silu_reference`. Two variants:

- ``fused``: one program per (sample, group) holds the whole group in registers, so the
  activation is read once and written once. Used when the group, padded to powers of two, has at
  most ``MAX_FUSED`` elements (every norm of the default UNet: 2-8 channels x 32x32 or less).
- ``split`` (``group_norm_split.py``): the group is cut into tiles whose statistics are merged
  per group before a second pass normalises each tile. The activation is read twice;
  parallelism no longer depends on batch x groups.

Layouts: any strides for which H and W collapse into one spatial axis (NCHW-contiguous and
channels-last both do); the output keeps the input's memory format.
"""

from __future__ import annotations

from typing import Literal

import torch
import triton
import triton.language as tl

from lsdseg.kernels import group_norm_split
from lsdseg.kernels._device import (
    check_device,
    check_dtype,
    check_no_grad,
    check_power_of_2,
    cuda_device_of,
    next_power_of_2,
)
from lsdseg.kernels._modulate import _affine_and_modulation
from lsdseg.kernels.group_norm_split import num_warps_for

OP = "group_norm_silu"
MAX_FUSED = 16384  # elements of a padded group the fused kernel keeps in registers
Variant = Literal["auto", "fused", "split"]


@triton.jit
def _group_norm_silu_kernel(
    X,  # input (B, C, H, W), read through the strides below
    Y,  # output, same shape; may have other strides than X
    Weight,  # affine weight (C,)
    Bias,  # affine bias (C,)
    Scale,  # timestep scale (B, C), stride_sb 0 for one row; a dummy when HAS_SCALE is False
    Shift,  # timestep shift (B, C), stride_tb 0 for one row; a dummy when HAS_SHIFT is False
    stride_xb,  # X: elements between samples
    stride_xc,  # X: between channels
    stride_xs,  # X: between spatial positions (H and W flattened)
    stride_yb,  # Y: the same three strides
    stride_yc,
    stride_ys,
    stride_w,  # Weight: between channels
    stride_bias,  # Bias: between channels
    stride_sb,  # Scale: between samples
    stride_sc,  # Scale: between channels
    stride_tb,  # Shift: between samples
    stride_tc,  # Shift: between channels
    G,  # groups
    CPG,  # channels per group
    HW,  # spatial positions, H * W
    eps,  # added to the variance
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= CPG, power of two
    BLOCK_HW: tl.constexpr,  # >= HW, power of two
):
    pid = tl.program_id(0)  # one program per (sample, group)
    b = pid // G
    ch = tl.arange(0, BLOCK_C)  # channel within the group
    sp = tl.arange(0, BLOCK_HW)
    mask_c = ch < CPG
    mask = mask_c[:, None] & (sp < HW)[None, :]  # (BLOCK_C, BLOCK_HW)
    c = (pid % G) * CPG + ch  # channel index in [0, C)
    x_ptrs = X + b * stride_xb + c[:, None] * stride_xc + sp[None, :] * stride_xs
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)

    n = CPG * HW
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / n
    xc = tl.where(mask, x - mean, 0.0)  # centred; padding stays 0
    var = tl.sum(tl.sum(xc * xc, axis=1), axis=0) / n
    rstd = 1.0 / tl.sqrt(var + eps)

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
    y = xc * a[:, None] + d[:, None]
    if SILU:
        y = y * tl.sigmoid(y)
    y_ptrs = Y + b * stride_yb + c[:, None] * stride_yc + sp[None, :] * stride_ys
    tl.store(y_ptrs, y.to(Y.dtype.element_ty), mask=mask)


def _spatial_stride(t: torch.Tensor, name: str) -> int:
    """The stride of the flattened (H, W) axis; ValueError when H and W do not collapse."""
    _, _, h, w = t.shape
    st = t.stride()
    if h == 1:
        return st[3]
    if w == 1:
        return st[2]
    if st[2] == st[3] * w:
        return st[3]
    raise ValueError(
        f"{OP}: {name} has strides {st} for shape {tuple(t.shape)}, in which H and "
        "W do not collapse into one axis; pass a contiguous (NCHW) or channels-last tensor, e.g. "
        f"{name}.contiguous()"
    )


def _check_vector(name: str, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{OP}: {name} has shape {tuple(t.shape)}; expected {shape} ({what})")
    check_dtype(OP, name, t)


def _modulation_rows(name: str, t: torch.Tensor, bsz: int, c: int) -> torch.Tensor:
    """Check a scale or shift of (B, C) or (1, C) and return it as (B, C): one row is expanded,
    a view whose stride between samples is 0, so every sample reads the same row."""
    if isinstance(t, torch.Tensor) and tuple(t.shape) == (1, c):
        check_dtype(OP, name, t)
        return t.expand(bsz, c)  # (B, C), stride 0 between samples: no copy
    _check_vector(name, t, (bsz, c), "one per sample and channel, or one row (1, C) for all")
    return t


def group_norm_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
    *,
    out: torch.Tensor | None = None,
    variant: Variant = "auto",
    tile: int | None = None,
) -> torch.Tensor:
    """GroupNorm with affine, then ``x * (1 + scale) + shift``, then SiLU, in one Triton kernel.

    Same maths as :func:`lsdseg.ops.group_norm_silu_reference`; statistics in fp32 whatever
    the input dtype. Forward only.

    Args:
        x: the activation; NCHW-contiguous, channels-last, or any layout whose H and W collapse.
        weight, bias: the affine parameters.
        groups: number of groups; must divide C.
        eps: added to the variance.
        scale, shift: per-sample, per-channel modulation (the timestep embedding), or None;
            one row (1, C) applies to every sample (read with stride 0, not copied).
        silu: apply SiLU last.
        out: write here instead of a new tensor (same shape and dtype as ``x``; may be ``x``).
        variant: ``fused`` (the group in registers: one read, one write), ``split`` (tiles,
            two reads) or ``auto`` (fused when the padded group has at most ``MAX_FUSED``
            elements).
        tile: elements per program of the split variant (a power of two >= 16; default
            ``group_norm_split.SPLIT_TILE``); giving it makes ``auto`` pick the split variant.

    Shapes:
        x: (B, C, H, W); weight, bias: (C,); scale, shift: (B, C) or (1, C). Returns
        (B, C, H, W) in the dtype and memory format of ``x`` (or ``out``).

    Raises:
        TypeError: a tensor is not float32, float16 or bfloat16, or dtypes of x and out differ.
        ValueError: a shape, layout, groups, eps, variant or tile is wrong.
        RuntimeError: the tensors are somewhere the kernels cannot run, or need grad.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{OP}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{OP}: x has shape {tuple(x.shape)}; expected 4-D (B, C, H, W)")
    check_dtype(OP, "x", x)
    bsz, c, h, w = x.shape
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c % groups:
        raise ValueError(f"{OP}: groups={groups!r} must be a positive integer dividing C={c}")
    if not eps >= 0.0:
        raise ValueError(f"{OP}: eps={eps!r} must be >= 0")
    if variant not in ("auto", "fused", "split"):
        raise ValueError(f"{OP}: variant={variant!r}; expected 'auto', 'fused' or 'split'")
    _check_vector("weight", weight, (c,), "one per channel")
    _check_vector("bias", bias, (c,), "one per channel")
    if scale is not None:
        scale = _modulation_rows("scale", scale, bsz, c)  # (B, C)
    if shift is not None:
        shift = _modulation_rows("shift", shift, bsz, c)  # (B, C)
    check_device(
        OP,
        _group_norm_silu_kernel,
        x=x,
        weight=weight,
        bias=bias,
        scale=scale,
        shift=shift,
        out=out,
    )
    check_no_grad(OP, x=x, weight=weight, bias=bias, scale=scale, shift=shift, out=out)
    if x.numel() >= 2**31:
        raise ValueError(
            f"{OP}: x has {x.numel()} elements; at most 2**31 - 1 are supported: split the batch"
        )
    stride_xs = _spatial_stride(x, "x")
    if out is None:
        out = torch.empty_like(x)  # keeps channels-last
    else:
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(f"{OP}: out has shape {tuple(out.shape)}; expected {tuple(x.shape)}")
        if out.dtype != x.dtype:
            raise TypeError(f"{OP}: out has dtype {out.dtype}; expected x's dtype {x.dtype}")
    stride_ys = _spatial_stride(out, "out")
    if out.numel() == 0:
        return out

    cpg, hw = c // groups, h * w
    block_c, block_hw = next_power_of_2(cpg), next_power_of_2(hw)
    fused_block = block_c * block_hw
    if variant == "auto":
        variant = "fused" if fused_block <= MAX_FUSED and tile is None else "split"
    if variant == "fused" and fused_block > MAX_FUSED:
        raise ValueError(
            f"{OP}: variant='fused' needs a group of at most {MAX_FUSED} elements once padded to "
            f"powers of two; this one has {block_c} x {block_hw}: use "
            "variant='split' or 'auto'"
        )
    if tile is not None:
        check_power_of_2(OP, "tile", tile, lowest=16)
    # without scale / shift, x stands in for the pointer: HAS_SCALE / HAS_SHIFT are compile-time
    # False and it is never read
    sc = scale if scale is not None else x
    sh = shift if shift is not None else x
    mod_strides = (
        *(scale.stride() if scale is not None else (0, 0)),
        *(shift.stride() if shift is not None else (0, 0)),
    )
    flags = {"HAS_SCALE": scale is not None, "HAS_SHIFT": shift is not None, "SILU": bool(silu)}

    with cuda_device_of(x):
        if variant == "fused":
            _group_norm_silu_kernel[(bsz * groups,)](
                x, out, weight, bias, sc, sh,
                *x.stride()[:2], stride_xs,
                *out.stride()[:2], stride_ys,
                weight.stride(0), bias.stride(0), *mod_strides,
                groups, cpg, hw, float(eps),
                **flags,
                BLOCK_C=block_c,
                BLOCK_HW=block_hw,
                num_warps=num_warps_for(fused_block),
            )  # fmt: skip
            return out
        tile = tile or group_norm_split.SPLIT_TILE
        group_norm_split.launch(
            x, out, weight, bias, sc, sh, stride_xs, stride_ys, mod_strides, groups, float(eps),
            flags, tile,
        )  # fmt: skip
    return out
