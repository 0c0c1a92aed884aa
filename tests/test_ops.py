"""Tests for lsdseg.ops: the torch references against float64 maths, and the backend registry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from lsdseg import ops
from lsdseg.config import UNetConfig
from lsdseg.layers import GroupNormAct, SelfAttention
from lsdseg.unet import UNet

# one tolerance table for every comparison with a float64 reference: dtype -> (atol, rtol)
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3)}


def _group_norm_silu_f64(x, weight, bias, groups, eps, scale, shift, silu) -> np.ndarray:
    """GroupNorm by hand in float64: per-(sample, group) mean and population variance."""
    x = x.double().numpy()
    b, c, h, w = x.shape
    g = x.reshape(b, groups, c // groups * h * w)  # (B, G, C/G * H * W)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(b, c, h, w)
    y = (
        y * weight.double().numpy()[None, :, None, None]
        + bias.double().numpy()[None, :, None, None]
    )
    if scale is not None:
        y = y * (1 + scale.double().numpy()[:, :, None, None])
    if shift is not None:
        y = y + shift.double().numpy()[:, :, None, None]
    if silu:
        y = y / (1 + np.exp(-y))
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("shape", "groups"), [((3, 12, 7, 5), 4), ((2, 6, 3, 11), 3), ((1, 8, 1, 3), 8)]
)
@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("silu", [True, False])
def test_group_norm_silu_reference_matches_float64(
    dtype: torch.dtype, shape: tuple[int, ...], groups: int, modulated: bool, silu: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    b, c = shape[:2]
    # an offset and a spread per channel, so a wrong mean or variance shows
    x = (torch.randn(shape, generator=gen) * 3 + 1.5).to(dtype)
    weight = (torch.randn(c, generator=gen) + 1).to(dtype)
    bias = torch.randn(c, generator=gen).to(dtype)
    scale = torch.randn(b, c, generator=gen).to(dtype) if modulated else None
    shift = torch.randn(b, c, generator=gen).to(dtype) if modulated else None
    out = ops.group_norm_silu_reference(x, weight, bias, groups, 1e-5, scale, shift, silu)
    assert out.dtype == dtype and out.shape == shape
    expected = _group_norm_silu_f64(x, weight, bias, groups, 1e-5, scale, shift, silu)
    atol, rtol = TOL[dtype]
    np.testing.assert_allclose(out.double().numpy(), expected, atol=atol, rtol=rtol)


def test_group_norm_groups_are_not_channels() -> None:
    """Groups mix channels: normalising per channel (groups=C) gives a different answer."""
    x = torch.randn(2, 8, 4, 4) * torch.arange(1.0, 9.0)[None, :, None, None]
    w, b = torch.ones(8), torch.zeros(8)
    per_group = ops.group_norm_silu_reference(x, w, b, 2, silu=False)
    per_channel = ops.group_norm_silu_reference(x, w, b, 8, silu=False)
    assert not torch.allclose(per_group, per_channel, atol=1e-3)


def _attention_f64(q, k, v) -> np.ndarray:
    q, k, v = (t.double().numpy() for t in (q, k, v))
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])  # (B, h, L, M)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return (s / s.sum(axis=-1, keepdims=True)) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("b", "heads", "length", "d"), [(2, 3, 17, 8), (1, 1, 5, 3), (3, 2, 64, 16)]
)
def test_attention_reference_and_sdpa_match_float64(
    dtype: torch.dtype, b: int, heads: int, length: int, d: int
) -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, heads, length, d, generator=gen).to(dtype) for _ in range(3))
    q = q * 2  # sharper softmax than random unit vectors give
    expected = _attention_f64(q, k, v)
    atol, rtol = TOL[dtype]
    ref = ops.attention_reference(q, k, v)
    assert ref.dtype == dtype and ref.shape == (b, heads, length, d)
    np.testing.assert_allclose(ref.double().numpy(), expected, atol=atol, rtol=rtol)
    sdpa = ops.get_backend("torch").attention(q, k, v)
    np.testing.assert_allclose(sdpa.double().numpy(), expected, atol=atol, rtol=rtol)


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        ops.get_backend("cuda-magic")
    msg = str(info.value)
    assert "'cuda-magic'" in msg and "'torch'" in msg and "'triton'" in msg
    with pytest.raises(ValueError, match="cuda-magic"), ops.use_backend("cuda-magic"):
        pass
    assert ops.active_backend() == "torch"


def test_triton_without_triton_says_how_to_install() -> None:
    # triton is installed with [dev]: hide it in a fresh interpreter (None in sys.modules makes
    # every import of it fail), as on a machine without it
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "from lsdseg import ops\n"
        "try:\n"
        "    with ops.use_backend('triton'): pass\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
        "print('active', ops.active_backend())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "ops backend 'triton' is not available" in out
    assert 'pip install "lsdseg[triton]"' in out
    assert "active torch" in out


@pytest.fixture
def counting_backend() -> Iterator[dict[str, int]]:
    """Registers backend ``counting`` (the torch reference plus call counters) for one test."""
    calls = {"group_norm_silu": 0, "attention": 0}

    def gn(*args, **kwargs):
        calls["group_norm_silu"] += 1
        return ops.group_norm_silu_reference(*args, **kwargs)

    def attn(q, k, v):
        calls["attention"] += 1
        return ops.attention_reference(q, k, v)

    ops.register_backend(ops.OpsBackend("counting", gn, attn))
    try:
        yield calls
    finally:
        ops._REGISTRY.pop("counting", None)


def test_registered_backend_is_dispatched_to_and_context_restored(
    counting_backend: dict[str, int],
) -> None:
    assert "counting" in ops.available_backends()
    x = torch.randn(2, 16, 4, 4)
    norm, attn = GroupNormAct(16, 4), SelfAttention(16, 4, 8)
    with torch.no_grad():
        expected = attn(norm(x))  # torch backend
        assert counting_backend == {"group_norm_silu": 0, "attention": 0}
        with ops.use_backend("counting") as backend:
            assert backend.name == "counting" and ops.active_backend() == "counting"
            got = attn(norm(x))
        assert ops.active_backend() == "torch"
        assert counting_backend == {"group_norm_silu": 2, "attention": 1}
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        attn(norm(x))  # back on torch: no more calls
    assert counting_backend == {"group_norm_silu": 2, "attention": 1}


def test_every_norm_and_attention_of_the_unet_goes_through_ops(
    counting_backend: dict[str, int],
) -> None:
    unet = UNet(UNetConfig(channels=(8, 16), attention_levels=(0, 1), head_dim=8, groups=4), 2, 3)
    n_norms = sum(isinstance(m, GroupNormAct) for m in unet.modules())
    n_attn = sum(isinstance(m, SelfAttention) for m in unet.modules())
    assert n_norms > 0 and n_attn == 4
    with torch.no_grad(), ops.use_backend("counting"):
        unet(torch.randn(2, 2, 8, 8), torch.tensor([3, 700]), torch.randn(2, 3, 8, 8))
    assert counting_backend == {"group_norm_silu": n_norms, "attention": n_attn}


def test_context_is_restored_after_an_exception(counting_backend: dict[str, int]) -> None:
    with pytest.raises(KeyError), ops.use_backend("counting"):
        raise KeyError("boom")
    assert ops.active_backend() == "torch"


def test_nested_contexts_restore_the_outer_backend(counting_backend: dict[str, int]) -> None:
    with ops.use_backend("counting"):
        with ops.use_backend("torch"):
            assert ops.active_backend() == "torch"
        assert ops.active_backend() == "counting"
    assert ops.active_backend() == "torch"


def test_unavailable_backend_raises_its_reason() -> None:
    ops.register_backend(
        ops.OpsBackend(
            "needs-gpu",
            ops.group_norm_silu_reference,
            ops.attention_reference,
            available=lambda: "no GPU here: run on a CUDA machine",
        )
    )
    try:
        with pytest.raises(RuntimeError, match="no GPU here"), ops.use_backend("needs-gpu"):
            pass
        assert ops.active_backend() == "torch"
    finally:
        ops._REGISTRY.pop("needs-gpu", None)
