"""Tests for lsdseg.vae: shapes at factors 4 and 8, the reparameterisation, edge extension."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsdseg.config import ImageAEConfig, MaskVAEConfig
from lsdseg.vae import EdgeExtended, ImageAutoencoder, MaskVAE

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
