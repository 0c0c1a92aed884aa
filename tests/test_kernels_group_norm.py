"""lsdseg.kernels.group_norm_silu against a float64 run of the torch reference.

On a CPU-only machine the kernels run through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before lsdseg.kernels is imported); on a CUDA machine they run compiled, and
the bfloat16 cases run too (bf16 is broken in the interpreter). Every output buffer is poisoned
with NaN first, so an element the kernel fails to write fails the comparison.
"""

from __future__ import annotations

import pytest
import torch

from lsdseg import ops

pytest.importorskip("triton")
kernels = pytest.importorskip("lsdseg.kernels")
from lsdseg.kernels import group_norm_split  # noqa: E402

if kernels.available() is not None:
    pytest.skip(
        f"the Triton kernels cannot run here: {kernels.available()}", allow_module_level=True
    )

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# one tolerance table: dtype -> (atol, rtol) against float64; about two ulps of the output dtype
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
BF16 = pytest.param(
    torch.bfloat16,
    marks=pytest.mark.skipif(not CUDA, reason="bfloat16 is broken in Triton's CPU interpreter"),
)
DTYPES = [torch.float32, torch.float16, BF16]


def _inputs(shape, groups, dtype, modulation="both", channels_last=False, offset=1.5, seed=0):
    """x with a per-channel offset and spread; scale/shift as the model makes them (chunks)."""
    gen = torch.Generator().manual_seed(seed)
    b, c = shape[:2]
    spread = torch.rand(c, generator=gen)[None, :, None, None] * 3 + 0.5
    x = torch.randn(shape, generator=gen) * spread + offset
    weight = torch.randn(c, generator=gen) + 1
    bias = torch.randn(c, generator=gen)
    # non-contiguous (B, C) views, like ResBlock's `embed(emb).chunk(2, dim=1)`
    scale, shift = (torch.randn(b, 2 * c, generator=gen) * 0.5).chunk(2, dim=1)
    scale = scale if modulation in ("scale", "both") else None
    shift = shift if modulation in ("shift", "both") else None
    x = x.to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    move = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    return x, move(weight), move(bias), move(scale), move(shift)


def _expected(x, weight, bias, groups, scale, shift, silu):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return ops.group_norm_silu_reference(
        d(x), d(weight), d(bias), groups, 1e-5, d(scale), d(shift), silu
    )


def _poisoned(x):
    return torch.full_like(x, float("nan"))  # keeps the memory format of x


def _check(out, expected, dtype):
    atol, rtol = TOL[dtype]
    assert not out.isnan().any(), "the kernel left elements unwritten"
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


# (shape, groups): odd sizes, C/G = 3, one pixel, one channel per group, H != W
SHAPES = [((2, 24, 7, 7), 8), ((1, 6, 5, 9), 3), ((2, 8, 1, 3), 8), ((1, 4, 3, 1), 4)]
# the split variant with small tiles, so groups span several tiles, partial ones included
VARIANTS = [("fused", None), ("split", 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "groups"), SHAPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("variant", "tile"), VARIANTS, ids=["fused", "split"])
def test_matches_float64_reference(dtype, shape, groups, channels_last, variant, tile) -> None:
    x, w, b, scale, shift = _inputs(shape, groups, dtype, "both", channels_last)
    out = _poisoned(x)
    got = kernels.group_norm_silu(
        x, w, b, groups, 1e-5, scale, shift, True, out=out, variant=variant, tile=tile
    )
    assert got is out and got.dtype == dtype
    _check(got, _expected(x, w, b, groups, scale, shift, True), dtype)


@pytest.mark.parametrize("modulation", ["none", "scale", "shift", "both"])
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "no_silu"])
@pytest.mark.parametrize(("variant", "tile"), VARIANTS, ids=["fused", "split"])
def test_every_epilogue(modulation, silu, variant, tile) -> None:
    dtype = torch.float32
    x, w, b, scale, shift = _inputs((2, 6, 5, 3), 2, dtype, modulation)
    out = _poisoned(x)
    kernels.group_norm_silu(
        x, w, b, 2, 1e-5, scale, shift, silu, out=out, variant=variant, tile=tile
    )
    expected = _expected(x, w, b, 2, scale, shift, silu)
    _check(out, expected, dtype)
    if silu:  # SiLU really ran: without it some outputs are below SiLU's minimum (about -0.28)
        assert out.min() > -0.279
    else:
        assert out.min() < -0.3


