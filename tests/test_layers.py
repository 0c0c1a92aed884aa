"""Tests for lsdseg.layers: shapes, the FiLM embedding path and attention against a float64 loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsdseg.layers import Downsample, GroupNormAct, ResBlock, SelfAttention, Upsample


def test_group_norm_act_matches_torch_modules() -> None:
    torch.manual_seed(0)
    layer = GroupNormAct(12, 3)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    ref = torch.nn.GroupNorm(3, 12)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 12, 5, 7)
    torch.testing.assert_close(layer(x), F.silu(ref(x)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(GroupNormAct(12, 3, silu=False)(x), F.group_norm(x, 3))


@pytest.mark.parametrize(("c_in", "c_out"), [(8, 8), (8, 16)])
def test_resblock_shapes_and_skip(c_in: int, c_out: int) -> None:
    block = ResBlock(c_in, c_out, groups=4)
    out = block(torch.randn(3, c_in, 6, 10))
    assert out.shape == (3, c_out, 6, 10)
    assert isinstance(block.skip, torch.nn.Conv2d) == (c_in != c_out)


def test_resblock_residual_identity_when_second_conv_is_zero() -> None:
    block = ResBlock(8, 8, groups=4)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_resblock_embedding_is_a_scale_and_shift_in_the_second_norm() -> None:
    torch.manual_seed(0)
    block = ResBlock(8, 8, groups=4, embed_dim=6).eval()
    x, emb = torch.randn(2, 8, 5, 5), torch.randn(2, 6)
    with pytest.raises(ValueError, match="emb"):
        block(x)
    # by hand: FiLM (Perez et al.) inside the second pre-activation norm
    h = block.conv1(F.silu(F.group_norm(x, 4, block.norm1.weight, block.norm1.bias)))
    scale, shift = block.embed(F.silu(emb)).chunk(2, dim=1)
    h = F.group_norm(h, 4, block.norm2.weight, block.norm2.bias)
    h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    expected = x + block.conv2(F.silu(h))
    torch.testing.assert_close(block(x, emb), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(block(x, emb), block(x, -emb), atol=1e-4)


def _self_attention_f64(layer: SelfAttention, x: torch.Tensor, head_dim: int) -> np.ndarray:
    """Multi-head attention over pixels with a Python loop over heads, in float64."""
    b, c, h, w = x.shape
    xd = x.double()
    xn = F.group_norm(xd, layer.norm.groups, layer.norm.weight.double(), layer.norm.bias.double())
    qkv = F.conv2d(xn, layer.qkv.weight.double(), layer.qkv.bias.double()).flatten(2)  # (B,3C,L)
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]  # (B, C, L) each
    heads = []
    for i in range(c // head_dim):
        sl = slice(i * head_dim, (i + 1) * head_dim)
        scores = q[:, sl].transpose(1, 2) @ k[:, sl] / np.sqrt(head_dim)  # (B, L, L)
        heads.append(v[:, sl] @ scores.softmax(dim=-1).transpose(1, 2))  # (B, hd, L)
    out = torch.cat(heads, dim=1).reshape(b, c, h, w)
    out = F.conv2d(out, layer.proj.weight.double(), layer.proj.bias.double())
    return (xd + out).numpy()


@pytest.mark.parametrize(("channels", "head_dim", "hw"), [(16, 8, (3, 5)), (24, 8, (4, 4))])
def test_self_attention_matches_float64_loop_over_heads(
    channels: int, head_dim: int, hw: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    layer = SelfAttention(channels, 4, head_dim)
    assert layer.heads == channels // head_dim
    x = torch.randn(2, channels, *hw)
    with torch.no_grad():
        got = layer(x)
        expected = _self_attention_f64(layer, x, head_dim)
    np.testing.assert_allclose(got.double().numpy(), expected, atol=1e-5, rtol=1e-5)


def test_self_attention_mixes_pixels_but_not_batch_items() -> None:
    torch.manual_seed(0)
    layer = SelfAttention(8, 4, 4)
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        base = layer(x)
        x2 = x.clone()
        x2[0, :, 0, 0] += 5.0  # change one pixel of item 0
        out = layer(x2)
    assert not torch.allclose(out[0, :, 3, 3], base[0, :, 3, 3])  # a far pixel sees it
    torch.testing.assert_close(out[1], base[1])  # the other item does not


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 5)])
def test_down_and_up_sampling_shapes(h: int, w: int) -> None:
    x = torch.randn(2, 8, h, w)
    assert Downsample(8, 16)(x).shape == (2, 16, (h + 1) // 2, (w + 1) // 2)
    assert Upsample(8, 4)(x).shape == (2, 4, 2 * h, 2 * w)
