"""Tests for lsdseg.export.triton_repo and ``lsdseg export --triton-repo``: the repository
layout, and a config.pbtxt that Triton's own schema (model_config.proto, as tritonclient ships
it) parses and whose tensors match the exported graph as ONNX Runtime sees it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from lsdseg.cli.main import main
from lsdseg.export import triton_repo
from lsdseg.export.onnx import INPUT_NAMES, OUTPUT_NAMES, read_metadata

TRITON_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
TRICKY = 'steps=2 "trailing"\nnormalise: (x - 0.5) / 0.5, μ\\'


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> Path:
    """``lsdseg export --triton-repo`` of the tiny checkpoint (S=32): the folder it wrote."""
    root = tmp_path_factory.mktemp("export")
    args = ["export", "--weights", tiny, "--out", str(root / "out")]
    args += ["--triton-repo", str(root / "repo"), "--triton-max-batch", "16"]
    assert main([*args, "--triton-instances", "2"]) == 0
    return root


@pytest.fixture(scope="module")
def graph(exported) -> Path:
    (onnx_file,) = (exported / "out").glob("*-fp32.onnx")
    return onnx_file


def parse(model_dir: Path) -> model_config_pb2.ModelConfig:
    """config.pbtxt parsed with Triton's schema (fails on any unknown or mistyped field)."""
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def ort_io(path: Path) -> tuple[list, list]:
    """The graph's tensors as ONNX Runtime sees them: (name, Triton type, shape; -1 symbolic)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def rows(args):
        return [
            (a.name, TRITON_TYPES[a.type], [d if isinstance(d, int) else -1 for d in a.shape])
            for a in args
        ]

    return rows(session.get_inputs()), rows(session.get_outputs())


def test_export_writes_a_repository_that_matches_the_graph(exported, graph):
    model_dir = exported / "repo" / "lsdseg"
    model_file = model_dir / "1" / "model.onnx"
    assert model_file.read_bytes() == graph.read_bytes()
    cfg = parse(model_dir)
    assert cfg.name == "lsdseg" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")
    (group,) = cfg.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    inputs, outputs = ort_io(model_file)
    for declared, expected in ((cfg.input, inputs), (cfg.output, outputs)):
        got = [  # a (B,) tensor is declared [1] reshaped to [] (Triton's rule for batched models)
            (
                t.name,
                model_config_pb2.DataType.Name(t.data_type),
                [-1, *(t.reshape.shape if t.HasField("reshape") else t.dims)],
            )
            for t in declared
        ]
        assert got == expected  # Triton's dims: the graph's without the batch axis
    score = cfg.output[OUTPUT_NAMES.index("score")]
    assert list(score.dims) == [1] and list(score.reshape.shape) == []
    assert tuple(t.name for t in cfg.input) == INPUT_NAMES
    assert tuple(t.name for t in cfg.output) == OUTPUT_NAMES
    assert list(cfg.input[1].dims) == [-1, 4, 4, 4]  # noise: K dynamic, c_m, S/f, S/f
    # the graph's metadata tells a client how to prepare the inputs
    meta = read_metadata(graph)
    assert {k: v.string_value for k, v in cfg.parameters.items()} == meta
    assert cfg.parameters["image_mean"].string_value == meta["image_mean"]


def test_repository_graph_runs_at_any_batch_and_k(exported):
    session = ort.InferenceSession(str(exported / "repo" / "lsdseg" / "1" / "model.onnx"))
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    noise = np.random.default_rng(1).standard_normal((3, 5, 4, 4, 4), dtype=np.float32)
    mean, std, hyp, score = session.run(None, {"image": x, "noise": noise})
    assert mean.shape == std.shape == (3, 32, 32) and hyp.shape == (3, 5, 32, 32)
    assert score.shape == (3,)


def test_metadata_strings_survive_the_text_format(graph, tmp_path):
    io = triton_repo.graph_io(graph)
    io = triton_repo.GraphIO(io.inputs, io.outputs, {"note": TRICKY})
    text = triton_repo.model_config(io, "onnxruntime_onnx", kind="cpu", max_queue_delay_us=500)
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.parameters["note"].string_value == TRICKY
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500


def test_tensorrt_plan_takes_its_io_from_the_onnx_graph(graph, tmp_path):
    plan = tmp_path / "lsdseg.engine"
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
    cfg = parse(model_dir)
    assert cfg.name == "lsdseg_trt" and cfg.platform == "tensorrt_plan"
    assert tuple(t.name for t in cfg.input) == INPUT_NAMES


def test_no_batching_keeps_full_shapes(graph, tmp_path):
    cfg = parse(triton_repo.write_triton_repo(tmp_path, graph, max_batch_size=0))
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
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="expected an ONNX graph"):
        triton_repo.write_triton_repo(tmp_path, tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError):
        triton_repo.write_triton_repo(tmp_path, tmp_path / "missing.onnx")


def test_external_weights_are_copied_beside_the_graph(graph, tmp_path):
    import onnx

    src = tmp_path / "src"
    src.mkdir()
    onnx.save(
        onnx.load(str(graph)),
        str(src / "big.onnx"),
        save_as_external_data=True,
        location="big.onnx.data",
        size_threshold=1024,  # small shape constants stay inline
    )
    moved = (src / "big.onnx.data").stat().st_size  # the weights now live outside the graph
    assert moved > 10_000 and (src / "big.onnx").stat().st_size < graph.stat().st_size - moved / 2
    model_dir = triton_repo.write_triton_repo(tmp_path / "repo", src / "big.onnx")
    assert (model_dir / "1" / "big.onnx.data").is_file()
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    x = np.zeros((1, 3, 32, 32), np.float32)
    noise = np.zeros((1, 2, 4, 4, 4), np.float32)
    assert session.run(["mean"], {"image": x, "noise": noise})[0].shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--onnx", "--trt"], "--triton-repo serves one model: give --onnx or --trt"),
        (["--trt", "--triton-max-batch", "8"], "above the engine's largest batch (4"),
        (["--trt", "--triton-kind", "cpu"], "a TensorRT engine runs on a GPU"),
        (["--trt", "--trtexec"], "--triton-repo with --trtexec needs the engine: add --run"),
        (["--triton-instances", "0"], "--triton-instances 0 must be >= 1"),
    ],
)
def test_export_triton_repo_option_errors(capsys, tmp_path, args, message):
    rc = main(["export", "--weights", "untrained", "--triton-repo", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert rc != 0 and message in err, err
    assert not (tmp_path / "r").exists()