@pytest.mark.parametrize(("variant", "tile"), VARIANTS, ids=["fused", "split"])
def test_one_modulation_row_serves_every_sample(variant, tile) -> None:
    """A (1, C) scale/shift (the model's one timestep row) gives what its (B, C) copy gives."""
    x, w, b, scale, shift = _inputs((3, 6, 5, 3), 2, torch.float32)
    scale, shift = scale[:1], shift[:1]  # (1, C) views with the strides of the chunks
    run = lambda sc, sh: kernels.group_norm_silu(  # noqa: E731
        x, w, b, 2, 1e-5, sc, sh, variant=variant, tile=tile
    )
    one = run(scale, shift)
    copied = run(scale.expand(3, -1).contiguous(), shift.expand(3, -1).contiguous())  # (B, C)
    assert torch.equal(one, copied)
    assert torch.equal(run(scale.expand(3, -1), shift.expand(3, -1)), one)  # stride-0 (B, C)
    _check(one, _expected(x, w, b, 2, scale, shift, True), torch.float32)


def test_default_output_keeps_the_memory_format() -> None:
    for channels_last in (False, True):
        x, w, b, scale, shift = _inputs((2, 12, 5, 7), 4, torch.float32, "both", channels_last)
        y = kernels.group_norm_silu(x, w, b, 4, 1e-5, scale, shift)
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
        _check(y, _expected(x, w, b, 4, scale, shift, True), torch.float32)


@pytest.mark.parametrize(("variant", "tile"), VARIANTS, ids=["fused", "split"])
def test_in_place(variant, tile) -> None:
    x, w, b, scale, shift = _inputs((2, 6, 5, 9), 3, torch.float32)
    expected = _expected(x, w, b, 3, scale, shift, True)
    y = kernels.group_norm_silu(x, w, b, 3, 1e-5, scale, shift, out=x, variant=variant, tile=tile)
    assert y is x
    _check(x, expected, torch.float32)


def test_auto_picks_split_for_a_group_too_big_for_registers(monkeypatch) -> None:
    """C/G = 2 at 96 x 100 pads to 2 x 16384 > MAX_FUSED: split, with the default tile."""
    x, w, b, scale, shift = _inputs((1, 4, 96, 100), 2, torch.float32)
    calls = []
    real_launch = group_norm_split.launch
    monkeypatch.setattr(group_norm_split, "launch", lambda *a: calls.append(1) or real_launch(*a))
    out = _poisoned(x)
    kernels.group_norm_silu(x, w, b, 2, 1e-5, scale, shift, out=out)
    assert calls == [1]
    _check(out, _expected(x, w, b, 2, scale, shift, True), torch.float32)
    kernels.group_norm_silu(*_inputs((2, 16, 32, 32), 8, torch.float32)[:3], 8)  # model-sized
    assert calls == [1], "the default UNet's norms must take the fused variant"


def test_finalize_merges_partials_in_several_steps(monkeypatch) -> None:
    monkeypatch.setattr(group_norm_split, "FINALIZE_BLOCK", 2)  # 12 tiles per group: 6 steps
    x, w, b, scale, shift = _inputs((1, 6, 7, 7), 2, torch.float32)
    out = _poisoned(x)
    kernels.group_norm_silu(x, w, b, 2, 1e-5, scale, shift, out=out, variant="split", tile=16)
    _check(out, _expected(x, w, b, 2, scale, shift, True), torch.float32)


@pytest.mark.parametrize(("variant", "tile"), VARIANTS, ids=["fused", "split"])
def test_statistics_are_centred(variant, tile) -> None:
    """Mean 300, std 0.1: E[x^2] - mean^2 in fp32 would lose the variance entirely."""
    x, w, b, _, _ = _inputs((1, 4, 9, 9), 2, torch.float32, offset=300.0)
    x = (x - 300.0) * 0.05 + 300.0
    out = kernels.group_norm_silu(x, w, b, 2, 1e-5, silu=False, variant=variant, tile=tile)
    expected = _expected(x, w, b, 2, None, None, False)
    torch.testing.assert_close(out.double(), expected, atol=5e-3, rtol=5e-3)


