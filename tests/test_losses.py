"""Tests for lsdseg.losses: the mask VAE's reconstruction and KL against float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from lsdseg.config import MaskVAEConfig
from lsdseg.losses import kl_divergence, mask_reconstruction_loss, mask_vae_losses
from lsdseg.vae import MaskVAE

S = 32


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
    out = mask_vae_losses(cfg, y, logits, mean, logvar)
    assert set(out) == {"loss", "mask_recon", "kl"}  # the metrics.csv columns of stage 1
    recon = mask_reconstruction_loss(logits, y, kind, 3.0)
    kl = kl_divergence(mean, logvar)
    torch.testing.assert_close(out["mask_recon"], recon)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["loss"], recon + 0.01 * kl)
    out["loss"].backward()
    assert vae.encoder.head.weight.grad is not None


@pytest.mark.parametrize("image_weight", [0.0, 0.5])
def test_autoencoder_losses_name_the_metrics_columns_and_sum_them(tiny_model, image_weight) -> None:
    from lsdseg.losses import autoencoder_losses

    gen = torch.Generator().manual_seed(0)
    s = tiny_model.cfg.image_size
    x = torch.randn(2, 3, s, s, generator=gen)
    y = (torch.rand(2, 1, s, s, generator=gen) > 0.7).float()
    eps = torch.randn(2, *tiny_model.latent_shape, generator=gen)
    out = autoencoder_losses(tiny_model, x, y, image_weight, eps)
    vae = mask_vae_losses(tiny_model.mask_vae.cfg, y, *tiny_model.mask_vae(y, eps))
    assert set(out) == {"loss", "mask_recon", "kl"} | ({"image_recon"} if image_weight else set())
    torch.testing.assert_close(out["mask_recon"], vae["mask_recon"])
    image = image_weight * out.get("image_recon", torch.tensor(0.0))
    torch.testing.assert_close(out["loss"], vae["loss"] + image)
