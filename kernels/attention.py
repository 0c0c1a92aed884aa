"""Flash-attention forward: ``softmax(q k^T / sqrt(d)) v`` without the (L, M) score matrix.

The pattern of the Triton fused-attention tutorial (Dao et al., FlashAttention-2): each program
owns ``BLOCK_M`` query rows, streams keys and values in blocks of ``BLOCK_N`` and keeps a running
row maximum ``m``, row sum ``l`` and an fp32 accumulator (online softmax, in base 2 with the
scale folded into one multiply). Key blocks that lie wholly inside the sequence run without
masks; the last, partial one is masked, so any sequence length works. Head dims up to 128 are
padded to a power of two >= 16 (``tl.dot``'s minimum) with masked loads. The reference is
:func:`lsdseg.ops.attention_reference`; forward only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from lsdseg.kernels._device import (
    check_device,
    check_dtype,
    check_no_grad,
    check_power_of_2,
    cuda_device_of,
    next_power_of_2,
)

OP = "attention"
MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634


@triton.jit
def _load_block(
    ptrs,  # (BLOCK_R, BLOCK_D) pointers: rows of a sequence, head-dim columns
    rows,  # (BLOCK_R,) sequence positions of the rows
    offs_d,  # (BLOCK_D,) head-dim positions
    n_rows,  # sequence length: rows at or past it read as 0
    D,  # head dim: columns at or past it read as 0
    MASK_ROWS: tl.constexpr,  # the block may run past the sequence
    EVEN_D: tl.constexpr,  # BLOCK_D == D
):
    if MASK_ROWS:
        mask = (rows < n_rows)[:, None]
        if not EVEN_D:
            mask = mask & (offs_d < D)[None, :]
        block = tl.load(ptrs, mask=mask, other=0.0)
    elif EVEN_D:
        block = tl.load(ptrs)
    else:
        block = tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)
    return block


@triton.jit
def _attention_inner(
    acc,  # (BLOCK_M, BLOCK_D) fp32 running numerator
    l_i,  # (BLOCK_M,) fp32 running softmax denominator
    m_i,  # (BLOCK_M,) fp32 running row maximum of the scaled scores (base 2)
    q,  # (BLOCK_M, BLOCK_D) query block
    K_head,  # keys of this (batch, head): row n at K_head + n * stride_kn
    V_head,  # values of this (batch, head)
    stride_kn,  # K: elements between sequence positions
    stride_kd,  # K: between head-dim positions
    stride_vn,  # V: the same two strides
    stride_vd,
    lo,  # first key position of this stage
    hi,  # one past the last
    L_K,  # key sequence length
    D,  # head dim
    qk_scale,  # log2(e) / sqrt(d)
    BLOCK_N: tl.constexpr,  # keys per step
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
    MASK_N: tl.constexpr,  # this stage holds the partial last key block
    EVEN_D: tl.constexpr,  # BLOCK_D == D: no head-dim mask
    PRECISION: tl.constexpr,  # tl.dot input_precision ("ieee" keeps fp32 exact)
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k_ptrs = K_head + cols[:, None] * stride_kn + offs_d[None, :] * stride_kd
        k = _load_block(k_ptrs, cols, offs_d, L_K, D, MASK_N, EVEN_D)  # (BLOCK_N, BLOCK_D)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        if MASK_N:
            qk = tl.where((cols < L_K)[None, :], qk, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.exp2(m_i - m_ij)  # rescales what was accumulated under the old maximum
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = V_head + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
        v = _load_block(v_ptrs, cols, offs_d, L_K, D, MASK_N, EVEN_D)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _attention_fwd_kernel(
    Q,  # queries (B, H, L_Q, D), read through the strides below
    K,  # keys (B, H, L_K, D)
    V,  # values (B, H, L_K, D)
    Out,  # output (B, H, L_Q, D)
    stride_qb,  # Q: elements between batch items
    stride_qh,  # Q: between heads
    stride_qm,  # Q: between sequence positions
    stride_qd,  # Q: between head-dim positions
    stride_kb,  # K: the same four strides
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,  # V: the same four strides
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,  # O: the same four strides
    stride_oh,
    stride_om,
    stride_od,
    H,  # heads
    L_Q,  # query sequence length
    L_K,  # key sequence length
    D,  # head dim
    qk_scale,  # log2(e) / sqrt(D)
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per step
    BLOCK_D: tl.constexpr,  # head dim padded to a power of two >= 16
    EVEN_D: tl.constexpr,  # BLOCK_D == D
    PRECISION: tl.constexpr,  # tl.dot input_precision
):
    # 1-D grid, query blocks fastest: the programs of one (batch, head) run together and share
    # its keys and values in L2
    n_m = tl.cdiv(L_Q, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % n_m
    bh = pid // n_m
    b = bh // H
    h = bh % H

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * stride_qb + h * stride_qh
    q_ptrs += offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = _load_block(q_ptrs, offs_m, offs_d, L_Q, D, True, EVEN_D)  # (BLOCK_M, BLOCK_D), pads 0

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    K_head = K + b * stride_kb + h * stride_kh
    V_head = V + b * stride_vb + h * stride_vh
    n_full = (L_K // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attention_inner(
        acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
        0, n_full, L_K, D, qk_scale,
        BLOCK_N, BLOCK_D, False, EVEN_D, PRECISION,
    )  # fmt: skip
    if n_full < L_K:
        acc, l_i, m_i = _attention_inner(
            acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_kd, stride_vn, stride_vd,
            n_full, L_K, L_K, D, qk_scale,
            BLOCK_N, BLOCK_D, True, EVEN_D, PRECISION,
        )  # fmt: skip
    out = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh
    o_ptrs += offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    mask_o = (offs_m < L_Q)[:, None]
    if not EVEN_D:
        mask_o = mask_o & (offs_d < D)[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=mask_o)


class LaunchConfig(NamedTuple):
    """How one attention call is launched."""

    block_m: int  # query rows per program
    block_n: int  # keys per step
    num_warps: int
    num_stages: int  # software-pipelining depth of the key loop


# (padded head dim, BLOCK_M) -> (BLOCK_N, num_warps, num_stages). BLOCK_M is the largest row for
# long sequences and shrinks to the next power of two >= L (at least 16) for short ones, so the
# model's 8x8 level (L = 64) wastes no rows. Every entry compiles without register spills for
# sm_90 (H100, H200) and sm_87 (Jetson Orin), as the launches specialise it (checked from the
# cubins that Triton 3.9 makes, with the cuobjdump in its wheel, by scripts/compile_kernels.py
# and tests/test_kernels_compile.py).
#
# fp32 dots run as IEEE fp32 FMAs on the CUDA cores, not on tensor cores (input_precision
# "ieee": TF32 would round q and k to 10 mantissa bits), so they get small tiles: the
# tutorial's 64 x 32 tile at 4 warps took 255 registers and a 768-byte stack at d = 64 on sm_90
# and spilled at d = 32 (the default UNet's attention) too; at 8 warps it still spilled on sm_87.
# 16-key blocks at 8 warps stay under 120 registers for every head dim; at d = 128 the tile
# has 16 rows.
FP32_CONFIGS: dict[int, dict[int, tuple[int, int, int]]] = {
    16: {64: (16, 8, 2), 32: (16, 8, 2), 16: (16, 8, 2)},
    32: {64: (16, 8, 2), 32: (16, 8, 2), 16: (16, 8, 2)},
    64: {64: (16, 8, 2), 32: (16, 8, 2), 16: (16, 8, 2)},
    128: {16: (16, 8, 2)},
}
# fp16 / bf16 dots run on tensor cores (fp32 accumulation): the tutorial's 128 x 64 tile, with
# 8 warps (4 spilled at d = 64 and 128), and narrower key blocks where a smaller tile would
# spill; at most 184 registers.
HALF_CONFIGS: dict[int, dict[int, tuple[int, int, int]]] = {
    16: {128: (64, 8, 3), 64: (64, 4, 3), 32: (64, 4, 3), 16: (64, 4, 3)},
    32: {128: (64, 8, 3), 64: (64, 4, 3), 32: (64, 4, 3), 16: (64, 4, 3)},
    64: {128: (64, 8, 3), 64: (32, 4, 3), 32: (32, 4, 3), 16: (64, 4, 3)},
    128: {64: (32, 8, 3), 32: (32, 8, 3), 16: (32, 8, 3)},
}


def launch_config(
    d: int,
    dtype: torch.dtype,
    l_q: int,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> LaunchConfig:
    """The launch of an attention call with head dim ``d``, ``l_q`` queries, and ``dtype``.

    From :data:`FP32_CONFIGS` (float32) or :data:`HALF_CONFIGS` (float16, bfloat16): the largest
    ``BLOCK_M`` of the head dim's row, or the next power of two >= ``l_q`` (at least 16) when that
    is smaller. An override replaces its value; with ``block_m`` given, warps and stages come from
    the table's entry for it (the nearest one if the row has none).
    """
    table = FP32_CONFIGS if dtype == torch.float32 else HALF_CONFIGS
    row = table[max(16, next_power_of_2(d))]
    if block_m is None:
        block_m = min(max(row), max(16, next_power_of_2(l_q)))
    nearest = min(row, key=lambda m: (abs(m - block_m), m))
    bn, warps, stages = row[nearest]
    return LaunchConfig(block_m, block_n or bn, num_warps or warps, num_stages or stages)


def _check_qkv(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{OP}: {name} has shape {tuple(t.shape)}; expected 4-D (B, heads, L, d)")
    check_dtype(OP, name, t)
    if t.numel() >= 2**31:
        raise ValueError(
            f"{OP}: {name} has {t.numel()} elements; at most 2**31 - 1 are supported: split the "
            "batch"
        )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` by flash attention, in one kernel.

    Scores and probabilities are fp32, as is the accumulator; fp32 inputs multiply as IEEE fp32
    on the CUDA cores (no TF32, no tensor cores: slower than fp16/bf16, which use them). Any
    strides; forward only. Launch settings: :func:`launch_config`.

    Args:
        q, k, v: queries, keys and values of one dtype (float32, float16 or bfloat16).
        out: write here instead of a new tensor (q's shape and dtype).
        block_m, block_n: query rows per program and keys per step (powers of two >= 16);
            default by head dim, dtype and sequence length (:func:`launch_config`).
        num_warps, num_stages: launch overrides, for tuning.

    Shapes:
        q: (B, heads, L, d); k, v: (B, heads, M, d), M >= 1; d at most 128. Returns
        (B, heads, L, d).

    Raises:
        TypeError: a dtype is not supported, or q, k, v (and out) differ in dtype.
        ValueError: shapes do not match, the head dim is unsupported, or an override is invalid.
        RuntimeError: the tensors are somewhere the kernels cannot run, or need grad.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_qkv(name, t)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            f"{OP}: q, k and v must share a dtype; got {q.dtype}, {k.dtype} and {v.dtype}"
        )
    bsz, heads, l_q, d = q.shape
    if tuple(k.shape) != (bsz, heads, k.shape[2], d) or tuple(v.shape) != tuple(k.shape):
        raise ValueError(
            f"{OP}: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not match; "
            "expected q (B, heads, L, d) and k, v (B, heads, M, d)"
        )
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(
            f"{OP}: head dim d={d} is not supported; the Triton kernel takes 1 to {MAX_HEAD_DIM} "
            "(32, 64 and 128 are the tuned ones): use ops backend 'torch' for wider heads"
        )
    l_k = k.shape[2]
    if l_k == 0 and q.numel() > 0:
        raise ValueError(f"{OP}: k and v have no positions (M=0); softmax needs at least one")
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value is not None:
            check_power_of_2(OP, name, value, lowest=16)
    check_device(OP, _attention_fwd_kernel, q=q, k=k, v=v, out=out)
    check_no_grad(OP, q=q, k=k, v=v)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous whatever q is
    else:
        if tuple(out.shape) != tuple(q.shape):
            raise ValueError(f"{OP}: out has shape {tuple(out.shape)}; expected {tuple(q.shape)}")
        if out.dtype != q.dtype:
            raise TypeError(f"{OP}: out has dtype {out.dtype}; expected q's dtype {q.dtype}")
        check_no_grad(OP, out=out)
    if out.numel() == 0:
        return out

    block_d = max(16, next_power_of_2(d))
    bm, bn, warps, stages = launch_config(d, q.dtype, l_q, block_m, block_n, num_warps, num_stages)
    grid = (triton.cdiv(l_q, bm) * bsz * heads,)
    with cuda_device_of(q):
        _attention_fwd_kernel[grid](
            q, k, v, out,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            heads, l_q, l_k, d, LOG2E / math.sqrt(d),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, EVEN_D=block_d == d,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
    return out