def test_empty_batch() -> None:
    x, w, b, _, _ = _inputs((1, 4, 3, 3), 2, torch.float32)
    assert kernels.group_norm_silu(x[:0], w, b, 2).shape == (0, 4, 3, 3)


def _args(**change):
    x, w, b, scale, shift = _inputs((2, 24, 7, 7), 8, torch.float32)
    args = {"x": x, "weight": w, "bias": b, "groups": 8, "scale": scale, "shift": shift}
    for name, value in change.items():  # the bad value, on the test device unless it is on meta
        on_cpu = isinstance(value, torch.Tensor) and value.device.type == "cpu"
        args[name] = value.to(DEVICE) if on_cpu else value
    return args


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"x": torch.zeros(2, 24, 49)}, ValueError, r"x has shape \(2, 24, 49\); expected 4-D"),
        ({"x": torch.zeros(2, 24, 7, 7, dtype=torch.int64)}, TypeError, "x has dtype torch.int64"),
        ({"groups": 5}, ValueError, "groups=5 must be a positive integer dividing C=24"),
        ({"groups": 0}, ValueError, "groups=0 must be a positive integer"),
        ({"weight": torch.ones(23)}, ValueError, r"weight has shape \(23,\); expected \(24,\)"),
        (
            {"shift": torch.ones(2, 23)},
            ValueError,
            r"shift has shape \(2, 23\); expected \(2, 24\)",
        ),
        ({"scale": torch.ones(2, 24, dtype=torch.int32)}, TypeError, "scale has dtype torch.int32"),
        ({"scale": torch.ones(1, 24, dtype=torch.int32)}, TypeError, "scale has dtype torch.int32"),
        (
            {"scale": torch.ones(1, 23)},
            ValueError,
            r"scale has shape \(1, 23\); expected \(2, 24\)",
        ),
        ({"x": torch.zeros(2, 24, 7, 9).transpose(2, 3)}, ValueError, "H and W do not collapse"),
        ({"out": torch.zeros(2, 24, 7, 7, dtype=torch.float16)}, TypeError, "out has dtype"),
        ({"out": torch.zeros(2, 24, 7, 8)}, ValueError, r"out has shape \(2, 24, 7, 8\)"),
        ({"variant": "fast"}, ValueError, "variant='fast'; expected 'auto', 'fused' or 'split'"),
        ({"tile": 24}, ValueError, "tile=24 must be a power of two >= 16"),
        ({"eps": -1.0}, ValueError, "eps=-1.0 must be >= 0"),
        ({"x": torch.zeros(2, 24, 7, 7, device="meta")}, ValueError, "all tensors must be on one"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_inputs_are_named(change, error, message) -> None:
    args = _args(**change)
    with pytest.raises(error, match=message):
        kernels.group_norm_silu(**args)


def test_a_fused_variant_too_big_says_what_to_use() -> None:
    x = torch.zeros(1, 2, 129, 128, device=DEVICE)
    w = torch.ones(2, device=DEVICE)
    with pytest.raises(ValueError, match="variant='fused' needs a group of at most 16384"):
        kernels.group_norm_silu(x, w, w, 1, variant="fused")


def test_unsupported_device_is_named() -> None:
    x, w = torch.zeros(1, 2, 3, 3, device="meta"), torch.ones(2, device="meta")
    with pytest.raises(RuntimeError, match="tensors on meta are not supported; use a CUDA device"):
        kernels.group_norm_silu(x, w, w, 1)


def test_forward_only_says_how_to_run() -> None:
    x, w, b, _, _ = _inputs((1, 4, 3, 3), 2, torch.float32)
    w.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"forward-only .* weight require grad.*no_grad"):
        kernels.group_norm_silu(x, w, b, 2)
    with torch.no_grad():
        kernels.group_norm_silu(x, w, b, 2)
