"""The input size is an argument (``Segmenter(image_size=)``, ``export_onnx(image_size=)``),
checked in one place (:mod:`lsdseg.imagesize`), and never written into ``model.cfg``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lsdseg.diffusion import draw_noise
from lsdseg.imagesize import check_image_size, latent_shape, resolve_image_size
from lsdseg.model import LatentSegmenter
from lsdseg.runners import TorchRunner, register_runner
from lsdseg.segmenter import Segmenter, load


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_size_rule_is_the_configs_and_leaves_it_alone(tiny_model: LatentSegmenter) -> None:
    cfg = tiny_model.cfg
    before = copy.deepcopy(cfg)
    s = cfg.image_size
    assert check_image_size(cfg, 2 * s) == 2 * s and check_image_size(cfg, np.int64(s)) == s
    assert latent_shape(cfg, s) == tiny_model.latent_shape
    assert latent_shape(cfg, 2 * s)[1:] == (2 * s // cfg.image_ae.factor,) * 2
    for bad in (s + 1, 0, -s):
        with pytest.raises(ValueError, match=rf"^image_size={bad} must be a multiple of"):
            check_image_size(cfg, bad)
    for bad in (float(s), True, "64"):
        with pytest.raises(TypeError, match="must be an int"):
            check_image_size(cfg, bad)
    assert resolve_image_size(cfg, None, "onnx") == s == resolve_image_size(cfg, s, "trt")
    assert tiny_model.cfg is cfg and cfg == before


def test_a_segmenter_at_another_size_runs_there_and_leaves_the_model_config_alone(
    tiny_model: LatentSegmenter,
) -> None:
    cfg = tiny_model.cfg
    before = copy.deepcopy(cfg)
    s, big = cfg.image_size, 2 * cfg.image_size
    seg = Segmenter(tiny_model, image_size=big)
    assert seg.image_size == big and seg.config.image_size == s
    r = seg(_frame(40, 70), hypotheses=2, steps=1, seed=3, hypotheses_size="model")
    assert r.hypotheses.shape == (2, big, big) and r.mean.shape == (40, 70)
    assert tuple(r.latents.shape) == (2, *latent_shape(cfg, big))
    warm = seg(_frame(40, 70), hypotheses=2, steps=1, seed=3, warm_start=r, warm_timestep=300)
    assert tuple(warm.latents.shape) == (2, *latent_shape(cfg, big))
    # the model's config is the very object it was, unchanged: a second segmenter on the same
    # model (as a server holds) still runs at the checkpoint's size
    assert seg.model.cfg is cfg and cfg == before
    other = Segmenter(tiny_model)
    assert other.image_size == s
    assert other(_frame(40, 70), hypotheses=2, steps=1, seed=3).latents.shape[-1] == s // 8
    with pytest.raises(ValueError, match="hypotheses=2 and this model's latent"):
        other(_frame(40, 70), hypotheses=2, steps=1, seed=3, warm_start=r)


def test_the_size_is_honoured_the_result_is_the_model_at_that_size(
    tiny_model: LatentSegmenter,
) -> None:
    """A frame already at the new size is not resized: the Result is the model's output on
    it, with noise of the latent grid of that size."""
    big = 2 * tiny_model.cfg.image_size
    seg = Segmenter(tiny_model, image_size=big)
    bgr = _frame(big, big, seed=1)
    r = seg(bgr, hypotheses=3, steps=2, seed=7)
    x = seg.preprocess([bgr], "bgr")  # (1, 3, 2S, 2S)
    assert x.shape == (1, 3, big, big)
    shape = (1, 3, *latent_shape(tiny_model.cfg, big))  # (1, K, c_m, 2S/f, 2S/f)
    noise = draw_noise(shape, torch.Generator().manual_seed(7), "cpu")
    with torch.no_grad():
        p = tiny_model.hypotheses(x, noise, 2)[0]  # (K, 2S, 2S)
    np.testing.assert_allclose(r.hypotheses, p.numpy(), atol=1e-5)


def test_sizes_that_cannot_run_are_refused_before_the_runner_is_built(
    tiny_model: LatentSegmenter,
) -> None:
    cfg = tiny_model.cfg
    before = copy.deepcopy(cfg)
    s = cfg.image_size
    with pytest.raises(ValueError, match=rf"^image_size={s + 4} must be a multiple of"):
        Segmenter(tiny_model, image_size=s + 4)
    # the exported graph is fixed at the checkpoint's size: refused before any export
    for backend in ("onnx", "trt"):
        with pytest.raises(ValueError, match=rf"^image_size={2 * s}: the {backend} backend runs"):
            Segmenter(tiny_model, backend=backend, image_size=2 * s)
    built = []

    def factory(model, ckpt, device):  # a runner outside the backends table
        built.append(model)
        return TorchRunner(model)

    register_runner("test-imagesize", factory)
    with pytest.raises(ValueError, match=r"^image_size=\d+: the test-imagesize backend runs"):
        Segmenter(tiny_model, backend="test-imagesize", image_size=2 * s)
    assert not built
    assert Segmenter(tiny_model, backend="test-imagesize", image_size=s).image_size == s
    assert tiny_model.cfg is cfg and cfg == before


def test_load_takes_the_size(tiny: str) -> None:
    seg = load(tiny, "cpu", image_size=64)
    assert seg.image_size == 64 and seg.config.image_size == 32
    assert seg(_frame(20, 30), steps=1, seed=0, hypotheses_size="model").hypotheses.shape[-1] == 64
    with pytest.raises(ValueError, match=r"^image_size=40 must be a multiple of 16"):
        load(tiny, "cpu", image_size=40)


def test_export_at_another_size_traces_there_and_leaves_the_model_config_alone(
    tiny: str, tmp_path
) -> None:
    pytest.importorskip("onnx")
    import onnx

    from lsdseg.checkpoint import load_checkpoint
    from lsdseg.export.onnx import export_onnx, read_metadata

    model = load_checkpoint(tiny)
    cfg = model.cfg
    before = copy.deepcopy(cfg)
    path = export_onnx(model, tmp_path / "a.onnx", steps=1, image_size=64)
    assert model.cfg is cfg and cfg == before
    assert read_metadata(path)["image_size"] == "64"
    graph = onnx.load(str(path)).graph
    dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in graph.input}  # fmt: skip
    c_m = cfg.mask_vae.latent_channels
    assert dims == {"image": ["B", 3, 64, 64], "noise": ["B", "K", c_m, 8, 8]}
