"""The latent diffusion segmenter network.

``LatentSegmenter`` wires the image encoder, the denoiser, the sampler and the mask decoder into
the data flow of DESIGN.md: the image side runs once per frame, the K hypotheses run batched
through the denoiser and the mask decoder. The user-facing wrapper (preprocessing, backends,
results at the input's size) is :class:`lsdseg.segmenter.Segmenter`.
"""

from __future__ import annotations

import torch
from torch import nn

from lsdseg.config import ModelConfig
from lsdseg.diffusion import DDIMSampler, NoiseSchedule, draw_noise
from lsdseg.unet import UNet, repeat_condition
from lsdseg.vae import ImageAutoencoder, MaskVAE


class LatentSegmenter(nn.Module):
    """Image autoencoder + mask VAE + UNet denoiser, sampled with DDIM."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_ae = ImageAutoencoder(cfg.image_ae)
        self.mask_vae = MaskVAE(cfg.mask_vae)
        self.unet = UNet(cfg.unet, cfg.mask_vae.latent_channels, cfg.image_ae.latent_channels)
        self.schedule = NoiseSchedule(cfg.diffusion)
        self._samplers: dict[tuple[int, float, int | None], DDIMSampler] = {}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c_m, S/f, S/f), the shape of one hypothesis' latent."""
        n = self.cfg.latent_size
        return (self.cfg.mask_vae.latent_channels, n, n)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B, 3, S, S) -> the normalised input of the image encoder."""
        mean = torch.tensor(self.cfg.image_mean, device=x.device, dtype=x.dtype)
        std = torch.tensor(self.cfg.image_std, device=x.device, dtype=x.dtype)
        return (x - mean[:, None, None]) / std[:, None, None]

    def sampler(self, steps: int, eta: float = 0.0, start: int | None = None) -> DDIMSampler:
        """The (cached) DDIM sampler for these settings."""
        key = (steps, eta, start)
        if key not in self._samplers:
            self._samplers[key] = DDIMSampler(
                self.schedule, steps, eta, self.cfg.sampler.spacing, start_timestep=start
            )
        return self._samplers[key]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, 3, S, S) -> z_x (B, c_x, S/f, S/f)."""
        return self.image_ae.encode(x)

    def encode_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Mask (B, 1, S, S) in {0, 1} -> scaled latent mean (B, c_m, S/f, S/f)."""
        mean, _ = self.mask_vae.encode(y)
        return mean * self.cfg.latent_scale

    def decode_masks(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, c_m, S/f, S/f) -> logits (N, 1, S, S)."""
        return self.mask_vae.decode(z / self.cfg.latent_scale)

    def sample(
        self,
        z_x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        start: int | None = None,
    ) -> torch.Tensor:
        """DDIM from ``noise`` to clean mask latents, K hypotheses per image, batched.

        With ``start`` the trajectory begins at that timestep and ``noise`` must already be a
        latent noised to it (warm start from a previous frame).

        Shapes:
            z_x: (B, c_x, h, w); noise: (B, K, c_m, h, w) -> (B, K, c_m, h, w).
        """
        b, k = noise.shape[:2]
        cond = repeat_condition(self.unet.condition(z_x), k)  # once per image, then (B*K, ...)
        z = noise.reshape(b * k, *noise.shape[2:])  # (B*K, c_m, h, w)
        sampler = self.sampler(steps, eta, start)
        z = sampler.sample(lambda z_t, t: self.unet.denoise(z_t, t, cond), z, generator)
        return z.reshape(b, k, *z.shape[1:])

    def hypotheses(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        start: int | None = None,
    ) -> torch.Tensor:
        """Normalised images and initial noise -> per-hypothesis probabilities.

        Shapes:
            x: (B, 3, S, S); noise: (B, K, c_m, S/f, S/f) -> (B, K, S, S) in [0, 1].
        """
        return self.hypotheses_and_latents(x, noise, steps, eta, generator, start)[0]

    def hypotheses_and_latents(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`hypotheses`, also returning the clean latents z0 (B, K, c_m, S/f, S/f).

        With ``start`` the trajectory begins at that timestep from ``noise``, which must be a
        latent already noised to it (see :meth:`warm_latents`).
        """
        b, k = noise.shape[:2]
        z0 = self.sample(self.encode_image(x), noise, steps, eta, generator, start)
        logits = self.decode_masks(z0.reshape(b * k, *z0.shape[2:]))  # (B*K, 1, S, S)
        return torch.sigmoid(logits).reshape(b, k, *logits.shape[2:]), z0

    def warm_latents(
        self, z0: torch.Tensor, start: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Noise clean latents to timestep ``start`` (DDPM eq. 4) to resume DDIM from there.

        Shapes:
            z0: (B, K, c_m, h, w) -> (B, K, c_m, h, w).
        """
        eps = draw_noise(z0.shape, generator, z0.device, z0.dtype)
        t = torch.full((z0.shape[0],), start, dtype=torch.long, device=z0.device)
        return self.schedule.add_noise(z0, eps, t)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor, steps: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Deterministic (eta = 0) end-to-end pass: the graph that is exported.

        Shapes:
            x: (B, 3, S, S) normalised; noise: (B, K, c_m, S/f, S/f) ->
            mean (B, S, S), std (B, S, S), hypotheses (B, K, S, S).
        """
        p = self.hypotheses(x, noise, steps or self.cfg.sampler.steps)
        mean = p.mean(dim=1)
        std = (p - mean[:, None]).square().mean(dim=1).sqrt()  # population std, export-friendly
        return mean, std, p
