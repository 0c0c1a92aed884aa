"""Training objectives of the two stages (DESIGN.md, "Training"): every loss lives here.

Stage 1 trains the autoencoders; stage 2 freezes the mask VAE and trains the denoiser, and the
image encoder with it, on noised mask latents. The dicts the stage losses return use the names
that ``metrics.csv`` records as columns: ``loss`` (the total), ``mask_recon``, ``kl`` and
``image_recon`` in stage 1; ``denoise`` and ``mask_bce`` + ``mask_dice`` or ``mask_structure``
in stage 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsdseg.config import MaskVAEConfig
from lsdseg.model import LatentSegmenter


def mask_reconstruction_loss(
    logits: torch.Tensor, y: torch.Tensor, kind: str = "wce", foreground_weight: float = 4.0
) -> torch.Tensor:
    """Weighted binary cross-entropy (foreground pixels weigh ``foreground_weight``) or MSE.

    Shapes:
        logits, y: (B, 1, S, S); y in {0, 1}. Returns a scalar (mean over pixels).
    """
    if kind == "wce":
        weight = 1.0 + (foreground_weight - 1.0) * y
        return F.binary_cross_entropy_with_logits(logits, y, weight=weight)
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(logits), y)
    raise ValueError(f"kind={kind!r} must be 'wce' or 'mse'")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dims, averaged over the batch."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1).mean()


def mask_vae_losses(
    cfg: MaskVAEConfig,
    y: torch.Tensor,
    logits: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The mask VAE's objective: reconstruction (``cfg.loss``) plus ``cfg.kl_weight`` x KL.

    Args:
        cfg: the mask VAE's settings (loss kind, foreground weight, KL weight).
        y: the masks; logits, mean, logvar: :meth:`lsdseg.vae.MaskVAE.forward` of them.

    Shapes:
        y, logits: (B, 1, S, S); mean, logvar: (B, c_m, S/f, S/f).

    Returns:
        ``loss`` (the total to minimise), ``mask_recon`` and ``kl`` (scalars).
    """
    recon = mask_reconstruction_loss(logits, y, cfg.loss, cfg.foreground_weight)
    kl = kl_divergence(mean, logvar)
    return {"loss": recon + cfg.kl_weight * kl, "mask_recon": recon, "kl": kl}


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged. Shapes: logits, y (B, 1, S, S)."""
    p = torch.sigmoid(logits).flatten(1)
    y = y.flatten(1)
    dice = (2 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)
    return (1 - dice).mean()


def structure_loss(logits: torch.Tensor, y: torch.Tensor, kernel: int = 31) -> torch.Tensor:
    """Boundary-weighted BCE + weighted IoU (F3Net, Wei et al. 2020; PraNet's training loss).

    Pixels whose ``kernel`` x ``kernel`` neighbourhood mixes foreground and background (the
    boundary, and small polyps as a whole) weigh up to 6x. Shapes: logits, y (B, 1, S, S).
    """
    weight = 1 + 5 * torch.abs(F.avg_pool2d(y, kernel, stride=1, padding=kernel // 2) - y)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    p = torch.sigmoid(logits)
    inter = (p * y * weight).sum(dim=(2, 3))
    union = ((p + y) * weight).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def autoencoder_losses(
    model: LatentSegmenter,
    x: torch.Tensor,
    y: torch.Tensor,
    image_weight: float = 1.0,
    eps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Stage 1: mask VAE (reconstruction + KL) and image autoencoder (L1 reconstruction).

    Shapes:
        x: (B, 3, S, S) normalised; y: (B, 1, S, S) in {0, 1}; eps: (B, c_m, S/f, S/f), the
        VAE's reparameterisation draw (made inside when None).
    """
    logits, mean, logvar = model.mask_vae(y, eps)
    out = mask_vae_losses(model.mask_vae.cfg, y, logits, mean, logvar)
    if image_weight > 0:
        recon = model.image_ae.decode(model.image_ae.encode(x))
        out["image_recon"] = F.l1_loss(recon, x)
        out["loss"] = out["loss"] + image_weight * out["image_recon"]
    return out


def diffusion_losses(
    model: LatentSegmenter,
    x: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    z_x: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Stage 2: denoising loss on mask latents plus an auxiliary mask loss on the x0 estimate.

    The denoiser regresses eps or v (``cfg.diffusion.prediction``). The auxiliary term decodes
    the z0 estimate through the frozen mask decoder and applies BCE + soft Dice (or the
    structure loss, ``cfg.diffusion.mask_loss``) against the mask, weighted by
    ``cfg.diffusion.mask_loss_weight``: it ties the latent objective to what is measured (Dice
    after 1-4 sampling steps).

    ``z_x``, when given, is the image latent already computed (from cached features, see
    :mod:`lsdseg.featcache`) and ``x`` is not used. The caller draws ``t`` and ``noise`` so
    that a data-parallel run can take its slice of the global batch's draws and match a
    single-process run.

    Shapes:
        x: (B, 3, S, S) normalised; y: (B, 1, S, S) in {0, 1}; t: (B,) int64 in [0, T);
        noise: (B, c_m, S/f, S/f); z_x: (B, c_x, S/f, S/f).
    """
    cfg = model.cfg.diffusion
    with torch.no_grad():
        z0 = model.encode_mask(y)  # (B, c_m, h, w)
    z_t = model.schedule.add_noise(z0, noise, t)
    pred = model.unet(z_t, t, model.encode_image(x) if z_x is None else z_x)
    out = {"denoise": F.mse_loss(pred, model.schedule.target(z0, noise, t))}
    out["loss"] = out["denoise"]
    if cfg.mask_loss_weight > 0:
        z0_hat, _ = model.schedule.split(z_t, t, pred)
        logits = model.decode_masks(z0_hat)
        if cfg.mask_loss == "structure":
            out["mask_structure"] = mask = structure_loss(logits, y)
        else:
            bce = F.binary_cross_entropy_with_logits(logits, y)
            dice = soft_dice_loss(logits, y)
            out["mask_bce"], out["mask_dice"] = bce, dice
            mask = bce + dice
        out["loss"] = out["loss"] + cfg.mask_loss_weight * mask
    return out
