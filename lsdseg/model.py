"""The latent diffusion segmenter network.

``LatentSegmenter`` wires the image encoder, the denoiser, the sampler and the mask decoder into
the data flow of DESIGN.md: the image side runs once per frame, the K hypotheses run batched
through the denoiser and the mask decoder. The user-facing wrapper (preprocessing, backends,
results at the input's size) is :class:`lsdseg.segmenter.Segmenter`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lsdseg.config import ModelConfig
from lsdseg.diffusion import DDIMSampler, NoiseSchedule, draw_noise
from lsdseg.presence import PresenceHead
from lsdseg.uncertainty import mean_std
from lsdseg.unet import UNet, repeat_condition
from lsdseg.vae import ImageAutoencoder, MaskVAE


class LatentSegmenter(nn.Module):
    """Image autoencoder + mask VAE + UNet denoiser, sampled with DDIM.

    :meth:`forward` is the graph that :mod:`lsdseg.export.onnx` exports, and the torch path
    runs the same code. Two layout choices serve the exported graph (ONNX Runtime, TensorRT)
    and add no copy on the torch path; both were measured on onnxruntime (CPU, K = 8):

    - every DDIM step gives the denoiser its timestep as one (1,) row that broadcasts over the
      B*K hypotheses, so the time MLP and every ResBlock's scale/shift depend on constants only:
      the runtimes fold them when they load the graph, and torch computes them once instead of
      B*K times. Every ops backend takes that one row (the Triton GroupNorm kernel reads its
      (1, C) scale/shift with stride 0 between samples);
    - the mask decoder's final bilinear upsampling and the sigmoid run on (1, B*K, h, w), a
      view of its (B*K, 1, h, w) logits. As (B*K, 1, h, w), ONNX Runtime's NCHWc layout pads
      the single channel to 16 and upsamples, and applies the sigmoid to, 16 times the data:
      one thread, K = 8, 4 steps, 256x256, best of 20 went from 77 to 64 ms with this layout.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_ae = ImageAutoencoder(cfg.image_ae)
        self.mask_vae = MaskVAE(cfg.mask_vae)
        self.unet = UNet(cfg.unet, cfg.mask_vae.latent_channels, cfg.image_ae.latent_channels)
        self.presence = (
            PresenceHead(self.image_ae.presence_channels, cfg.presence) if cfg.presence else None
        )
        self.schedule = NoiseSchedule(cfg.diffusion)
        self._samplers: dict[tuple[int, float, int | None, str, float], DDIMSampler] = {}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c_m, S/f, S/f), one hypothesis' latent at the size the checkpoint was trained at
        (training, validation); at another input size, :func:`lsdseg.imagesize.latent_shape`."""
        n = self.cfg.latent_size
        return (self.cfg.mask_vae.latent_channels, n, n)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B, 3, S, S) -> the normalised input of the image encoder."""
        mean = torch.tensor(self.cfg.image_mean, device=x.device, dtype=x.dtype)
        std = torch.tensor(self.cfg.image_std, device=x.device, dtype=x.dtype)
        return (x - mean[:, None, None]) / std[:, None, None]

    def sampler(self, steps: int, eta: float = 0.0, start: int | None = None) -> DDIMSampler:
        """The (cached) DDIM sampler for these settings and the config's spacing and shift."""
        d = self.cfg.sampler
        key = (steps, eta, start, d.spacing, d.shift)  # cfg may be replaced after a first call
        if key not in self._samplers:
            self._samplers[key] = DDIMSampler(
                self.schedule, steps, eta, d.spacing, start_timestep=start, shift=d.shift
            )
        return self._samplers[key]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, 3, S, S) -> z_x (B, c_x, S/f, S/f)."""
        return self.image_ae.encode(x)

    def encode_image_and_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image (B, 3, S, S) -> z_x (B, c_x, S/f, S/f) and the presence score
        (B,): the probability that the frame holds a polyp, 1 without a presence head."""
        if self.presence is None:
            z_x = self.encode_image(x)
            return z_x, torch.ones(x.shape[0], device=x.device, dtype=z_x.dtype)
        z_x, maps = self.image_ae.encode_with_presence_features(x)
        return z_x, torch.sigmoid(self.presence(maps))

    def encode_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Mask (B, 1, S, S) in {0, 1} -> scaled latent mean (B, c_m, S/f, S/f)."""
        mean, _ = self.mask_vae.encode(y)
        return mean * self.cfg.latent_scale

    def decode_masks(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, c_m, S/f, S/f) -> logits (N, 1, S, S)."""
        logits = self._decode_logits(z)  # (1, N, S, S)
        return logits.reshape(z.shape[0], 1, *logits.shape[2:])  # (N, 1, S, S)

    def _decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, c_m, S/f, S/f) -> logits (1, N, S, S): see the class docstring."""
        vae = self.mask_vae
        logits = vae.decoder(z / self.cfg.latent_scale)  # (N, 1, h, w)
        logits = logits.reshape(1, z.shape[0], *logits.shape[2:])  # (1, N, h, w), a view
        if vae.logit_factor > 1:
            logits = F.interpolate(
                logits, scale_factor=float(vae.logit_factor), mode="bilinear", align_corners=False
            )  # (1, N, S, S)
        return logits

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
        z = self._sample(z_x, noise, steps, eta, generator, start)  # (B*K, c_m, h, w)
        return z.reshape(b, k, *z.shape[1:])  # (B, K, c_m, h, w)

    def _sample(
        self,
        z_x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float,
        generator: torch.Generator | None,
        start: int | None,
    ) -> torch.Tensor:
        """As :meth:`sample`, returning the latents as (B*K, c_m, h, w)."""
        b, k = noise.shape[:2]
        cond = repeat_condition(self.unet.condition(z_x), k)  # once per image, then (B*K, ...)
        z = noise.reshape(b * k, *noise.shape[2:])  # (B*K, c_m, h, w)
        sampler = self.sampler(steps, eta, start)
        # one (1,) timestep row for the B*K hypotheses: see the class docstring
        return sampler.sample(lambda z_t, t: self.unet.denoise(z_t, t, cond), z, generator, 1)

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
        return self.run(x, noise, steps, eta, generator, start)[0]

    def run(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`hypotheses`, also returning the clean latents z0 (B, K, c_m, S/f, S/f)
        and the presence score (B,) (:meth:`encode_image_and_score`).

        With ``start`` the trajectory begins at that timestep from ``noise``, which must be a
        latent already noised to it (see :meth:`warm_latents`).
        """
        b, k = noise.shape[:2]
        z_x, score = self.encode_image_and_score(x)
        z0 = self._sample(z_x, noise, steps, eta, generator, start)
        logits = self._decode_logits(z0)  # (1, B*K, S, S)
        p = torch.sigmoid(logits).reshape(b, k, *logits.shape[2:])  # (B, K, S, S)
        return p, z0.reshape(b, k, *z0.shape[1:]), score  # z0: (B, K, c_m, S/f, S/f)

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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Deterministic (eta = 0) end-to-end pass: the graph that is exported.

        :func:`lsdseg.export.onnx.export_onnx` traces this method with ``steps`` fixed.

        Shapes:
            x: (B, 3, S, S) normalised; noise: (B, K, c_m, S/f, S/f) ->
            mean (B, S, S), std (B, S, S), hypotheses (B, K, S, S), score (B,).
        """
        p, _, score = self.run(x, noise, steps or self.cfg.sampler.steps)
        mean, std = mean_std(p)
        return mean, std, p, score
