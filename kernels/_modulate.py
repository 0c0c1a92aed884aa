"""The per-channel part both GroupNorm+SiLU kernels share (a ``@triton.jit`` helper)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _affine_and_modulation(
    Weight,  # affine weight (C,)
    Bias,  # affine bias (C,)
    Scale,  # timestep scale (B, C), stride_sb 0 for one row; a dummy when HAS_SCALE is False
    Shift,  # timestep shift (B, C), stride_tb 0 for one row; a dummy when HAS_SHIFT is False
    b,  # the sample
    c,  # channel indices (BLOCK_C,)
    mask_c,  # which of them exist (BLOCK_C,)
    rstd,  # 1 / std of the group
    stride_w,  # Weight: between channels
    stride_bias,  # Bias: between channels
    stride_sb,  # Scale: between samples
    stride_sc,  # Scale: between channels
    stride_tb,  # Shift: between samples
    stride_tc,  # Shift: between channels
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
):
    """(a, d), each (BLOCK_C,) fp32, such that ``y = (x - mean) * a + d`` applies the norm, the
    affine and ``* (1 + scale) + shift`` in one multiply-add per element."""
    w = tl.load(Weight + c * stride_w, mask=mask_c, other=0.0).to(tl.float32)
    a = w * rstd
    d = tl.load(Bias + c * stride_bias, mask=mask_c, other=0.0).to(tl.float32)
    if HAS_SCALE:
        s = 1.0 + tl.load(Scale + b * stride_sb + c * stride_sc, mask=mask_c, other=0.0).to(
            tl.float32
        )
        a = a * s
        d = d * s
    if HAS_SHIFT:
        d = d + tl.load(Shift + b * stride_tb + c * stride_tc, mask=mask_c, other=0.0).to(
            tl.float32
        )
    return a, d
