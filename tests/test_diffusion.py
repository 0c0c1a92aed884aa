"""Tests for lsdseg.diffusion against diffusers' DDPM/DDIM schedulers and exact oracles.

diffusers (in the [dev] extra) is the peer reference; the tests skip without it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from lsdseg.config import DiffusionConfig
from lsdseg.diffusion import (
    DDIMSampler,
    NoiseSchedule,
    ddim_timesteps,
    draw_noise,
    make_betas,
    predicted_x0_eps,
)

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_SCHEDULE = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction"}


def _ddim(cfg: DiffusionConfig, spacing: str = "trailing"):
    return diffusers.DDIMScheduler(
        num_train_timesteps=cfg.timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=DIFFUSERS_SCHEDULE[cfg.schedule],
        clip_sample=False,
        set_alpha_to_one=True,
        prediction_type=DIFFUSERS_PREDICTION[cfg.prediction],
        timestep_spacing=spacing,
    )


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("timesteps", [1000, 250])
def test_betas_and_alphas_cumprod_match_diffusers(schedule: str, timesteps: int) -> None:
    cfg = DiffusionConfig(timesteps=timesteps, schedule=schedule, beta_start=2e-4, beta_end=0.03)
    betas = make_betas(cfg)
    assert betas.dtype == torch.float64 and betas.shape == (timesteps,)
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=DIFFUSERS_SCHEDULE[schedule],
    )
    torch.testing.assert_close(betas, ref.betas.double(), atol=1e-6, rtol=0)
    ours = NoiseSchedule(cfg).alphas_cumprod
    torch.testing.assert_close(ours, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    assert torch.all(betas > 0) and torch.all(betas < 1)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 10, 50, 1000])
def test_ddim_timesteps_match_diffusers(spacing: str, steps: int) -> None:
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    assert ddim_timesteps(1000, steps, spacing) == ref.timesteps.tolist()


def test_trailing_starts_at_pure_noise() -> None:
    assert ddim_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert ddim_timesteps(1000, 1, "trailing") == [999]


def test_shift_moves_the_later_steps_towards_noise_and_keeps_the_first() -> None:
    assert ddim_timesteps(1000, 2, "trailing", 2.0) == [999, 666]
    assert ddim_timesteps(1000, 4, "trailing", 2.0) == [999, 856, 666, 399]
    assert ddim_timesteps(1000, 1, "trailing", 3.0) == [999]
    for steps in (2, 3, 4, 10):
        plain = ddim_timesteps(1000, steps)
        assert ddim_timesteps(1000, steps, "trailing", 1.0) == plain
        more, fewer = ddim_timesteps(1000, steps, shift=2.0), ddim_timesteps(1000, steps, shift=0.5)
        assert more[0] == fewer[0] == 999 and len(more) == len(fewer) == steps
        assert all(m >= p >= f for m, p, f in zip(more, plain, fewer, strict=True))
        assert more == sorted(more, reverse=True) and len(set(more)) == steps
    with pytest.raises(ValueError, match="shift=0"):
        ddim_timesteps(1000, 2, "trailing", 0.0)


def test_the_sampler_and_the_model_follow_the_config_shift() -> None:
    from lsdseg.config import ModelConfig, SamplerConfig
    from lsdseg.model import LatentSegmenter

    schedule = NoiseSchedule(DiffusionConfig())
    assert DDIMSampler(schedule, 2, shift=2.0).timesteps == [999, 666]
    cfg = ModelConfig()
    shifted = replace(cfg, sampler=SamplerConfig(shift=2.0))
    model = LatentSegmenter(cfg)
    assert model.sampler(2).timesteps == [999, 499]
    assert LatentSegmenter(shifted).sampler(2).timesteps == [999, 666]
    model.cfg = shifted  # as scripts/bundle_weights.py --shift does: no stale cached sampler
    assert model.sampler(2).timesteps == [999, 666]
    with pytest.raises(ValueError, match="shift=20"):
        SamplerConfig(shift=20.0)


@pytest.mark.parametrize(
    ("steps", "spacing", "fragment"),
    [
        (0, "trailing", "steps=0"),
        (1001, "trailing", "steps=1001"),
        (4, "random", "spacing='random'"),
    ],
)
def test_ddim_timesteps_rejects_bad_arguments(steps: int, spacing: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ddim_timesteps(1000, steps, spacing)
    assert fragment in str(info.value)


def _fake_model(z: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed, non-linear, timestep-dependent stand-in for the denoiser."""
    return 0.6 * torch.tanh(z) + 0.2 * z * math.cos(t / 150.0) + 0.3 * (t / 1000.0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize(
    ("schedule", "spacing", "steps"),
    [
        ("linear", "trailing", 4),
        ("linear", "leading", 10),
        ("cosine", "trailing", 50),
        ("scaled_linear", "trailing", 1),
    ],
)
def test_ddim_trajectory_matches_diffusers(
    prediction: str, eta: float, schedule: str, spacing: str, steps: int
) -> None:
    cfg = DiffusionConfig(schedule=schedule, prediction=prediction)
    ours = DDIMSampler(NoiseSchedule(cfg), steps=steps, eta=eta, spacing=spacing)
    ref = _ddim(cfg, spacing)
    ref.set_timesteps(steps)
    assert ours.timesteps == ref.timesteps.tolist()
    # diffusers keeps abar in float32 (compared to ours above to 1e-6); where abar_t ~ 1e-8
    # (cosine, t = 999) eps-prediction divides by sqrt(abar_t) and that rounding reaches 1e-5,
    # so the step formula is compared with the same float64 abar on both sides.
    ref.alphas_cumprod = ours.schedule.alphas_cumprod.clone()

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 8, 8, generator=gen)
    z_ref = z.clone()
    for i, t in enumerate(ours.timesteps):
        noise = torch.randn(z.shape, generator=gen)
        z, z0 = ours.step(_fake_model(z, t), i, z, noise)
        out = ref.step(_fake_model(z_ref, t), t, z_ref, eta=eta, variance_noise=noise)
        z_ref = out.prev_sample
        torch.testing.assert_close(z0, out.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    # the last step lands on the clean end: z equals the final z0 estimate
    torch.testing.assert_close(z, z0)


def test_sample_draws_one_noise_per_stochastic_step_from_the_generator() -> None:
    sampler = DDIMSampler(NoiseSchedule(DiffusionConfig()), steps=4, eta=0.7)
    assert [s.sigma > 0 for s in sampler.steps] == [True, True, True, False]
    z_T = torch.randn(2, 2, 4, 4)
    seen: list[int] = []

    def model(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (2,)
        seen.append(int(t[0]))
        return _fake_model(z, int(t[0]))

    got = sampler.sample(model, z_T, torch.Generator().manual_seed(3))
    assert seen == sampler.timesteps

    gen, z = torch.Generator().manual_seed(3), z_T
    for i, s in enumerate(sampler.steps):
        noise = torch.randn(z.shape, generator=gen) if s.sigma > 0 else None
        z, _ = sampler.step(_fake_model(z, s.t), i, z, noise)
    torch.testing.assert_close(got, z)
    again = sampler.sample(model, z_T, torch.Generator().manual_seed(4))
    assert not torch.allclose(again, got)


def _draws(gen: torch.Generator, before: torch.Tensor, shape: tuple[int, ...]) -> int:
    """How many CPU draws of ``shape`` took ``gen`` from state ``before`` to where it is."""
    ref = torch.Generator()
    ref.set_state(before)
    for n in range(10):
        if torch.equal(ref.get_state(), gen.get_state()):
            return n
        torch.randn(shape, generator=ref)
    raise AssertionError("the generator moved by something other than whole draws of shape")


def test_noise_is_drawn_on_the_generators_device_then_moved() -> None:
    # "meta" stands in for CUDA: torch.randn(device="meta", generator=cpu_gen) draws nothing,
    # as torch.randn(device="cuda", generator=cpu_gen) fails, so only a CPU draw moves the state
    gen = torch.Generator().manual_seed(11)
    before = gen.get_state()
    eps = draw_noise((2, 3, 4), gen, "meta", torch.float16)
    assert eps.device.type == "meta" and eps.dtype == torch.float16 and eps.shape == (2, 3, 4)
    assert _draws(gen, before, (2, 3, 4)) == 1
    # on the CPU: exactly the numbers a plain draw gives (fp16: the same numbers, cast)
    for dtype in (torch.float32, torch.float16):
        got = draw_noise((2, 3, 4), torch.Generator().manual_seed(11), "cpu", dtype)
        want = torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(11)).to(dtype)
        assert torch.equal(got, want)
    torch.manual_seed(5)
    a = draw_noise((3,), None, "cpu")
    torch.manual_seed(5)
    assert torch.equal(a, torch.randn(3))


def test_stochastic_sampling_on_another_device_draws_from_the_cpu_generator() -> None:
    sampler = DDIMSampler(NoiseSchedule(DiffusionConfig()), steps=4, eta=0.7)
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    z_T = torch.zeros(2, 2, 4, 4, device="meta")
    z = sampler.sample(lambda z, t: z * 0.5, z_T, gen)
    assert z.device.type == "meta"
    assert _draws(gen, before, (2, 2, 4, 4)) == sum(s.sigma > 0 for s in sampler.steps) == 3


def test_eta_without_noise_raises() -> None:
    sampler = DDIMSampler(NoiseSchedule(DiffusionConfig()), steps=4, eta=0.5)
    z = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="noise"):
        sampler.step(z, 0, z)
    # deterministic DDIM needs none
    DDIMSampler(NoiseSchedule(DiffusionConfig()), steps=4).step(z, 0, z)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_add_noise_target_split_round_trip(prediction: str) -> None:
    schedule = NoiseSchedule(DiffusionConfig(prediction=prediction, schedule="cosine"))
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 998, 999])
    z_t = schedule.add_noise(z0, eps, t)
    z0_hat, eps_hat = schedule.split(z_t, t, schedule.target(z0, eps, t))
    torch.testing.assert_close(z0_hat, z0, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(eps_hat, eps, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_add_noise_and_target_match_diffusers(prediction: str) -> None:
    cfg = DiffusionConfig(prediction=prediction)
    schedule, ref = NoiseSchedule(cfg), diffusers.DDPMScheduler(num_train_timesteps=1000)
    z0, eps = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    t = torch.tensor([0, 17, 400, 999])
    torch.testing.assert_close(
        schedule.add_noise(z0, eps, t), ref.add_noise(z0, eps, t), atol=1e-5, rtol=1e-5
    )
    expected = eps if prediction == "eps" else ref.get_velocity(z0, eps, t)
    torch.testing.assert_close(schedule.target(z0, eps, t), expected, atol=1e-5, rtol=1e-5)


def test_predicted_x0_eps_inverts_both_parameterisations() -> None:
    a, s = 0.6, 0.8  # a^2 + s^2 = 1
    z0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    z_t = a * z0 + s * eps
    for prediction, pred in (("eps", eps), ("v", a * eps - s * z0)):
        x0_hat, eps_hat = predicted_x0_eps(z_t, pred, a, s, prediction)
        torch.testing.assert_close(x0_hat, z0)
        torch.testing.assert_close(eps_hat, eps)


def _oracle(schedule: NoiseSchedule, z0: torch.Tensor):
    """The perfect denoiser for a known z0: its prediction is exact at every (z_t, t)."""

    def model(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = schedule.alphas_cumprod[t].to(z_t.dtype).reshape(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        eps = (z_t - a * z0) / s
        return eps if schedule.cfg.prediction == "eps" else a * eps - s * z0

    return model


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("start", [None, 600, 499, 0])
def test_warm_start_begins_at_start_and_ends_clean(prediction: str, start: int | None) -> None:
    schedule = NoiseSchedule(DiffusionConfig(prediction=prediction))
    sampler = DDIMSampler(schedule, steps=4, spacing="trailing", start_timestep=start)
    expected_ts = {None: [999, 749, 499, 249], 600: [600, 499, 249], 499: [499, 249], 0: [0]}
    assert sampler.timesteps == expected_ts[start]
    last = sampler.steps[-1]
    assert last.t_prev == -1 and last.abar_prev == 1.0 and last.sigma == 0.0
    assert [s.t_prev for s in sampler.steps[:-1]] == sampler.timesteps[1:]

    # with an exact denoiser, DDIM from a latent noised to `start` returns z0 exactly
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64)
    t0 = torch.full((2,), sampler.timesteps[0])
    z_start = schedule.add_noise(z0, eps, t0)
    out = sampler.sample(_oracle(schedule, z0), z_start)
    torch.testing.assert_close(out, z0, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("start", [-1, 1000])
def test_start_timestep_out_of_range(start: int) -> None:
    with pytest.raises(ValueError, match=f"start_timestep={start}"):
        DDIMSampler(NoiseSchedule(DiffusionConfig()), steps=4, start_timestep=start)


def test_sampler_validates_its_settings() -> None:
    schedule = NoiseSchedule(DiffusionConfig())
    with pytest.raises(ValueError, match=r"eta=1\.5"):
        DDIMSampler(schedule, steps=4, eta=1.5)
    with pytest.raises(ValueError, match="steps=0"):
        DDIMSampler(schedule, steps=0)
    with pytest.raises(ValueError, match="spacing='middle'"):
        DDIMSampler(schedule, steps=4, spacing="middle")


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0])
def test_training_timesteps_follow_the_power_law(gamma: float) -> None:
    # t = T-1 - floor(T u^gamma), so P(t >= T - 1 - k) = P(u^gamma < (k+1)/T) = ((k+1)/T)^(1/gamma)
    schedule = NoiseSchedule(DiffusionConfig(timesteps=1000, timestep_gamma=gamma))
    t = schedule.sample_timesteps(200_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    for k in (0, 99, 299, 699):
        expected = ((k + 1) / 1000) ** (1 / gamma)
        observed = (t >= 999 - k).double().mean().item()
        assert observed == pytest.approx(expected, abs=0.005), k
