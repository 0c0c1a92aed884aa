"""The MobileNetV2 branch of the earlier image encoder (run-14 weights): shapes, growth, freezing.

New models use the EfficientNet-Lite encoder (tests/test_efficientnet.py); this branch stays so
that checkpoints with it load and can be compared.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import model_outputs

from lsdseg.backbone import FROZEN_BLOCKS, MobileNetV2Features
from lsdseg.checkpoint import grow_checkpoint, load_checkpoint, save_checkpoint
from lsdseg.config import ImageAEConfig
from lsdseg.model import LatentSegmenter


def _two_level_config(make_config, **image_ae):
    """The tiny config with the two context levels a backbone needs (S/16, S/32)."""
    cfg = make_config()
    return replace(cfg, image_ae=replace(cfg.image_ae, context_channels=(16, 16), **image_ae))


def test_features_at_s8_s16_s32_and_the_parameter_count() -> None:
    net = MobileNetV2Features().eval()
    with torch.no_grad():
        feats = net(torch.randn(2, 3, 64, 96))
    assert [f.shape for f in feats] == [(2, 32, 8, 12), (2, 96, 4, 6), (2, 320, 2, 3)]
    # MobileNetV2 1.0 has 3.50 M parameters; without the 1280-wide conv and the classifier,
    # and with batch norms folded into biases, 1.80 M remain
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.80e6, rel=0.01)


def test_grown_with_a_backbone_the_model_computes_what_it_did(
    make_config, make_model, tmp_path: Path
) -> None:
    small = make_model(_two_level_config(make_config), seed=3)
    saved = save_checkpoint(small, tmp_path / "small")
    grown = grow_checkpoint(saved, {"image_ae": {"backbone": "mobilenet_v2"}})
    with torch.no_grad():  # pretrained or not, the zero fusion convs hide the backbone
        for p in grown.image_ae.encoder.backbone.parameters():
            p.normal_(0.0, 0.1)
    for a, b in zip(model_outputs(small), model_outputs(grown), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # trained away from zero, the backbone changes the image latent
        for fuse in grown.image_ae.encoder.fuse:
            fuse.weight.normal_(0.0, 0.05)
        assert not torch.allclose(model_outputs(grown)[0], model_outputs(small)[0])
    back = load_checkpoint(save_checkpoint(grown, tmp_path / "grown"))
    for a, b in zip(model_outputs(grown), model_outputs(back), strict=True):
        assert torch.equal(a, b)


def test_the_early_blocks_stay_frozen_and_the_rest_trains(make_config) -> None:
    model = LatentSegmenter(_two_level_config(make_config, backbone="mobilenet_v2"))
    encoder = model.image_ae.encoder
    trainable = {id(p) for p in encoder.trainable_parameters()}
    frozen = [encoder.backbone.stem, *encoder.backbone.blocks[:FROZEN_BLOCKS]]
    assert not any(id(p) in trainable for m in frozen for p in m.parameters())
    later = encoder.backbone.blocks[FROZEN_BLOCKS:]
    assert all(id(p) in trainable for m in later for p in m.parameters())
    assert all(id(p) in trainable for p in encoder.fuse.parameters())
    assert all(id(p) in trainable for p in encoder.levels.parameters())
    # the autoencoder stage's list adds the image decoder and keeps the freeze
    ae = {id(p) for p in model.image_ae.trainable_parameters()}
    assert trainable < ae and {id(p) for p in model.image_ae.decoder.parameters()} <= ae


def test_a_training_step_leaves_the_frozen_blocks_unchanged(make_config, tmp_path: Path) -> None:
    from test_train import make_dataset  # synthetic Kvasir-style frames with a disc

    from lsdseg.config import TrainConfig
    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.train import Trainer

    cfg = _two_level_config(make_config, backbone="mobilenet_v2")
    _, pairs = find_pairs(make_dataset(tmp_path / "data", n=4))
    train_set = SegmentationDataset(pairs, cfg.image_size)
    tc = TrainConfig(
        stage="diffusion", epochs=1, batch_size=2, max_steps_per_epoch=1, warmup_steps=1
    )
    trainer = Trainer(cfg, tc, train_set, None, tmp_path / "run")
    bb = trainer.model.image_ae.encoder.backbone
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with torch.no_grad():  # open the fusion convs so that gradients reach the backbone
        for fuse in trainer.model.image_ae.encoder.fuse:
            fuse.weight.normal_(0.0, 0.05)
    trainer.run()
    after = bb.state_dict()
    early = [k for k in before if k.startswith("stem.") or int(k.split(".")[1]) < FROZEN_BLOCKS]
    assert early and all(torch.equal(before[k], after[k]) for k in early)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in early)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backbone": "resnet50"}, "use '' \\(none\\) or 'mobilenet_v2'"),
        ({"backbone": "mobilenet_v2", "context_channels": (16,)}, "two context levels"),
        (
            {"backbone": "mobilenet_v2", "factor": 4, "channels": (8, 16)},
            "needs factor=8",
        ),
    ],
)
def test_config_refuses_a_backbone_it_cannot_wire(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageAEConfig(**fields)


def test_onnx_graph_of_a_backbone_model_matches_torch(make_config, make_model, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from lsdseg.export.check import check_graph, tensorrt_problems
    from lsdseg.export.onnx import export_onnx

    model = make_model(_two_level_config(make_config, backbone="mobilenet_v2"), head_std=0.3)
    with torch.no_grad():  # wire the backbone in, so that the graph depends on it
        for fuse in model.image_ae.encoder.fuse:
            fuse.weight.normal_(0.0, 0.05)
    path = export_onnx(model, tmp_path / "bb.onnx", steps=1)
    graph = onnx.load(str(path))
    check_graph(graph)
    assert not tensorrt_problems(graph)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    noise = torch.randn(1, 2, *model.latent_shape, generator=gen)
    with torch.inference_mode():
        ref = [t.numpy() for t in model(x, noise, 1)]
    got = session.run(None, {"image": x.numpy(), "noise": noise.numpy()})
    for r, g in zip(ref, got, strict=True):
        assert np.abs(g - r).max() <= 1e-4
