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
        "--stronglyTyped",
        "--minShapes=image:1x3x128x128,noise:1x2x2x32x32",
        "--optShapes=image:2x3x128x128,noise:2x4x2x32x32",
        "--maxShapes=image:3x3x128x128,noise:3x6x2x32x32",
        "--memPoolSize=workspace:1536",
        "--skipInference",
        f"--timingCacheFile={tmp_path / 't.cache'}",
    ]
    assert "--fp16" not in command  # deprecated in TensorRT 10.12, removed in 11


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
        run_trtexec(trtexec_command(graph, engine, half=False), engine, graph, "fp32", Profile())
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


# ------------------------------------------- the build against a stand-in tensorrt module

H200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory, tiny) -> Path:
    from lsdseg.export.onnx import export_onnx

    return export_onnx(tiny, tmp_path_factory.mktemp("graphs") / "tiny-s1-32px-fp32.onnx")


@pytest.fixture
def fake_trt(monkeypatch):
    from fake_tensorrt import FakeTensorRT

    import lsdseg.export.trt as trt_module

    module = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_module, "gpu_info", lambda device=0: dict(H200))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    return module


def _graph_copy(fp32_graph: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / fp32_graph.name
    copy.write_bytes(fp32_graph.read_bytes())
    return copy


def test_fp16_engines_are_strongly_typed_networks_of_the_fp16_graph(fake_trt, fp32_graph, tmp_path):
    from lsdseg.export.onnx import read_metadata

    graph = _graph_copy(fp32_graph, tmp_path / "g")
    engine = build_engine(graph, tmp_path / "e.engine", half=True)
    (network,) = fake_trt.networks
    assert network.flags == 1 << 1  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (= 1)
    assert network.parsed == tmp_path / "g" / "tiny-s1-32px-fp16.onnx"
    assert read_metadata(network.parsed)["precision"] == "fp16"
    assert fake_trt.configs[0].flags == []  # no BuilderFlag.FP16: the graph's types decide
    sidecar = read_sidecar(engine)
    assert sidecar["precision"] == "fp16" and sidecar["onnx"] == "tiny-s1-32px-fp16.onnx"


def test_fp32_engines_read_the_fp32_graph_and_fp16_graphs_need_half(fake_trt, fp32_graph, tmp_path):
    from lsdseg.export.onnx import convert_fp16

    graph = _graph_copy(fp32_graph, tmp_path / "g")
    build_engine(graph, tmp_path / "e.engine", half=False)
    assert fake_trt.networks[0].parsed == graph and fake_trt.networks[0].flags == 2
    assert read_sidecar(tmp_path / "e.engine")["precision"] == "fp32"
    half = convert_fp16(graph, tmp_path / "half.onnx")
    with pytest.raises(ValueError, match=r"is an FP16 graph.*pass half=True"):
        build_engine(half, tmp_path / "f.engine", half=False)
    build_engine(half, tmp_path / "f.engine", half=True)  # used as it is, not converted again
    assert fake_trt.networks[-1].parsed == half


def test_tensorrt_11_without_the_flag_builds_strongly_typed_by_default(
    fake_trt, fp32_graph, tmp_path, monkeypatch
):
    from fake_tensorrt import FakeTensorRT

    eleven = FakeTensorRT("11.0.0.1", strongly_typed_flag=False)
    monkeypatch.setitem(sys.modules, "tensorrt", eleven)
    build_engine(_graph_copy(fp32_graph, tmp_path / "g"), tmp_path / "e.engine")
    assert eleven.networks[0].flags == 0 and eleven.configs[0].flags == []


def test_the_timing_cache_is_keyed_by_tensorrt_and_gpu_and_reused(fake_trt, fp32_graph, tmp_path):
    from fake_tensorrt import VALID_CACHE

    graph = _graph_copy(fp32_graph, tmp_path / "g")
    given = tmp_path / "cache" / "timing.cache"
    keyed = tmp_path / "cache" / "timing-trt10.13.0-nvidia-h200.cache"
    build_engine(graph, tmp_path / "a.engine", timing_cache=given)
    assert not given.exists() and keyed.read_bytes() == VALID_CACHE
    build_engine(graph, tmp_path / "b.engine", timing_cache=given)
    assert fake_trt.cache_blobs == [b"", VALID_CACHE]  # the second build read the first's
    assert fake_trt.set_cache_answers == [True, True]


def test_a_refused_timing_cache_is_replaced_and_a_refused_empty_one_fails(
    fake_trt, fp32_graph, tmp_path, caplog
):
    from fake_tensorrt import VALID_CACHE

    graph = _graph_copy(fp32_graph, tmp_path / "g")
    keyed = tmp_path / "timing-trt10.13.0-nvidia-h200.cache"
    keyed.write_bytes(b"a damaged cache")
    with caplog.at_level("WARNING", logger="lsdseg.export.trt"):
        build_engine(graph, tmp_path / "a.engine", timing_cache=tmp_path / "timing.cache")
    assert fake_trt.set_cache_answers == [False, True]
    assert "refused the timing cache" in caplog.text
    assert keyed.read_bytes() == VALID_CACHE
    fake_trt.refuse_every_cache = True
    with pytest.raises(RuntimeError, match="could not attach a timing cache"):
        build_engine(graph, tmp_path / "b.engine", timing_cache=tmp_path / "timing.cache")
    assert not (tmp_path / "b.engine").exists()


def test_trtexec_builds_fp16_strongly_typed_from_the_fp16_graph(fp32_graph, tmp_path):
    from lsdseg.export.onnx import read_metadata

    graph = _graph_copy(fp32_graph, tmp_path / "g")
    command = trtexec_command(graph, tmp_path / "e.engine", half=True)
    fp16 = tmp_path / "g" / "tiny-s1-32px-fp16.onnx"
    assert command[1] == f"--onnx={fp16}" and read_metadata(fp16)["precision"] == "fp16"
    assert "--stronglyTyped" in command and "--fp16" not in command
    with pytest.raises(ValueError, match="is an FP16 graph"):
        trtexec_command(fp16, tmp_path / "e.engine", half=False)


def test_the_trt_extra_stays_below_tensorrt_11():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    trt = [r for r in extras["optional-dependencies"]["trt"] if r.startswith("tensorrt")]
    assert trt == ["tensorrt>=10,<11"]
