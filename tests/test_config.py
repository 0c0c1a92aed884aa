"""Tests for lsdseg.config: validation messages, JSON round trips, unknown keys, wrong types."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lsdseg.config import (
    DiffusionConfig,
    ImageAEConfig,
    MaskVAEConfig,
    ModelConfig,
    SamplerConfig,
    UNetConfig,
    from_dict,
    load_json,
    save_json,
    to_dict,
)

ALL = (ImageAEConfig, MaskVAEConfig, UNetConfig, DiffusionConfig, SamplerConfig, ModelConfig)


@pytest.mark.parametrize("cls", ALL)
def test_defaults_are_valid_and_frozen(cls: type) -> None:
    cfg = cls()
    field = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, getattr(cfg, field))


def test_default_model_matches_the_design() -> None:
    cfg = ModelConfig()
    assert cfg.image_size == 256 and cfg.image_ae.factor == 8
    assert cfg.latent_size == 32
    assert cfg.sampler.steps == 4 and cfg.sampler.hypotheses == 8
    assert cfg.diffusion.timesteps == 1000


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def test_the_bundled_config_differs_from_the_defaults_where_the_docstring_says() -> None:
    from lsdseg.checkpoint import read_config
    from lsdseg.segmenter import bundled_weights

    bundled = ModelConfig.bundled()
    assert bundled == read_config(bundled_weights())[0]
    default, shipped = _leaves(to_dict(ModelConfig())), _leaves(to_dict(bundled))
    differ = {k for k in default if default[k] != shipped[k]}
    documented = {  # each named in ModelConfig's docstring
        "image_ae.encoder",
        "image_ae.decoder",
        "image_mean",
        "image_std",
        "image_ae.context_depth",
        "latent_scale",
        "diffusion.mask_loss",
        "sampler.steps",
        "sampler.shift",
        "presence",
        "sampler.presence_threshold",
    }
    assert differ == documented
    doc = ModelConfig.__doc__
    assert all(k.rsplit(".", 1)[-1] in doc for k in documented)
    assert f"{bundled.latent_scale:.3f}" in doc and f"{bundled.sampler.threshold}" in doc


# (class, keyword arguments, a fragment the message must contain)
INVALID: list[tuple[type, dict[str, Any], str]] = [
    (SamplerConfig, {"steps": 0}, "steps=0"),
    (SamplerConfig, {"steps": 1001}, "steps=1001"),
    (SamplerConfig, {"eta": 1.5}, "eta=1.5"),
    (SamplerConfig, {"eta": -0.1}, "eta=-0.1"),
    (SamplerConfig, {"hypotheses": 0}, "hypotheses=0"),
    (SamplerConfig, {"hypotheses": 257}, "hypotheses=257"),
    (SamplerConfig, {"threshold": 1.5}, "threshold=1.5"),
    (SamplerConfig, {"threshold": 0.0}, "threshold=0.0"),
    (SamplerConfig, {"spacing": "middle"}, "spacing='middle'"),
    (ImageAEConfig, {"factor": 16}, "factor=16"),
    (ImageAEConfig, {"latent_channels": 0}, "latent_channels=0"),
    (ImageAEConfig, {"groups": 0}, "groups=0"),
    (ImageAEConfig, {"context_depth": 0}, "context_depth=0"),
    (ImageAEConfig, {"encoder_depth": 0}, "encoder_depth=0"),
    (ImageAEConfig, {"channels": (32, 64)}, "needs 3 widths"),
    (ImageAEConfig, {"channels": (30, 64, 128)}, "multiple of groups=8"),
    (ImageAEConfig, {"channels": ()}, "at least one width"),
    (ImageAEConfig, {"context_channels": (100,)}, "context_channels=(100,)"),
    (MaskVAEConfig, {"factor": 2}, "factor=2"),
    (MaskVAEConfig, {"encoder_channels": (16, 32)}, "encoder_channels=(16, 32)"),
    (MaskVAEConfig, {"decoder_channels": (8, 8, 8, 8, 8)}, "more levels"),
    (MaskVAEConfig, {"loss": "l1"}, "loss='l1'"),
    (MaskVAEConfig, {"foreground_weight": 0.0}, "foreground_weight=0.0"),
    (MaskVAEConfig, {"kl_weight": -1.0}, "kl_weight=-1.0"),
    (UNetConfig, {"channels": (16, 33)}, "multiple of groups=8"),
    (UNetConfig, {"cond_channels": (32, 64)}, "one width per level"),
    (UNetConfig, {"cond_channels": (32, 64, 60)}, "cond_channels=(32, 64, 60)"),
    (UNetConfig, {"cond_depth": 0}, "cond_depth=0"),
    (UNetConfig, {"num_res_blocks": 0}, "num_res_blocks=0"),
    (UNetConfig, {"attention_levels": (3,)}, "level 3 does not exist"),
    (UNetConfig, {"head_dim": 24}, "head_dim=24"),
    (UNetConfig, {"time_embed_dim": 7}, "time_embed_dim=7"),
    (DiffusionConfig, {"timesteps": 1}, "timesteps=1"),
    (DiffusionConfig, {"schedule": "quadratic"}, "schedule='quadratic'"),
    (DiffusionConfig, {"beta_start": 0.1, "beta_end": 0.01}, "beta_start=0.1"),
    (DiffusionConfig, {"prediction": "x0"}, "prediction='x0'"),
    (DiffusionConfig, {"mask_loss_weight": -1.0}, "mask_loss_weight=-1.0"),
    (ModelConfig, {"image_size": 100}, "image_size=100"),
    (ModelConfig, {"image_size": 0}, "image_size=0"),
    (ModelConfig, {"image_mean": (0.5, 0.5)}, "image_mean="),
    (ModelConfig, {"image_std": (0.5, 0.0, 0.5)}, "image_std="),
    (ModelConfig, {"latent_scale": 0.0}, "latent_scale=0.0"),
    (ModelConfig, {"latent_scale": float("inf")}, "latent_scale=inf must be a finite"),
    (ModelConfig, {"latent_scale": float("nan")}, "latent_scale=nan"),
    (ModelConfig, {"image_mean": (0.5, float("inf"), 0.5)}, "image_mean="),
    (ModelConfig, {"image_std": (0.5, float("inf"), 0.5)}, "image_std="),
    (ModelConfig, {"image_size": 1_000_000}, "image_size=1000000 must be at most 4096"),
    (UNetConfig, {"num_res_blocks": 100_000}, "num_res_blocks=100000 must be between 1 and"),
    (UNetConfig, {"channels": (16, 100_000)}, "every width must be at most 4096"),
    (ImageAEConfig, {"encoder_depth": 1000}, "encoder_depth=1000"),
    (
        ModelConfig,
        {"mask_vae": MaskVAEConfig(factor=4, encoder_channels=(16, 32))},
        "mask_vae.factor=4",
    ),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "fragment"), INVALID, ids=[f"{c.__name__}-{f}" for c, _, f in INVALID]
)
def test_invalid_values_raise_with_the_field_and_value(
    cls: type, kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert fragment in str(info.value)


def test_factor_4_needs_two_widths_and_validates() -> None:
    cfg = ModelConfig(
        image_size=64,
        image_ae=ImageAEConfig(factor=4, channels=(32, 64)),
        mask_vae=MaskVAEConfig(factor=4, encoder_channels=(16, 32)),
    )
    assert cfg.latent_size == 16


def _non_default() -> ModelConfig:
    return ModelConfig(
        image_size=128,
        image_mean=(0.1, 0.2, 0.3),
        image_std=(0.4, 0.5, 0.6),
        latent_scale=0.37,
        image_ae=ImageAEConfig(factor=4, latent_channels=5, channels=(8, 16), context_channels=()),
        mask_vae=MaskVAEConfig(
            factor=4, encoder_channels=(8, 16), decoder_channels=(16, 8, 8), loss="mse"
        ),
        unet=UNetConfig(channels=(16, 32), attention_levels=(0, 1), head_dim=16),
        diffusion=DiffusionConfig(timesteps=500, schedule="cosine", prediction="eps"),
        sampler=SamplerConfig(steps=7, eta=0.3, hypotheses=5, threshold=0.4, spacing="leading"),
    )


def test_to_dict_from_dict_round_trips_through_json() -> None:
    cfg = _non_default()
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["unet"]["channels"] == [16, 32]  # plain JSON values
    back = from_dict(ModelConfig, data)
    assert back == cfg
    assert isinstance(back.unet.channels, tuple) and isinstance(back.image_ae, ImageAEConfig)
    assert back.image_ae.context_channels == ()


def test_missing_keys_take_defaults_and_ints_widen_to_float() -> None:
    cfg = from_dict(ModelConfig, {"latent_scale": 2, "sampler": {"steps": 3}})
    assert cfg.latent_scale == 2.0 and isinstance(cfg.latent_scale, float)
    assert cfg.sampler == SamplerConfig(steps=3)
    assert cfg.unet == UNetConfig()


def test_unknown_key_is_rejected_and_valid_keys_listed() -> None:
    with pytest.raises(ValueError) as info:
        from_dict(ModelConfig, {"image_sise": 64})
    msg = str(info.value)
    assert "image_sise" in msg
    for name in ("image_size", "latent_scale", "sampler", "unet"):
        assert name in msg


def test_nested_unknown_key_names_its_path() -> None:
    with pytest.raises(ValueError) as info:
        from_dict(ModelConfig, {"sampler": {"stpes": 4}})
    msg = str(info.value)
    assert "config.sampler" in msg and "stpes" in msg and "'steps'" in msg


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"image_size": "64"}, "config.image_size='64'"),
        ({"latent_scale": "1.0"}, "expected float"),
        ({"sampler": {"steps": 2.5}}, "config.sampler.steps=2.5"),
        ({"sampler": {"steps": True}}, "config.sampler.steps=True"),
        ({"sampler": {"eta": False}}, "expected float"),
        ({"unet": {"channels": 16}}, "expected a list"),
        ({"image_mean": [0.5, "x", 0.5]}, "config.image_mean[1]"),
        ({"sampler": 5}, "config.sampler: expected a JSON object {...}, got a number"),
        ({"unet": ["channels"]}, "config.unet: expected a JSON object {...}, got an array"),
    ],
)
def test_wrong_types_are_rejected(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        from_dict(ModelConfig, data)
    assert fragment in str(info.value)


def test_invalid_value_in_dict_raises_the_validation_message() -> None:
    with pytest.raises(ValueError, match="steps=0"):
        from_dict(ModelConfig, {"sampler": {"steps": 0}})


def test_save_json_load_json(tmp_path: Path) -> None:
    cfg = _non_default()
    path = tmp_path / "model.json"
    save_json(cfg, path)
    assert json.loads(path.read_text()) == to_dict(cfg)
    assert load_json(ModelConfig, path) == cfg
    save_json(cfg.sampler, tmp_path / "sampler.json")
    assert load_json(SamplerConfig, tmp_path / "sampler.json") == cfg.sampler


def test_load_json_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_json(ModelConfig, bad)
    assert str(bad) in str(info.value)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"diffusion": {"timestep": 10}}))
    with pytest.raises(ValueError, match="timestep") as info:
        load_json(ModelConfig, typo)
    assert str(typo) in str(info.value)


@pytest.mark.parametrize(
    ("data", "kind"), [([1, 2], "an array"), ([{"image_size": 64}], "an array"), ("x", "a string")]
)
def test_a_config_that_is_no_object_is_one_value_error(tmp_path: Path, data, kind: str) -> None:
    expected = f"expected a JSON object {{...}} of ModelConfig settings, got {kind}"
    with pytest.raises(ValueError, match=re.escape(f"config: {expected}")):
        from_dict(ModelConfig, data)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {expected}")):
        load_json(ModelConfig, path)
