"""Noise schedules, the training objective, and the DDIM sampler.

Pure tensor arithmetic: no model lives here. Notation follows DDPM (Ho et al. 2020) and DDIM
(Song et al. 2021): ``abar_t`` is the cumulative product of ``1 - beta``; the forward process is
``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4); v-prediction follows Salimans &
Ho 2022: ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lsdseg.config import DiffusionConfig, SamplerConfig


def draw_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise for a tensor on ``device``: the one rule for every draw.

    The numbers are drawn in float32 on the generator's device (the CPU, for ``None``: torch's
    default generator), then moved to ``device`` and cast to ``dtype``. So a seeded CPU
    generator gives the same noise whether the model runs on the CPU or a GPU, in fp32 or fp16,
    and never meets a tensor on another device (``torch.randn`` refuses a CPU generator for a
    CUDA tensor).

    A sequence of generators (one per index of ``shape[0]``, all on one device) draws row
    ``i`` from generator ``i``: the numbers ``draw_noise(shape[1:], generator[i], ...)``
    gives, so each row is independent of the others (per-frame seeds of a batch).

    Shapes:
        ``shape`` -> a tensor of that shape on ``device``, of ``dtype``.

    Raises:
        ValueError: a sequence of generators whose length is not ``shape[0]``.
    """
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} rows of noise")
        source = generator[0].device if generator else torch.device("cpu")
        eps = torch.empty(shape, device=source, dtype=torch.float32)
        for row, g in zip(eps, generator, strict=True):
            row.normal_(generator=g)  # in place: what torch.randn(shape[1:], generator=g) draws
    else:
        source = generator.device if generator is not None else torch.device("cpu")
        eps = torch.randn(shape, generator=generator, device=source, dtype=torch.float32)
    return eps.to(device=device, dtype=dtype)


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """Beta schedule in float64, shape (T,). ``cosine`` is Nichol & Dhariwal 2021, eq. 17."""
    T = cfg.timesteps
    if cfg.schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float64)
    if cfg.schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, T, dtype=torch.float64) ** 2

    def abar(t: float) -> float:
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar(i + 1) / abar(i), 0.999) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


