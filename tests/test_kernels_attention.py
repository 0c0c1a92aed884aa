"""lsdseg.kernels.attention (flash-attention forward) against float64 softmax attention.

On a CPU-only machine the kernel runs through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before lsdseg.kernels is imported); on a CUDA machine it runs compiled, and
the bfloat16 and long-sequence cases run too. Output buffers are poisoned with NaN first.
"""

from __future__ import annotations

import pytest
import torch

from lsdseg import ops

pytest.importorskip("triton")
kernels = pytest.importorskip("lsdseg.kernels")

if kernels.available() is not None:
    pytest.skip(f"Triton kernels cannot run here: {kernels.available()}", allow_module_level=True)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# dtype -> (atol, rtol) against float64; the probabilities are rounded to the input dtype before
# they multiply V (as in every flash-attention kernel), hence more than an ulp for 16-bit types
TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
BF16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(not CUDA, reason="bfloat16 is broken in Triton's CPU interpreter"),
)
GPU_ONLY = pytest.mark.skipif(not CUDA, reason="long sequences are slow in the CPU interpreter")


def _qkv(b, h, l_q, l_k, d, dtype, seed=0, packed=False):
    """q sharpened (x2) so the softmax is far from uniform; ``packed``: strided views of one
    (B, L, 3, h, d) tensor, as a fused qkv projection would give."""
    gen = torch.Generator().manual_seed(seed)
    if packed:
        assert l_q == l_k
        qkv = torch.randn(b, l_q, 3, h, d, generator=gen).to(DEVICE, dtype)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, L, d), not contiguous
        return q * 2, k, v
    q = torch.randn(b, h, l_q, d, generator=gen) * 2
    k = torch.randn(b, h, l_k, d, generator=gen)
    v = torch.randn(b, h, l_k, d, generator=gen)
    return tuple(t.to(DEVICE, dtype) for t in (q, k, v))


def _check(q, k, v, out, dtype):
    expected = ops.attention_reference(q.double(), k.double(), v.double())
    assert not out.isnan().any(), "the kernel left elements unwritten"
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


# (B, heads, L, M, d): tails shorter than a block, L != M, head dims 32 / 64 and padded ones
CASES = [
    (2, 2, 37, 37, 32),
    (1, 2, 65, 65, 64),
    (1, 1, 37, 65, 32),
    (1, 2, 17, 5, 8),
    (1, 1, 20, 33, 24),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16], ids=str)
@pytest.mark.parametrize(("b", "h", "l_q", "l_k", "d"), CASES)
@pytest.mark.parametrize("blocks", [None, (16, 16)], ids=["default", "blocks16"])
def test_matches_float64_reference(dtype, b, h, l_q, l_k, d, blocks) -> None:
    q, k, v = _qkv(b, h, l_q, l_k, d, dtype)
    out = torch.full_like(q, float("nan"))
    block_m, block_n = blocks or (None, None)
    got = kernels.attention(q, k, v, out=out, block_m=block_m, block_n=block_n)
    assert got is out and got.dtype == dtype
    _check(q, k, v, got, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16], ids=str)
def test_strided_inputs_and_default_output(dtype) -> None:
    q, k, v = _qkv(2, 2, 37, 37, 32, dtype, packed=True)
    assert not q.is_contiguous()
    out = kernels.attention(q, k, v)
    assert out.shape == q.shape and out.is_contiguous()
    _check(q, k, v, out, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("length", [576, 1024])
def test_model_sequence_lengths(dtype, length) -> None:
    """24x24 and 32x32 feature maps: several key blocks, and (576) a partial last one."""
    q, k, v = _qkv(1, 1, length, length, 64, dtype)
    _check(q, k, v, kernels.attention(q, k, v), dtype)


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("length", "d"), [(4096, 64), (1024, 128), (4000, 32)])
def test_long_sequences_on_the_gpu(dtype, length, d) -> None:
    q, k, v = _qkv(2, 4, length, length, d, dtype)
    _check(q, k, v, kernels.attention(q, k, v), dtype)


def test_large_scores_do_not_overflow() -> None:
    """Scores around 1e3 overflow a naive exp; the running maximum keeps them finite."""
    q, k, v = _qkv(1, 1, 33, 40, 32, torch.float32)
    q = q * 60
    _check(q, k, v, kernels.attention(q, k, v), torch.float32)


