"""Tests for lsdseg.unet: timestep embedding, shapes, split conditioning and the zero head."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from lsdseg.config import UNetConfig
from lsdseg.unet import UNet, repeat_condition, timestep_embedding

C_M, C_X = 2, 4
CFG = UNetConfig(channels=(8, 16), attention_levels=(1,), head_dim=8, groups=4, time_embed_dim=16)


def _unet(cfg: UNetConfig = CFG, seed: int = 0, head_std: float = 0.1) -> UNet:
    """A UNet whose zero-initialised output conv is re-drawn, so its output depends on inputs."""
    torch.manual_seed(seed)
    unet = UNet(cfg, C_M, C_X)
    if head_std:
        with torch.no_grad():
            unet.conv_out.weight.normal_(0, head_std)
            unet.conv_out.bias.normal_(0, head_std)
    return unet.eval()


def test_timestep_embedding_matches_the_formula() -> None:
    t = np.array([0.0, 1.0, 17.5, 250.0, 999.0])
    dim = 16
    half = dim // 2
    freqs = 10000.0 ** (-np.arange(half) / half)  # 1 / 10000^(i / half)
    args = t[:, None] * freqs[None, :]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    got = timestep_embedding(torch.tensor(t), dim)
    assert got.shape == (5, dim) and got.dtype == torch.float32
    # fp32 arguments up to 999 carry ~1e-4 absolute rounding
    np.testing.assert_allclose(got.numpy(), expected, atol=5e-4)
    np.testing.assert_array_equal(got[0].numpy(), [1.0] * half + [0.0] * half)


def test_timestep_embedding_accepts_int_timesteps() -> None:
    a = timestep_embedding(torch.tensor([3, 500]), 8)
    b = timestep_embedding(torch.tensor([3.0, 500.0]), 8)
    torch.testing.assert_close(a, b)
    assert math.isclose(float(a[1, 0]), math.cos(500.0), abs_tol=1e-4)


@pytest.mark.parametrize(
    ("cfg", "hw"),
    [
        (CFG, (8, 8)),  # factor 8 at S=64
        (CFG, (16, 16)),  # factor 4 at S=64
        (
            UNetConfig(
                channels=(8, 16, 16),
                attention_levels=(0, 2),
                head_dim=4,
                groups=4,
                time_embed_dim=8,
                num_res_blocks=2,
            ),
            (8, 12),
        ),
    ],
)
def test_output_has_the_shape_of_z_t(cfg: UNetConfig, hw: tuple[int, int]) -> None:
    unet = _unet(cfg)
    z_t, z_x = torch.randn(3, C_M, *hw), torch.randn(3, C_X, *hw)
    out = unet(z_t, torch.tensor([0, 10, 999]), z_x)
    assert out.shape == z_t.shape


def test_split_conditioning_equals_one_conv_over_the_concatenation() -> None:
    """conv(concat(z_t, z_x)) with the stacked kernels must equal conv_in(z_t) + cond_in(z_x)."""
    unet = _unet()
    z_t, z_x = torch.randn(2, C_M, 8, 8), torch.randn(2, C_X, 8, 8)
    t = torch.tensor([5, 640])

    joint = copy.deepcopy(unet)
    ch0 = CFG.channels[0]
    joint.conv_in = torch.nn.Conv2d(C_M + C_X, ch0, 3, padding=1)
    with torch.no_grad():
        joint.conv_in.weight.copy_(torch.cat([unet.conv_in.weight, unet.cond_in.weight], dim=1))
        joint.conv_in.bias.copy_(unet.conv_in.bias)
        zero_cond = (torch.zeros(2, ch0, 8, 8),)
        expected = joint.denoise(torch.cat([z_t, z_x], dim=1), t, zero_cond)
        got = unet.denoise(z_t, t, unet.condition(z_x))
        assert got.abs().max() > 1e-3  # not the trivial zero output
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(unet(z_t, t, z_x), expected, atol=1e-5, rtol=1e-5)


def test_condition_once_and_expand_equals_conditioning_every_hypothesis() -> None:
    unet = _unet()
    b, k = 2, 3
    z_x = torch.randn(b, C_X, 8, 8)
    z_t = torch.randn(b * k, C_M, 8, 8)
    t = torch.full((b * k,), 400)
    with torch.no_grad():
        cond = repeat_condition(unet.condition(z_x), k)
        got = unet.denoise(z_t, t, cond)
        expected = unet(z_t, t, z_x.repeat_interleave(k, dim=0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_batch_items_are_independent() -> None:
    unet = _unet()
    z_t, z_x, t = torch.randn(3, C_M, 8, 8), torch.randn(3, C_X, 8, 8), torch.tensor([1, 50, 900])
    with torch.no_grad():
        batched = unet(z_t, t, z_x)
        single = torch.cat([unet(z_t[i : i + 1], t[i : i + 1], z_x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_every_input_matters() -> None:
    unet = _unet()
    z_t, z_x, t = torch.randn(1, C_M, 8, 8), torch.randn(1, C_X, 8, 8), torch.tensor([300])
    with torch.no_grad():
        base = unet(z_t, t, z_x)
        assert not torch.allclose(base, unet(z_t, torch.tensor([700]), z_x), atol=1e-4)
        assert not torch.allclose(base, unet(z_t, t, z_x + 1), atol=1e-4)
        assert not torch.allclose(base, unet(z_t + 1, t, z_x), atol=1e-4)


def test_output_is_zero_at_init_and_moves_after_one_step() -> None:
    torch.manual_seed(0)
    unet = UNet(CFG, C_M, C_X)
    z_t, z_x, t = torch.randn(2, C_M, 8, 8), torch.randn(2, C_X, 8, 8), torch.tensor([10, 500])
    out = unet(z_t, t, z_x)
    assert torch.count_nonzero(out) == 0
    opt = torch.optim.SGD(unet.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(out, torch.randn_like(out)).backward()
    assert unet.conv_out.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        after = unet(z_t, t, z_x)
    assert after.abs().max() > 1e-4


def test_condition_pyramid_starts_as_the_plain_unet_and_feeds_every_level() -> None:
    """Zero projections: same output as without the pyramid; drawn ones: every level matters."""
    plain, grown = _unet(CFG), _unet(dataclasses.replace(CFG, cond_channels=(8, 12), cond_depth=2))
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("cond_pyramid.") for k in missing)
    z_t, z_x = torch.randn(2, C_M, 8, 8), torch.randn(2, C_X, 8, 8)
    t = torch.tensor([999, 3])
    with torch.no_grad():
        cond = grown.condition(z_x)
        assert [tuple(c.shape) for c in cond] == [(2, 8, 8, 8), (2, 16, 4, 4)]
        torch.testing.assert_close(grown(z_t, t, z_x), plain(z_t, t, z_x))
        for level, proj in enumerate(grown.cond_pyramid.proj):
            before = grown(z_t, t, z_x)
            proj.weight.normal_(0, 0.3)
            assert not torch.allclose(grown(z_t, t, z_x), before, atol=1e-4), level
        # once per image, repeated per hypothesis, as LatentSegmenter.sample does
        k = 3
        z_tk, tk = z_t.repeat_interleave(k, 0), t.repeat_interleave(k, 0)
        got = grown.denoise(z_tk, tk, repeat_condition(grown.condition(z_x), k))
        torch.testing.assert_close(got, grown(z_tk, tk, z_x.repeat_interleave(k, 0)))