class NoiseSchedule:
    """The forward process q(z_t | z_0) and conversions between eps, v and z_0."""

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.cfg = cfg
        self.betas = make_betas(cfg)  # (T,) float64
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,) float64

    @property
    def timesteps(self) -> int:
        return self.cfg.timesteps

    def _coef(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod.to(t.device)[t].to(like.dtype)  # (N,)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return abar.sqrt().reshape(shape), (1 - abar).sqrt().reshape(shape)

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps, (n,) int64: ``T-1 - floor(T u^gamma)``, u ~ U[0, 1).

        gamma = 1 is uniform. gamma > 1 puts more of the training signal at high t, where the
        denoiser sees (almost) pure noise and must segment from the image alone: with 1-4
        trailing DDIM steps the first step, at t = T-1, decides most of the mask. gamma = 2
        gives P(t >= 0.7 T) = 0.55 instead of 0.3.
        """
        T = self.cfg.timesteps
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        t = (T - 1) - torch.floor(T * u.pow(self.cfg.timestep_gamma)).long()
        return t.clamp(0, T - 1)

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """DDPM eq. 4. Shapes: z0, noise (N, ...); t (N,) int64 -> (N, ...)."""
        a, s = self._coef(t, z0)
        return a * z0 + s * noise

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output at (z0, noise, t) for the configured prediction."""
        if self.cfg.prediction == "eps":
            return noise
        a, s = self._coef(t, z0)
        return a * noise - s * z0

    def split(
        self, z_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn a prediction into (z0 estimate, eps estimate) at timesteps t (N,)."""
        a, s = self._coef(t, z_t)
        return predicted_x0_eps(z_t, pred, a, s, self.cfg.prediction)


def predicted_x0_eps(
    z_t: torch.Tensor,
    pred: torch.Tensor,
    a: float | torch.Tensor,
    s: float | torch.Tensor,
    prediction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z0, eps) from a model output, with ``a = sqrt(abar_t)`` and ``s = sqrt(1 - abar_t)``.

    eps-prediction inverts DDPM eq. 4; v-prediction uses z0 = a z_t - s v, eps = a v + s z_t.
    """
    if prediction == "eps":
        return (z_t - s * pred) / a, pred
    return a * z_t - s * pred, a * pred + s * z_t


@dataclass(frozen=True)
class DDIMStep:
    """Constants of one DDIM update from timestep ``t`` to ``t_prev`` (-1 = the clean end)."""

    t: int
    t_prev: int
    abar: float  # abar_t
    abar_prev: float  # abar_{t_prev}, 1.0 at the end
    sigma: float  # DDIM eq. 16 times eta


def ddim_timesteps(T: int, steps: int, spacing: str = "trailing", shift: float = 1.0) -> list[int]:
    """Descending timesteps for ``steps`` DDIM iterations, as diffusers' DDIMScheduler picks them.

    ``trailing`` starts at T - 1 (pure noise), which matters for 1-4 step sampling (Lin et al.
    2024, "Common diffusion noise schedules and sample steps are flawed", table 2). With
    ``shift`` != 1 each timestep t is then moved along the schedule: its share u = (t + 1) / T
    becomes ``shift u / (1 + (shift - 1) u)`` (Esser et al. 2024, eq. 23), so T - 1 stays and,
    for ``shift`` > 1, the later steps start from noisier latents (2 trailing steps, shift 2:
    999, 666 instead of 999, 499).
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps={steps} must be between 1 and {T}")
    if spacing == "leading":
        ts = [i * (T // steps) for i in range(steps)]
    elif spacing == "trailing":
        ts = [round(T - i * T / steps) - 1 for i in range(steps)][::-1]
    elif spacing == "linspace":
        ts = [round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)]
    else:
        raise ValueError(f"spacing={spacing!r} must be 'leading', 'trailing' or 'linspace'")
    if not shift > 0:
        raise ValueError(f"shift={shift} must be positive")
    if shift != 1.0:
        shares = [(t + 1) / T for t in ts]
        ts = [min(T - 1, max(0, round(T * shift * u / (1 + (shift - 1) * u)) - 1)) for u in shares]
    return sorted(set(ts), reverse=True)


class DDIMSampler:
    """Deterministic (eta=0) or stochastic DDIM over a fixed list of timesteps.

    The update is DDIM eq. 12:
        z_{t'} = sqrt(abar_t') z0 + sqrt(1 - abar_t' - sigma^2) eps + sigma * noise
    with sigma = eta sqrt((1 - abar_t') / (1 - abar_t)) sqrt(1 - abar_t / abar_t') (eq. 16).
    All constants are Python floats, so an unrolled loop exports to ONNX as plain arithmetic.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        steps: int = 4,
        eta: float = 0.0,
        spacing: str = "trailing",
        start_timestep: int | None = None,
        shift: float = 1.0,
    ) -> None:
        # validates the values
        SamplerConfig(steps=min(steps, 1000), eta=eta, spacing=spacing, shift=shift)
        self.schedule, self.eta = schedule, eta
        T = schedule.timesteps
        ts = ddim_timesteps(T, steps, spacing, shift)
        if start_timestep is not None:
            if not 0 <= start_timestep < T:
                raise ValueError(f"start_timestep={start_timestep} must be in 0..{T - 1}")
            ts = [t for t in ts if t <= start_timestep]
            if not ts or ts[0] != start_timestep:
                ts = [start_timestep, *ts]
        abar = schedule.alphas_cumprod.tolist()
        self.steps: list[DDIMStep] = []
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            a_t, a_p = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
            sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
            self.steps.append(DDIMStep(t, t_prev, a_t, a_p, sigma))

    @property
    def timesteps(self) -> list[int]:
        return [s.t for s in self.steps]

    def step(
        self,
        pred: torch.Tensor,
        index: int,
        z_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One update from ``steps[index]``. Returns (z_{t_prev}, z0 estimate), shapes of z_t.

        Raises:
            ValueError: sigma > 0 (eta > 0) but no ``noise`` was given.
        """
        s = self.steps[index]
        z0, eps = predicted_x0_eps(
            z_t, pred, math.sqrt(s.abar), math.sqrt(1 - s.abar), self.schedule.cfg.prediction
        )
        direction = math.sqrt(max(1.0 - s.abar_prev - s.sigma**2, 0.0))
        z_prev = math.sqrt(s.abar_prev) * z0 + direction * eps
        if s.sigma > 0:
            if noise is None:
                raise ValueError("eta > 0 needs per-step noise: pass noise=")
            z_prev = z_prev + s.sigma * noise
        return z_prev, z0

    def sample(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        z_T: torch.Tensor,
        generator: torch.Generator | None = None,
        timestep_rows: int | None = None,
    ) -> torch.Tensor:
        """Run every step from ``z_T``. ``model(z_t, t)`` gets t as an (N,) int64 tensor.

        ``timestep_rows = 1`` gives the model one (1,) timestep that broadcasts over the N
        latents instead (see :class:`lsdseg.model.LatentSegmenter` for why the export wants it).

        Shapes:
            z_T: (N, c, h, w) -> z0 (N, c, h, w).
        """
        z = z_T
        rows = z.shape[0] if timestep_rows is None else timestep_rows
        for i, s in enumerate(self.steps):
            t = torch.full((rows,), s.t, dtype=torch.long, device=z.device)
            noise = draw_noise(z.shape, generator, z.device, z.dtype) if s.sigma > 0 else None
            z, _ = self.step(model(z, t), i, z, noise)
        return z
