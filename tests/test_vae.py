"""Tests for lsdseg.vae: shapes at factors 4 and 8, losses and KL against float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from lsdseg.config import ImageAEConfig, MaskVAEConfig
from lsdseg.vae import (
    EdgeExtended,
    ImageAutoencoder,
    MaskVAE,
    kl_divergence,
    mask_reconstruction_loss,
)

S = 32


@pytest.mark.parametrize(
    "cfg",
    [
        ImageAEConfig(
            factor=8, latent_channels=4, channels=(8, 8, 16), context_channels=(16,), groups=4
        ),
        ImageAEConfig(factor=4, latent_channels=3, channels=(8, 16), context_channels=(), groups=4),
        ImageAEConfig(
            factor=4, latent_channels=3, channels=(8, 16), context_channels=(8, 8), groups=4
        ),
    ],
)
def test_image_autoencoder_shapes(cfg: ImageAEConfig) -> None:
    ae = ImageAutoencoder(cfg)
    x = torch.randn(2, 3, S, S)
    z = ae.encode(x)
    assert z.shape == (2, cfg.latent_channels, S // cfg.factor, S // cfg.factor)
    assert ae.decode(z).shape == (2, 3, S, S)


@pytest.mark.parametrize(
    ("factor", "decoder_channels", "logit_factor"),
    [(8, (8,), 8), (8, (8, 8), 4), (8, (8, 8, 8, 8), 1), (4, (8,), 4), (4, (8, 8, 8), 1)],
)
def test_mask_vae_shapes(factor: int, decoder_channels: tuple[int, ...], logit_factor: int) -> None:
    levels = factor.bit_length() - 1
    cfg = MaskVAEConfig(
        factor=factor,
        latent_channels=3,
        encoder_channels=(8,) * levels,
        decoder_channels=decoder_channels,
        groups=4,
    )
    vae = MaskVAE(cfg)
    assert vae.logit_factor == logit_factor
    y = (torch.rand(2, 1, S, S) > 0.5).float()
    mean, logvar = vae.encode(y)
    assert mean.shape == logvar.shape == (2, 3, S // factor, S // factor)
    assert vae.decode(mean).shape == (2, 1, S, S)
    logits, mean2, logvar2 = vae(y)
    assert logits.shape == (2, 1, S, S)
    torch.testing.assert_close(mean2, mean)
    torch.testing.assert_close(logvar2, logvar)


def test_mask_vae_forward_is_the_reparameterisation_trick() -> None:
    torch.manual_seed(0)
    vae = MaskVAE(
        MaskVAEConfig(
            latent_channels=2, encoder_channels=(8, 8, 8), groups=4, decoder_channels=(8, 8)
        )
    )
    y = (torch.rand(2, 1, S, S) > 0.5).float()
    with torch.no_grad():
        mean, logvar = vae.encode(y)
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
        logits, mean2, logvar2 = vae(y, eps)
        torch.testing.assert_close(logits, vae.decode(mean + torch.exp(0.5 * logvar) * eps))
        torch.testing.assert_close((mean2, logvar2), (mean, logvar))
        again, _, _ = vae(y, -eps)
    assert not torch.allclose(again, logits)


def _bce_f64(logits: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    p = 1.0 / (1.0 + np.exp(-logits))
    return float(np.mean(-w * (y * np.log(p) + (1 - y) * np.log(1 - p))))


@pytest.mark.parametrize("foreground_weight", [1.0, 4.0, 0.5])
def test_weighted_cross_entropy_matches_float64(foreground_weight: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 1, 9, 7))
    y = (rng.random((2, 1, 9, 7)) < 0.3).astype(np.float64)
    w = np.where(y > 0, foreground_weight, 1.0)
    got = mask_reconstruction_loss(
        torch.tensor(logits, dtype=torch.float32),
        torch.tensor(y, dtype=torch.float32),
        "wce",
        foreground_weight,
    )
    assert got.dim() == 0
    np.testing.assert_allclose(float(got), _bce_f64(logits, y, w), rtol=1e-5)


def test_foreground_weight_makes_missed_foreground_cost_more() -> None:
    y = torch.zeros(1, 1, 4, 4)
    y[..., 0, 0] = 1.0
    logits = torch.full_like(y, -4.0)  # predicts background everywhere
    plain = mask_reconstruction_loss(logits, y, "wce", 1.0)
    weighted = mask_reconstruction_loss(logits, y, "wce", 4.0)
    assert weighted > plain * 2


def test_mse_is_on_probabilities() -> None:
    rng = np.random.default_rng(1)
    logits, y = rng.normal(0, 2, (3, 1, 5, 6)), (rng.random((3, 1, 5, 6)) < 0.5).astype(float)
    got = mask_reconstruction_loss(torch.tensor(logits), torch.tensor(y), "mse")
    expected = np.mean((1.0 / (1.0 + np.exp(-logits)) - y) ** 2)
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="kind='dice'"):
        mask_reconstruction_loss(torch.tensor(logits), torch.tensor(y), "dice")


def test_kl_of_the_prior_is_zero() -> None:
    z = torch.zeros(3, 4, 5, 5)
    assert float(kl_divergence(z, z)) == 0.0


def test_kl_matches_closed_form_and_torch_distributions() -> None:
    rng = np.random.default_rng(2)
    mean, logvar = rng.normal(0, 1, (3, 4, 5, 6)), rng.normal(0, 1, (3, 4, 5, 6))
    got = float(
        kl_divergence(
            torch.tensor(mean, dtype=torch.float32), torch.tensor(logvar, dtype=torch.float32)
        )
    )
    closed = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar)  # KL(N(m, s^2) || N(0, 1))
    expected = closed.reshape(3, -1).sum(axis=1).mean()  # summed per sample, batch mean
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    peer = torch_kl(
        Normal(torch.tensor(mean), torch.tensor(np.exp(0.5 * logvar))), Normal(0.0, 1.0)
    )
    np.testing.assert_allclose(got, float(peer.flatten(1).sum(1).mean()), rtol=1e-5)


@pytest.mark.parametrize("kind", ["wce", "mse"])
def test_mask_vae_loss_combines_reconstruction_and_weighted_kl(kind: str) -> None:
    cfg = MaskVAEConfig(
        latent_channels=2,
        encoder_channels=(8, 8, 8),
        decoder_channels=(8,),
        groups=4,
        loss=kind,
        foreground_weight=3.0,
        kl_weight=0.01,
    )
    vae = MaskVAE(cfg)
    torch.manual_seed(0)
    y = (torch.rand(2, 1, S, S) > 0.6).float()
    logits, mean, logvar = vae(y)
    out = vae.loss(y, logits, mean, logvar)
    recon = mask_reconstruction_loss(logits, y, kind, 3.0)
    kl = kl_divergence(mean, logvar)
    torch.testing.assert_close(out["recon"], recon)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["loss"], recon + 0.01 * kl)
    out["loss"].backward()
    assert vae.encoder.head.weight.grad is not None


def test_edge_extended_layers_see_the_edge_not_zeros() -> None:
    # a 3x3 box filter with zero padding: a constant input reads 4/9 of itself in the corners
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.constant_(conv.weight, 1.0 / 9.0)
    x = torch.full((1, 1, 6, 5), 2.0)
    with torch.no_grad():
        assert conv(x)[0, 0, 0, 0].item() == pytest.approx(2.0 * 4 / 9)
        torch.testing.assert_close(EdgeExtended(conv, pad=1)(x), x)
        # in general: the layers on the replicate-padded input, cropped back (here with a 2x
        # upsampling, so the crop is 2 pixels per padded cell)
        layers = [nn.Conv2d(2, 3, 3, padding=1), nn.ConvTranspose2d(3, 1, 2, stride=2)]
        z = torch.randn(2, 2, 5, 7)
        ref = nn.Sequential(*layers)(F.pad(z, (2, 2, 2, 2), mode="replicate"))[..., 4:-4, 4:-4]
        out = EdgeExtended(*layers, pad=2, scale=2)(z)
    assert out.shape == (2, 1, 10, 14)
    torch.testing.assert_close(out, ref)
