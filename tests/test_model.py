"""Tests for lsdseg.model.LatentSegmenter at a tiny configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from lsdseg import ops
from lsdseg.config import ModelConfig
from lsdseg.diffusion import DDIMSampler
from lsdseg.model import LatentSegmenter
from lsdseg.unet import repeat_condition


def _inputs(model: LatentSegmenter, b: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = model.cfg.image_size
    x = torch.randn(b, 3, s, s, generator=gen)
    noise = torch.randn(b, k, *model.latent_shape, generator=gen)
    return x, noise


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize(("b", "k"), [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_forward_shapes_and_ranges(
    make_config: Callable[..., ModelConfig],
    make_model: Callable[..., LatentSegmenter],
    factor: int,
    b: int,
    k: int,
) -> None:
    model = make_model(make_config(factor=factor))
    s = model.cfg.image_size
    assert model.latent_shape == (2, s // factor, s // factor)
    x, noise = _inputs(model, b, k)
    with torch.no_grad():
        mean, std, p, score = model(x, noise)
    assert mean.shape == std.shape == (b, s, s)
    assert score.shape == (b,) and bool(((score > 0) & (score < 1)).all())  # a probability
    assert p.shape == (b, k, s, s)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    torch.testing.assert_close(mean, p.mean(dim=1))
    torch.testing.assert_close(std, torch.std(p, dim=1, unbiased=False), atol=1e-6, rtol=1e-5)
    if k > 1:
        assert float(std.max()) > 0  # hypotheses differ, so the std check means something


def test_image_side_runs_once_per_image_whatever_k(tiny_model: LatentSegmenter) -> None:
    calls: dict[str, list[int]] = {
        "encoder": [],
        "presence": [],
        "cond_in": [],
        "conv_in": [],
        "decoder": [],
    }

    def hook(name: str):
        return lambda module, args, out: calls[name].append(args[0].shape[0])

    m = tiny_model
    handles = [
        m.image_ae.encoder.norm.register_forward_hook(hook("encoder")),  # before its head
        m.presence.register_forward_hook(lambda mod, a, out: calls["presence"].append(len(out))),
        m.unet.cond_in.register_forward_hook(hook("cond_in")),
        m.unet.conv_in.register_forward_hook(hook("conv_in")),
        m.mask_vae.decoder.register_forward_hook(hook("decoder")),
    ]
    try:
        b, k, steps = 2, 5, 3
        x, noise = _inputs(m, b, k)
        with torch.no_grad():
            m(x, noise, steps=steps)
    finally:
        for h in handles:
            h.remove()
    assert calls["encoder"] == [b]  # once, on B images, not B * K
    assert calls["presence"] == [b]  # the presence head reads the encoder's features once
    assert calls["cond_in"] == [b]
    assert calls["conv_in"] == [b * k] * steps  # the hypotheses run batched, once per step
    assert calls["decoder"] == [b * k]


def test_same_noise_same_output_different_noise_different(tiny_model: LatentSegmenter) -> None:
    x, noise = _inputs(tiny_model, 2, 3)
    with torch.no_grad():
        first = tiny_model(x, noise)
        second = tiny_model(x, noise.clone())
        _, other = _inputs(tiny_model, 2, 3, seed=1)
        third = tiny_model(x, other)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.allclose(first[2], third[2])


def test_hypotheses_and_images_do_not_leak_into_each_other(tiny_model: LatentSegmenter) -> None:
    """Batched K x B must equal running each (image, noise) alone: no mixing in the reshapes."""
    x, noise = _inputs(tiny_model, 2, 3)
    with torch.no_grad():
        p = tiny_model.hypotheses(x, noise, steps=2)
        for i in range(2):
            for k in range(3):
                alone = tiny_model.hypotheses(x[i : i + 1], noise[i : i + 1, k : k + 1], steps=2)
                torch.testing.assert_close(p[i, k], alone[0, 0], atol=1e-5, rtol=1e-5)
        # the image matters: the same noise under another image gives other masks
        swapped = tiny_model.hypotheses(x.flip(0), noise, steps=2)
    assert not torch.allclose(p, swapped, atol=1e-4)


def test_steps_default_to_the_config(tiny_model: LatentSegmenter) -> None:
    x, noise = _inputs(tiny_model, 1, 2)
    with torch.no_grad():
        default = tiny_model(x, noise)[2]
        explicit = tiny_model(x, noise, steps=tiny_model.cfg.sampler.steps)[2]
        other = tiny_model(x, noise, steps=1)[2]
    assert torch.equal(default, explicit)
    assert not torch.allclose(default, other)


def test_normalize_uses_the_config(tiny_model: LatentSegmenter) -> None:
    cfg = tiny_model.cfg
    x = torch.rand(2, 3, 4, 4)
    got = tiny_model.normalize(x)
    for c in range(3):
        expected = (x[:, c] - cfg.image_mean[c]) / cfg.image_std[c]
        torch.testing.assert_close(got[:, c], expected)


def test_latent_scale_is_applied_both_ways(tiny_model: LatentSegmenter) -> None:
    scale = tiny_model.cfg.latent_scale
    assert scale != 1.0
    y = (torch.rand(2, 1, 64, 64) > 0.5).float()
    z = torch.randn(2, *tiny_model.latent_shape)
    with torch.no_grad():
        mean, _ = tiny_model.mask_vae.encode(y)
        torch.testing.assert_close(tiny_model.encode_mask(y), mean * scale)
        torch.testing.assert_close(
            tiny_model.decode_masks(z), tiny_model.mask_vae.decode(z / scale)
        )


def test_sampler_is_cached_per_setting(tiny_model: LatentSegmenter) -> None:
    a = tiny_model.sampler(4)
    assert tiny_model.sampler(4) is a
    assert tiny_model.sampler(4, 0.5) is not a
    assert tiny_model.sampler(4, start=300).timesteps[0] == 300
    assert a.timesteps == [999, 749, 499, 249]  # spacing from the config (trailing)


def test_stochastic_sampling_follows_the_generator(tiny_model: LatentSegmenter) -> None:
    x, noise = _inputs(tiny_model, 1, 2)
    with torch.no_grad():
        a = tiny_model.hypotheses(x, noise, 3, eta=1.0, generator=torch.Generator().manual_seed(5))
        b = tiny_model.hypotheses(x, noise, 3, eta=1.0, generator=torch.Generator().manual_seed(5))
        c = tiny_model.hypotheses(x, noise, 3, eta=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_warm_latents_draw_from_the_cpu_generator_for_any_device(
    tiny_model: LatentSegmenter,
) -> None:
    z0 = torch.randn(1, 2, *tiny_model.latent_shape)
    got = tiny_model.warm_latents(z0, 300, torch.Generator().manual_seed(2))
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(2))
    t = torch.full((1,), 300, dtype=torch.long)
    torch.testing.assert_close(got, tiny_model.schedule.add_noise(z0, eps, t), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(2)
    meta = tiny_model.warm_latents(z0.to("meta"), 300, gen)
    assert meta.device.type == "meta"
    assert not torch.equal(gen.get_state(), torch.Generator().manual_seed(2).get_state())


def _reference_hypotheses(
    model: LatentSegmenter, x: torch.Tensor, noise: torch.Tensor, steps: int, eta: float, seed: int
) -> torch.Tensor:
    """The sampling graph without its layout choices: DDIMSampler.sample (one timestep row per
    hypothesis) and MaskVAE.decode ((B*K, 1, h, w) logits upsampled as they are)."""
    b, k = noise.shape[:2]
    cond = repeat_condition(model.unet.condition(model.encode_image(x)), k)
    z = noise.reshape(b * k, *noise.shape[2:])  # (B*K, c_m, h, w)
    sampler = DDIMSampler(model.schedule, steps, eta, model.cfg.sampler.spacing)
    gen = torch.Generator().manual_seed(seed)
    z0 = sampler.sample(lambda z_t, t: model.unet.denoise(z_t, t, cond), z, gen)
    logits = model.mask_vae.decode(z0 / model.cfg.latent_scale)  # (B*K, 1, S, S)
    return torch.sigmoid(logits).reshape(b, k, *logits.shape[2:])  # (B, K, S, S)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_layout_choices_change_no_result(tiny_model: LatentSegmenter, eta: float) -> None:
    """The broadcast timestep and the (1, B*K, h, w) upsampling are layouts, not maths; with
    eta > 0 the per-step noise is drawn from the generator in DDIMSampler.sample's order."""
    x, noise = _inputs(tiny_model, 2, 3)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        got = tiny_model.hypotheses(x, noise, 3, eta=eta, generator=gen)
        want = _reference_hypotheses(tiny_model, x, noise, 3, eta, seed=4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert float(got.std(dim=1).max()) > 0.01  # the hypotheses differ: the check means something


def test_the_timestep_is_one_row_under_every_ops_backend(
    tiny_model: LatentSegmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One time-MLP row per step whatever the ops backend: the choice is the model's, not the
    backend's (the Triton GroupNorm kernel takes a (1, C) scale/shift too)."""
    rows: list[int] = []
    tiny_model.unet.time_mlp.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    x, noise = _inputs(tiny_model, 2, 3)
    monkeypatch.setitem(ops._REGISTRY, "other", replace(ops.get_backend("torch"), name="other"))
    with torch.no_grad():
        by_torch = tiny_model.hypotheses(x, noise, 2)
        assert rows == [1, 1]
        rows.clear()
        with ops.use_backend("other"):
            by_other = tiny_model.hypotheses(x, noise, 2)
        assert rows == [1, 1]
    torch.testing.assert_close(by_torch, by_other, rtol=0, atol=0)
