"""Tests for lsdseg.export.triton_repo: the repository layout and a config.pbtxt that the
schema tritonclient ships parses and that matches the exported graph's inputs and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
triton_repo = pytest.importorskip(
    "lsdseg.export.triton_repo",
    reason="lsdseg.export does not import yet (the export issue)",
    exc_type=ImportError,
)

TRITON_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
TRICKY = 'steps=2 "trailing"\nnormalise: (x - 0.5) / 0.5, μ'


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    """A tiny segmenter exported like the real graph: image, noise -> mean, std, hypotheses."""
    import onnx

    from lsdseg.config import ImageAEConfig, MaskVAEConfig, ModelConfig, SamplerConfig, UNetConfig
    from lsdseg.model import LatentSegmenter

    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=32,
        image_ae=ImageAEConfig(channels=(8, 8, 8), context_channels=(8,), latent_channels=4),
        mask_vae=MaskVAEConfig(encoder_channels=(8, 8, 8), decoder_channels=(8,)),
        unet=UNetConfig(channels=(8, 16), attention_levels=(), head_dim=8, time_embed_dim=16),
        sampler=SamplerConfig(steps=1, hypotheses=2),
    )
    model = LatentSegmenter(cfg).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    x = torch.randn(1, 3, 32, 32)
    noise = torch.randn(1, 2, *model.latent_shape)
    torch.onnx.export(
        model,
        (x, noise),
        str(path),
        input_names=["image", "noise"],
        output_names=["mean", "std", "hypotheses"],
        dynamic_axes={
            "image": {0: "batch"},
            "noise": {0: "batch", 1: "k"},
            "mean": {0: "batch"},
            "std": {0: "batch"},
            "hypotheses": {0: "batch", 1: "k"},
        },
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"lsdseg.sampler": TRICKY, "lsdseg.version": "0.1.0"})
    onnx.save(proto, str(path))
    return path


def _parse(model_dir: Path):
    """config.pbtxt parsed with Triton's own schema (fails on any unknown or mistyped field)."""
    return text_format.Parse(
        (model_dir / "config.pbtxt").read_text(encoding="utf-8"), model_config_pb2.ModelConfig()
    )


def _ort_io(path: Path) -> tuple[list, list]:
    """The graph's tensors as ONNX Runtime sees them: (name, Triton type, shape, -1 if symbolic)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def rows(args):
        return [
            (a.name, TRITON_TYPES[a.type], [d if isinstance(d, int) else -1 for d in a.shape])
            for a in args
        ]

    return rows(session.get_inputs()), rows(session.get_outputs())


def test_onnx_repository_matches_the_graph(graph, tmp_path):
    model_dir = triton_repo.write_triton_repo(
        tmp_path / "repo", graph, max_batch_size=16, max_queue_delay_us=500, instances=2
    )
    assert model_dir == tmp_path / "repo" / "lsdseg"
    model_file = model_dir / "1" / "model.onnx"
    assert model_file.read_bytes() == graph.read_bytes()
    cfg = _parse(model_dir)
    assert cfg.name == "lsdseg" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert len(cfg.instance_group) == 1
    assert cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU

    inputs, outputs = _ort_io(model_file)
    for declared, expected in ((cfg.input, inputs), (cfg.output, outputs)):
        got = [
            (t.name, model_config_pb2.DataType.Name(t.data_type), [-1, *t.dims]) for t in declared
        ]
        assert got == expected  # Triton's dims are the graph's without the batch axis
    assert [t.name for t in cfg.input] == ["image", "noise"]
    assert [t.name for t in cfg.output] == ["mean", "std", "hypotheses"]
    assert list(cfg.input[1].dims) == [-1, 4, 4, 4]  # K dynamic, c_m, S/f, S/f
    assert cfg.parameters["lsdseg.sampler"].string_value == TRICKY
    assert cfg.parameters["lsdseg.version"].string_value == "0.1.0"


def test_repository_graph_runs_at_any_batch_and_k(graph, tmp_path):
    model_dir = triton_repo.write_triton_repo(tmp_path, graph, kind="cpu")
    cfg = _parse(model_dir)
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    noise = np.random.default_rng(1).standard_normal((3, 5, 4, 4, 4), dtype=np.float32)
    mean, std, hyp = session.run(None, {"image": x, "noise": noise})
    assert mean.shape == std.shape == (3, 32, 32) and hyp.shape == (3, 5, 32, 32)


def test_tensorrt_plan_takes_io_from_its_onnx(graph, tmp_path):
    plan = tmp_path / "lsdseg.plan"
    plan.write_bytes(b"not really an engine")
    with pytest.raises(ValueError, match="graph_io"):
        triton_repo.write_triton_repo(tmp_path / "repo", plan)
    with pytest.raises(ValueError, match="GPU"):
        triton_repo.write_triton_repo(
            tmp_path / "repo", plan, triton_repo.graph_io(graph), kind="cpu"
        )
    model_dir = triton_repo.write_triton_repo(
        tmp_path / "repo", plan, triton_repo.graph_io(graph), name="lsdseg_trt"
    )
    assert (model_dir / "1" / "model.plan").read_bytes() == b"not really an engine"
    cfg = _parse(model_dir)
    assert cfg.name == "lsdseg_trt" and cfg.platform == "tensorrt_plan"
    assert [t.name for t in cfg.input] == ["image", "noise"]


def test_no_batching_keeps_full_shapes(graph, tmp_path):
    cfg = _parse(triton_repo.write_triton_repo(tmp_path, graph, max_batch_size=0))
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [-1, 3, 32, 32]


def test_fixed_batch_axis_and_bad_settings_are_refused(graph, tmp_path):
    io = triton_repo.graph_io(graph)
    fixed = triton_repo.GraphIO(
        (triton_repo.TensorSpec("image", "TYPE_FP32", (1, 3, 32, 32)), *io.inputs[1:]),
        io.outputs,
    )
    with pytest.raises(ValueError, match=r"image.*first axis must be dynamic"):
        triton_repo.model_config(fixed, "onnxruntime_onnx")
    assert "max_batch_size: 0" in triton_repo.model_config(
        fixed, "onnxruntime_onnx", max_batch_size=0
    )
    for bad in ({"instances": 0}, {"max_batch_size": -1}, {"max_queue_delay_us": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            triton_repo.model_config(io, "onnxruntime_onnx", **bad)
    with pytest.raises(ValueError, match="expected an ONNX graph"):
        (tmp_path / "model.pt").write_bytes(b"")
        triton_repo.write_triton_repo(tmp_path, tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError):
        triton_repo.write_triton_repo(tmp_path, tmp_path / "missing.onnx")


def test_external_weights_are_copied_beside_the_graph(graph, tmp_path):
    import onnx

    proto = onnx.load(str(graph))
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(
        proto,
        str(src / "big.onnx"),
        save_as_external_data=True,
        location="big.onnx.data",
        size_threshold=0,
    )
    model_dir = triton_repo.write_triton_repo(tmp_path / "repo", src / "big.onnx")
    assert (model_dir / "1" / "big.onnx.data").is_file()
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    x = np.zeros((1, 3, 32, 32), np.float32)
    noise = np.zeros((1, 2, 4, 4, 4), np.float32)
    assert session.run(["mean"], {"image": x, "noise": noise})[0].shape == (1, 32, 32)
