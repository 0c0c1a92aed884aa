"""TensorRT: everything that runs without it here (profiles, sidecars, trtexec commands, the
not-installed path), and the engine build and the ``trt`` backend where TensorRT and a GPU are
present (these skip with the reason otherwise)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")

from lsdseg.export.trt import (  # noqa: E402
    EngineMismatch,
    Profile,
    build_engine,
    check_sidecar,
    make_sidecar,
    parse_range,
    read_sidecar,
    require_tensorrt,
    run_trtexec,
    sidecar_path,
    trtexec_build_info,
    trtexec_command,
    version3,
    write_sidecar,
)

ORIN = {"gpu": "Orin", "compute_capability": "8.7"}


def _metadata_graph(path: Path, size: int = 256, channels: int = 4, factor: int = 8) -> Path:
    """An ONNX file carrying lsdseg's metadata (all the trtexec and sidecar code reads)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, size, size])
    y = helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["B", 3, size, size])
    graph = helper.make_graph([helper.make_node("Relu", ["image"], ["mean"])], "g", [x], [y])
    model = helper.make_model(graph)
    helper.set_model_props(
        model,
        {
            "lsdseg_onnx_format": "1",
            "image_size": str(size),
            "latent_channels": str(channels),
            "latent_factor": str(factor),
            "steps": "4",
        },
    )
    onnx.save(model, str(path))
    return path


@pytest.fixture
def built(tmp_path) -> tuple[Path, Path]:
    """A stand-in engine with a sidecar as if built on a Jetson Orin with TensorRT 10.3."""
    graph = _metadata_graph(tmp_path / "g.onnx")
    engine = tmp_path / "g.engine"
    engine.write_bytes(b"serialized engine")
    write_sidecar(engine, make_sidecar(engine, graph, "fp16", Profile(), "10.3.0.26", ORIN))
    return graph, engine


def test_ranges_and_profiles():
    assert parse_range("1,8,16", "--hypotheses-range") == (1, 8, 16)
    assert parse_range(" 8 ", "--hypotheses-range") == (8, 8, 8)
    for bad in ("8,1,16", "0,1,2", "1,2", "a", "1,2,3,4"):
        with pytest.raises(ValueError, match="--batch-range"):
            parse_range(bad, "--batch-range")
    with pytest.raises(ValueError, match="hypotheses range 4,2,8"):
        Profile(hypotheses=(4, 2, 8))
    profile = Profile(batch=(1, 2, 4), hypotheses=(1, 8, 16))
    shapes = profile.shapes({"image_size": "256", "latent_channels": "4", "latent_factor": "8"})
    assert shapes == {
        "image": [(1, 3, 256, 256), (2, 3, 256, 256), (4, 3, 256, 256)],
        "noise": [(1, 1, 4, 32, 32), (2, 8, 4, 32, 32), (4, 16, 4, 32, 32)],
    }
    assert profile.admits(4, 16) and not profile.admits(5, 8) and not profile.admits(1, 17)
    assert version3("10.3.0.26") == "10.3.0" and version3("10.0.1") == "10.0.1"


def test_sidecar_records_the_build(built):
    _, engine = built
    sidecar = json.loads(sidecar_path(engine).read_text())
    assert sidecar_path(engine).name == "g.engine.json"
    assert sidecar["tensorrt"] == "10.3.0" and sidecar["gpu"] == "Orin"
    assert sidecar["compute_capability"] == "8.7" and sidecar["precision"] == "fp16"
    assert sidecar["onnx"] == "g.onnx" and len(sidecar["onnx_sha256"]) == 16
    assert sidecar["onnx_metadata"]["steps"] == "4"
    assert sidecar["profiles"] == [
        {
            "image": {"min": [1, 3, 256, 256], "opt": [1, 3, 256, 256], "max": [4, 3, 256, 256]},
            "noise": {
                "min": [1, 1, 4, 32, 32],
                "opt": [1, 8, 4, 32, 32],
                "max": [4, 16, 4, 32, 32],
            },
        }
    ]
    check_sidecar(read_sidecar(engine), engine, "10.3.0.30", ORIN)  # same release: accepted


@pytest.mark.parametrize(
    ("trt_version", "gpu", "expected"),
    [
        ("10.3.0", {"gpu": "NVIDIA H200", "compute_capability": "9.0"}, "GPU Orin"),
        ("10.3.0", {"gpu": "Orin", "compute_capability": "8.9"}, "compute capability 8.7"),
        ("10.7.0", ORIN, "TensorRT 10.3.0 (this machine has 10.7.0)"),
    ],
)
def test_an_engine_built_elsewhere_is_refused_with_a_rebuild_message(
    built, trt_version, gpu, expected
):
    _, engine = built
    with pytest.raises(EngineMismatch) as info:
        check_sidecar(read_sidecar(engine), engine, trt_version, gpu)
    message = str(info.value)
    assert (
        expected in message and "rebuild it on this machine with `lsdseg export --trt`" in message
    )