def _bad(**change):
    q, k, v = _qkv(1, 2, 9, 9, 32, torch.float32)
    args = {"q": q, "k": k, "v": v}
    for name, value in change.items():  # the bad value, on the test device unless it is on meta
        on_cpu = isinstance(value, torch.Tensor) and value.device.type == "cpu"
        args[name] = value.to(DEVICE) if on_cpu else value
    return args


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"q": torch.zeros(2, 9, 32)}, ValueError, r"q has shape \(2, 9, 32\); expected 4-D"),
        ({"k": torch.zeros(1, 2, 9, 32, dtype=torch.int8)}, TypeError, "k has dtype torch.int8"),
        ({"v": torch.zeros(1, 2, 9, 32).half()}, TypeError, "q, k and v must share a dtype"),
        ({"k": torch.zeros(1, 3, 9, 32)}, ValueError, r"k \(1, 3, 9, 32\) .* do not match"),
        ({"v": torch.zeros(1, 2, 8, 32)}, ValueError, r"v \(1, 2, 8, 32\) do not match"),
        (
            {name: torch.zeros(1, 2, 9, 256) for name in "qkv"},
            ValueError,
            "head dim d=256 is not supported",
        ),
        ({"k": torch.zeros(1, 2, 0, 32), "v": torch.zeros(1, 2, 0, 32)}, ValueError, "M=0"),
        ({"block_m": 24}, ValueError, "block_m=24 must be a power of two >= 16"),
        ({"block_n": 8}, ValueError, "block_n=8 must be a power of two >= 16"),
        ({"out": torch.zeros(1, 2, 9, 16)}, ValueError, r"out has shape \(1, 2, 9, 16\)"),
        ({"out": torch.zeros(1, 2, 9, 32).half()}, TypeError, "out has dtype torch.float16"),
        ({"v": torch.zeros(1, 2, 9, 32, device="meta")}, ValueError, "all tensors must be on one"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_inputs_are_named(change, error, message) -> None:
    with pytest.raises(error, match=message):
        kernels.attention(**_bad(**change))


def test_forward_only_says_how_to_run() -> None:
    q, k, v = _qkv(1, 1, 9, 9, 32, torch.float32)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"forward-only .* q require grad.*no_grad"):
        kernels.attention(q, k, v)
    with torch.inference_mode():
        _check(q.detach(), k, v, kernels.attention(q.detach(), k, v), torch.float32)


# ---------------------------------------------------------------- launch configurations

from lsdseg.kernels.attention import launch_config  # noqa: E402 (after the skips above)

FP32, FP16 = torch.float32, torch.float16


@pytest.mark.parametrize(
    ("d", "dtype", "l_q", "expected"),
    [
        # fp32: 16-key blocks at 8 warps, 64-row tiles up to d = 64, 16-row tiles at d = 128
        (32, FP32, 64, (64, 16, 8, 2)),  # the default UNet's attention (8x8 level, d = 32)
        (64, FP32, 1024, (64, 16, 8, 2)),
        (64, FP32, 20, (32, 16, 8, 2)),
        (64, FP32, 9, (16, 16, 8, 2)),
        (100, FP32, 4096, (16, 16, 8, 2)),  # d = 100 pads to 128
        (8, FP32, 1024, (64, 16, 8, 2)),  # pads to 16
        # fp16 / bf16: the tutorial's 128 x 64 tile at 8 warps; d = 128 at 64 x 32
        (64, FP16, 1024, (128, 64, 8, 3)),
        (64, torch.bfloat16, 64, (64, 32, 4, 3)),
        (128, FP16, 4096, (64, 32, 8, 3)),
        (24, FP16, 1, (16, 64, 4, 3)),
    ],
)
def test_launch_config_follows_the_documented_tables(d, dtype, l_q, expected) -> None:
    assert tuple(launch_config(d, dtype, l_q)) == expected


def test_fp32_tiles_are_smaller_than_half_precision_tiles() -> None:
    for d in (16, 32, 64, 128):
        fp32 = launch_config(d, FP32, 4096)
        half = launch_config(d, FP16, 4096)
        assert fp32.block_m * fp32.block_n < half.block_m * half.block_n
    assert launch_config(64, FP32, 4096).block_m <= 64
    assert launch_config(128, FP32, 4096).block_m == 16


def test_launch_overrides_keep_the_rest_of_the_table() -> None:
    config = launch_config
    assert tuple(config(64, FP16, 1024, block_m=16)) == (16, 64, 4, 3)  # the row for 16 rows
    assert tuple(config(64, FP32, 1024, block_m=128)) == (128, 16, 8, 2)  # nearest row (64)
    assert tuple(config(64, FP16, 1024, block_n=32, num_warps=4)) == (128, 32, 4, 3)
    assert tuple(config(128, FP16, 1024, num_stages=2)) == (64, 32, 8, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(("l_q", "l_k", "d"), [(70, 70, 64), (20, 33, 64), (9, 40, 64),
                                                (40, 40, 128), (17, 17, 100)])  # fmt: skip
def test_every_table_row_matches_torch_sdpa(dtype, l_q, l_k, d) -> None:
    """Each BLOCK_M row of the fp32 and fp16 tables at d >= 64, against PyTorch's SDPA."""
    q, k, v = _qkv(1, 2, l_q, l_k, d, dtype, seed=3)
    got = kernels.attention(q, k, v)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), expected, atol=atol, rtol=rtol)
