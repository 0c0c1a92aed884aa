"""The ``trt`` backend's engine runner against stand-ins for TensorRT and ``torch.cuda``
(tests/fake_tensorrt.py): one dedicated stream, one context and one CUDA graph per (B, K)."""

from __future__ import annotations

import sys

import pytest
import torch
from fake_tensorrt import FakeCuda, FakeTensorRT

pytest.importorskip("onnx")

from lsdseg.export import trt_runtime


@pytest.fixture
def fakes(monkeypatch):
    module, cuda = FakeTensorRT(), FakeCuda()
    module.cuda = cuda
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    for name in ("Stream", "stream", "current_stream", "graph", "CUDAGraph", "device"):
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
    return module, cuda


def _engine(tmp_path, fakes) -> trt_runtime.Engine:
    module, _ = fakes
    path = tmp_path / "x.engine"
    path.write_bytes(b"serialized")
    engine = trt_runtime.Engine(path, torch.device("cpu"))  # buffers on the CPU stand-in
    module.engines[-1].owner = engine
    return engine


def _inputs(b: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=gen), torch.randn(b, k, 2, 4, 4, generator=gen)


def _expected(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    value = x.mean(dim=(1, 2, 3))[:, None] + noise.mean(dim=(2, 3, 4))
    return value[:, :, None, None].expand(*noise.shape[:2], 16, 16)


def test_each_shape_has_its_own_context_and_graph_and_switching_only_replays(tmp_path, fakes):
    module, cuda = fakes
    engine = _engine(tmp_path, fakes)
    shapes = [(1, 8), (2, 3), (1, 8), (2, 3), (1, 1), (1, 8)]
    for i, (b, k) in enumerate(shapes):
        x, noise = _inputs(b, k, seed=i)
        got, score = engine(x, noise)
        assert got.dtype == torch.float32 and got.shape == (b, k, 16, 16)
        torch.testing.assert_close(got, _expected(x, noise))
        torch.testing.assert_close(score, x.mean(dim=(1, 2, 3)))  # the stand-in's score
    contexts = module.engines[0].contexts
    assert len(contexts) == 3  # one per distinct (B, K)
    assert [c.set_shape_calls for c in contexts] == [2, 2, 2]  # image and noise, once each
    # each context ran for real once (before its capture); every later call was a replay
    assert [len(c.runs) for c in contexts] == [1 + 2, 1 + 1, 1]
    assert cuda.replays == 3


def test_every_enqueue_capture_and_replay_is_on_the_engines_own_stream(tmp_path, fakes):
    module, cuda = fakes
    engine = _engine(tmp_path, fakes)
    assert engine.stream.cuda_stream != 0  # not the legacy default stream
    for i in range(3):
        engine(*_inputs(1, 4, seed=i))
    (context,) = module.engines[0].contexts
    assert set(context.runs) == {engine.stream.cuda_stream}
    # ordered after the caller's copies in, and the caller waits before reading the outputs
    assert cuda.default in engine.stream.waited_for
    assert engine.stream in cuda.default.waited_for
    assert cuda.current is cuda.default  # the caller's stream is current again


def test_results_are_copies_not_the_reused_buffer(tmp_path, fakes):
    engine = _engine(tmp_path, fakes)
    first, score = engine(*_inputs(1, 2, seed=0))
    kept, kept_score = first.clone(), score.clone()
    engine(*_inputs(1, 2, seed=1))
    assert torch.equal(first, kept) and torch.equal(score, kept_score)


def test_a_context_tensorrt_cannot_create_is_an_error_with_the_shape(tmp_path, fakes):
    module, _ = fakes
    engine = _engine(tmp_path, fakes)
    module.engines[0].create_execution_context = lambda: None
    with pytest.raises(RuntimeError, match=r"batch 2 x hypotheses 5.*out of GPU memory"):
        engine(*_inputs(2, 5, seed=0))


def test_the_runner_builds_fp16_engines_from_the_fp16_graph(tmp_path, fakes, tiny, monkeypatch):
    from lsdseg.checkpoint import load_checkpoint
    from lsdseg.export.onnx import read_metadata

    monkeypatch.setenv("LSDSEG_CACHE", str(tmp_path / "cache"))
    h200 = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
    monkeypatch.setattr(trt_runtime, "gpu_info", lambda device=0: dict(h200))
    built = []

    def build_engine(onnx_path, engine_path, **kwargs):
        built.append((onnx_path, read_metadata(onnx_path)["precision"], kwargs))
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(b"engine")
        return engine_path

    monkeypatch.setattr(trt_runtime, "build_engine", build_engine)
    monkeypatch.setattr(trt_runtime, "read_sidecar", lambda path: {})
    monkeypatch.setattr(trt_runtime, "check_sidecar", lambda *args: None)
    monkeypatch.setattr(trt_runtime, "Engine", lambda path, device: path)
    model = load_checkpoint(tiny)
    # export while `tensorrt` is the real (missing) module: torch.export looks it up
    module = sys.modules.pop("tensorrt")
    graph = trt_runtime.cached_onnx(model, None, 1, "fp16")
    sys.modules["tensorrt"] = module
    runner = trt_runtime.TrtRunner(model, None, torch.device("cuda"))
    ((onnx_path, precision, kwargs),) = built
    assert onnx_path == graph and precision == "fp16" and kwargs["half"] is True
    assert runner.engine_path(1).name.endswith("-trt10.13.0-nvidia-h200.engine")