def test_a_replaced_engine_or_missing_sidecar_is_refused(built):
    _, engine = built
    engine.write_bytes(b"another engine")
    with pytest.raises(EngineMismatch, match=r"does not match its sidecar.*rebuild"):
        check_sidecar(read_sidecar(engine), engine, "10.3.0", ORIN)
    sidecar_path(engine).write_text("{broken")
    with pytest.raises(EngineMismatch, match=r"cannot be read.*rebuild"):
        read_sidecar(engine)
    sidecar_path(engine).unlink()
    with pytest.raises(EngineMismatch, match=r"has no sidecar g\.engine\.json; rebuild"):
        read_sidecar(engine)


def test_trtexec_command(tmp_path):
    graph = _metadata_graph(tmp_path / "g.onnx", size=128, channels=2, factor=4)
    command = trtexec_command(
        graph,
        tmp_path / "g.engine",
        half=False,
        workspace_gb=1.5,
        profile=Profile(batch=(1, 2, 3), hypotheses=(2, 4, 6)),
        timing_cache=tmp_path / "t.cache",
    )
    assert command == [
        "trtexec",
        f"--onnx={graph}",
        f"--saveEngine={tmp_path / 'g.engine'}",
        "--minShapes=image:1x3x128x128,noise:1x2x2x32x32",
        "--optShapes=image:2x3x128x128,noise:2x4x2x32x32",
        "--maxShapes=image:3x3x128x128,noise:3x6x2x32x32",
        "--memPoolSize=workspace:1536",
        "--skipInference",
        f"--timingCacheFile={tmp_path / 't.cache'}",
    ]
    assert command[-1] != "--fp16"
    assert trtexec_command(graph, tmp_path / "e")[-1] == "--fp16"


def test_trtexec_log_gives_version_and_gpu():
    log = (
        "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=x\n"
        "[11/25/2026-10:00:00] [I] Selected Device: NVIDIA GeForce RTX 4090\n"
        "[11/25/2026-10:00:00] [I] Compute Capability: 8.9\n"
    )
    assert trtexec_build_info(log) == (
        "10.3.0",
        {"gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"},
    )
    assert trtexec_build_info("no banner") == (None, None)


def test_run_trtexec_without_trtexec_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    graph = _metadata_graph(tmp_path / "g.onnx")
    engine = tmp_path / "g.engine"
    with pytest.raises(RuntimeError, match="trtexec is not on PATH"):
        run_trtexec(trtexec_command(graph, engine), engine, graph, "fp16", Profile())
    assert not engine.exists()


def test_missing_or_old_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(
        RuntimeError, match=r'^TensorRT is not installed: pip install "lsdseg\[trt\]"'
    ):
        require_tensorrt()
    with pytest.raises(RuntimeError, match="TensorRT is not installed"):
        build_engine(tmp_path / "g.onnx", tmp_path / "g.engine")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(RuntimeError, match=r"TensorRT 8.6.1 is too old"):
        require_tensorrt()


# ---------------------------------------------------------------- with TensorRT and a GPU


@pytest.fixture
def tensorrt():
    try:
        module = require_tensorrt()
    except RuntimeError as e:
        pytest.skip(str(e))
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    return module


def test_engine_build_and_trt_backend_match_torch(tensorrt, tmp_path, monkeypatch):
    import numpy as np
    from conftest import _tiny_config, _tiny_model

    import lsdseg
    from lsdseg.checkpoint import save_checkpoint
    from lsdseg.export.onnx import export_onnx

    monkeypatch.setenv("LSDSEG_CACHE", str(tmp_path / "cache"))
    ckpt = save_checkpoint(_tiny_model(_tiny_config(), head_std=0.3), tmp_path / "tiny")
    graph = export_onnx(ckpt, tmp_path / "tiny.onnx")
    engine = build_engine(graph, tmp_path / "tiny.engine", half=False, workspace_gb=1.0)
    sidecar = read_sidecar(engine)
    assert sidecar["tensorrt"] == version3(tensorrt.__version__)
    assert sidecar["gpu"] == torch.cuda.get_device_name(0)
    seg_trt = lsdseg.load(ckpt, device="cuda", backend="trt")
    seg_torch = lsdseg.load(ckpt, device="cuda")
    frames = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8) for i in range(2)]
    for k in (1, 8, 3, 8):  # shapes switch back and forth: graphs are replayed correctly
        a = seg_torch(frames, hypotheses=k, seed=k)
        b = seg_trt(frames, hypotheses=k, seed=k)
        for ra, rb in zip(a, b, strict=True):
            assert np.abs(ra.mean - rb.mean).max() < 2e-2  # the default trt engine is fp16
