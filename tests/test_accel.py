"""Tests for lsdseg.accel: whole-frame CUDA graphs and half precision, checked on a CPU.

The capture is injected: :class:`EagerCapture` stands in for a CUDA graph (its replay reruns
the captured frame into the same output tensors, which hold NaN until the first replay, as a
real capture's do), and :class:`FakeCuda` stands in for ``torch.cuda`` where the real capture
function is tested. So the cache, the copies in and out and the refusals are tested without a
GPU; what only a GPU can show (the speed, Triton inside a capture) is scripts/gpu_checks.py's.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from lsdseg import accel
from lsdseg.accel import GraphRunner, capture_cuda_graph, check_supported
from lsdseg.model import LatentSegmenter
from lsdseg.runners import TorchRunner
from lsdseg.segmenter import Result, Segmenter

H, W = 41, 29


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _same(a: Result, b: Result) -> None:
    for name in ("mask", "mean", "std", "entropy", "mutual_info", "hypotheses"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.agreement == b.agreement and a.unsure == b.unsure and a.seed == b.seed


class EagerCapture:
    """Stand-in for :func:`capture_cuda_graph`: records each capture; replay reruns the frame."""

    def __init__(self) -> None:
        self.devices: list[torch.device] = []
        self.replays = 0

    def __call__(self, fn, device):
        outputs = fn()  # a real capture allocates the outputs and computes nothing
        for t in outputs:
            t.fill_(math.nan)
        self.devices.append(device)
        capture = self

        class Graph:
            def replay(self) -> None:
                capture.replays += 1
                for static, fresh in zip(outputs, fn(), strict=True):
                    static.copy_(fresh)

        return Graph(), outputs


def _graphed(model: LatentSegmenter, max_graphs: int = 32) -> tuple[Segmenter, EagerCapture]:
    """A CPU Segmenter whose runner is a GraphRunner with the stand-in capture."""
    seg = Segmenter(model)
    capture = EagerCapture()
    seg.runner = GraphRunner(seg.runner, capture, max_graphs)
    return seg, capture


# ---------------------------------------------------------------- the option off


def test_with_the_options_off_results_are_the_models_own_bit_for_bit(tiny_model) -> None:
    seg = Segmenter(tiny_model, cuda_graph=False, precision="fp32")
    assert type(seg.runner) is TorchRunner and seg.runner.precision == "fp32"
    frame = _frame(0)
    r = seg(frame, hypotheses=3, steps=2, seed=5)
    x = seg.preprocess([frame], "bgr")
    noise = torch.randn(
        (1, 3, *tiny_model.latent_shape), generator=torch.Generator().manual_seed(5)
    )
    with torch.inference_mode():
        p, z0, score = tiny_model.run(x, noise, 2)
    s = seg.config.sampler
    expected = Segmenter.postprocess(
        p[0], (H, W), s.threshold, 5, score=float(score[0]), presence_threshold=s.presence_threshold
    )
    _same(r, expected)
    assert torch.equal(r.latents, z0[0])


def test_fp32_is_no_autocast_context_at_all() -> None:
    assert isinstance(accel.autocast("fp32"), contextlib.nullcontext)


def test_half_precision_is_cuda_autocast_to_its_type() -> None:
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        fp16, bf16 = accel.autocast("fp16"), accel.autocast("bf16")
    assert isinstance(fp16, torch.autocast) and fp16.device == "cuda"
    assert fp16.fast_dtype == torch.float16 and bf16.fast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision='fp64' must be one of fp32, fp16, bf16"):
        accel.autocast("fp64")


def test_the_torch_runner_runs_under_its_precision(tiny_model, monkeypatch) -> None:
    entered: list[str] = []

    @contextlib.contextmanager
    def recording(precision):
        entered.append(precision)
        yield

    monkeypatch.setattr("lsdseg.runners.autocast", recording)
    x = torch.zeros(1, 3, tiny_model.cfg.image_size, tiny_model.cfg.image_size)
    noise = torch.zeros(1, 2, *tiny_model.latent_shape)
    TorchRunner(tiny_model, precision="bf16")(x, noise, 1, 0.0, None)
    TorchRunner(tiny_model)(x, noise, 1, 0.0, None)
    assert entered == ["bf16", "fp32"]


# ---------------------------------------------------------------- the graph runner


def test_graph_replays_give_the_eager_results_frame_after_frame(tiny_model) -> None:
    eager = Segmenter(tiny_model)
    seg, capture = _graphed(tiny_model)
    for i in range(3):  # different frames and seeds through one graph: the inputs are copied in
        frame = _frame(i)
        _same(
            seg(frame, hypotheses=3, steps=2, seed=i), eager(frame, hypotheses=3, steps=2, seed=i)
        )
    assert len(capture.devices) == 1 and capture.replays == 3
    assert capture.devices == [torch.device("cpu")]


def test_each_call_gets_copies_not_the_static_outputs(tiny_model) -> None:
    runner = GraphRunner(TorchRunner(tiny_model), EagerCapture())
    s = tiny_model.cfg.image_size
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 1, 3, s, s, generator=gen)
    noise = torch.randn(1, 2, *tiny_model.latent_shape, generator=gen)
    p1, z1, s1 = runner(x1, noise, 2, 0.0, None)
    expected = TorchRunner(tiny_model)(x1, noise, 2, 0.0, None)
    runner(x2, noise, 2, 0.0, None)  # the same graph, other inputs
    for got, want in zip((p1, z1, s1), expected, strict=True):
        assert torch.equal(got, want)
    frame = runner.graphs[runner.key(x1, noise, 2, None)]
    assert p1.data_ptr() != frame.p.data_ptr() and z1.data_ptr() != frame.z0.data_ptr()
    assert s1.data_ptr() != frame.score.data_ptr()


def test_a_graph_per_batch_k_steps_start_and_size(tiny_model) -> None:
    seg, capture = _graphed(tiny_model)
    frame = _frame(0)
    seg(frame, hypotheses=3, steps=2, seed=0)
    seg(frame, hypotheses=3, steps=2, seed=1)  # same key: replayed
    assert len(capture.devices) == 1
    seg(frame, hypotheses=2, steps=2, seed=0)  # K
    seg(frame, hypotheses=3, steps=1, seed=0)  # steps
    seg([frame, frame], hypotheses=3, steps=2, seed=0)  # B
    prev = seg(frame, hypotheses=3, steps=2, seed=0)
    seg(frame, hypotheses=3, steps=2, seed=0, warm_start=prev, warm_timestep=400)  # start
    assert len(capture.devices) == 5
    s = seg.image_size
    seg.image_size = 2 * s  # the input size is the segmenter's, not the checkpoint's
    seg(frame, hypotheses=3, steps=2, seed=0)  # size
    assert set(seg.runner.graphs) == set(
        [
            (1, 3, 2, None, (s, s), torch.float32, "torch"),
            (1, 2, 2, None, (s, s), torch.float32, "torch"),
            (1, 3, 1, None, (s, s), torch.float32, "torch"),
            (2, 3, 2, None, (s, s), torch.float32, "torch"),
            (1, 3, 2, 400, (s, s), torch.float32, "torch"),
            (1, 3, 2, None, (2 * s, 2 * s), torch.float32, "torch"),
        ]
    )


def test_the_key_names_the_precision_and_the_ops_backend(tiny_model) -> None:
    runner = GraphRunner(TorchRunner(tiny_model, "triton", "triton", "bf16"), EagerCapture())
    x, noise = torch.zeros(2, 3, 16, 24), torch.zeros(2, 5, 2, 2, 3)
    assert runner.key(x, noise, 4, 499) == (2, 5, 4, 499, (16, 24), torch.bfloat16, "triton")
    assert runner.name == "triton"


def test_warm_starts_through_the_graph_equal_the_eager_ones(tiny_model) -> None:
    eager = Segmenter(tiny_model)
    seg, _ = _graphed(tiny_model)
    a, b = _frame(1), _frame(2)
    prev_g, prev_e = seg(a, hypotheses=3, seed=3), eager(a, hypotheses=3, seed=3)
    _same(prev_g, prev_e)
    r_g = seg(b, hypotheses=3, seed=4, warm_start=prev_g, warm_timestep=499)
    r_e = eager(b, hypotheses=3, seed=4, warm_start=prev_e, warm_timestep=499)
    _same(r_g, r_e)
    assert torch.equal(r_g.latents, r_e.latents)


def test_least_recently_used_graphs_are_dropped_beyond_max_graphs(tiny_model) -> None:
    seg, capture = _graphed(tiny_model, max_graphs=2)
    frame = _frame(0)
    for k in (1, 2, 1, 3):  # K=1 is used again before K=3 arrives, so K=2 goes
        seg(frame, hypotheses=k, steps=1, seed=0)
    assert [key[1] for key in seg.runner.graphs] == [1, 3]
    assert len(capture.devices) == 3 == seg.runner.captures
    seg(frame, hypotheses=2, steps=1, seed=0)  # captured again
    assert seg.runner.captures == 4 and [key[1] for key in seg.runner.graphs] == [3, 2]
    with pytest.raises(ValueError, match="max_graphs=0 must be >= 1"):
        GraphRunner(seg.runner.inner, EagerCapture(), 0)


def test_eta_above_zero_is_refused_with_the_fix(tiny_model) -> None:
    seg, capture = _graphed(tiny_model)
    with pytest.raises(ValueError) as e:
        seg(_frame(0), eta=0.5, seed=0)
    text = str(e.value)
    assert "cuda_graph=True needs eta=0 (deterministic DDIM), got 0.5" in text
    assert "set eta to 0, or drop cuda_graph=True" in text and "\n" not in text
    assert not capture.devices  # refused before anything was captured


# ---------------------------------------------------------------- refusals and wiring


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"cuda_graph": True},
            RuntimeError,
            "cuda_graph=True needs a CUDA device, not cpu: run on an NVIDIA GPU (device cuda), "
            "or drop cuda_graph=True",
        ),
        ({"precision": "fp16"}, RuntimeError, "precision='fp16' needs a CUDA device, not cpu"),
        ({"precision": "bf16"}, RuntimeError, "or drop precision='bf16'"),
        ({"precision": "int8"}, ValueError, "precision='int8' must be one of fp32, fp16, bf16"),
        (
            {"backend": "onnx", "cuda_graph": True},
            ValueError,
            "cuda_graph=True is for the torch and triton backends, not onnx",
        ),
        ({"backend": "trt", "cuda_graph": True}, ValueError, "replays CUDA graphs of its own"),
        (
            {"backend": "onnx", "precision": "fp16"},
            ValueError,
            "an FP16 one: lsdseg export --onnx --half",
        ),
    ],
)
def test_what_cannot_run_is_refused_in_one_line(tiny_model, kwargs, error, message) -> None:
    with pytest.raises(error) as e:
        Segmenter(tiny_model, "cpu", **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_refusals_come_before_an_export_backend_exports(tiny_model, monkeypatch) -> None:
    def no_runner(*args):
        raise AssertionError("the runner was made before the refusal")

    monkeypatch.setattr("lsdseg.runners.build_runner", no_runner)
    with pytest.raises(ValueError, match="not onnx"):
        Segmenter(tiny_model, "cpu", "onnx", cuda_graph=True)


def test_the_cli_spells_the_options_its_way() -> None:
    cpu = torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"^--cuda-graph needs a CUDA device, not cpu: .* or "
                       r"drop --cuda-graph$"):  # fmt: skip
        check_supported(cpu, "torch", True, "fp32", "--cuda-graph", "--half")
    with pytest.raises(RuntimeError, match="--precision bf16 needs a CUDA device"):
        check_supported(cpu, "triton", False, "bf16", "--cuda-graph", "--precision bf16")
    check_supported(torch.device("cuda"), "triton", True, "bf16")  # nothing to refuse
    check_supported(cpu, "onnx", False, "fp32")


def test_a_segmenter_on_cuda_wraps_its_runner(tiny_model, monkeypatch) -> None:
    monkeypatch.setattr("lsdseg.segmenter.check_supported", lambda *args: None)
    seg = Segmenter(tiny_model, "cpu", "torch", cuda_graph=True, precision="fp16")
    assert isinstance(seg.runner, GraphRunner) and seg.runner.capture is capture_cuda_graph
    assert seg.runner.inner == TorchRunner(tiny_model, "torch", "torch", "fp16")
    assert (seg.cuda_graph, seg.precision, seg.backend) == (True, "fp16", "torch")
    plain = Segmenter(tiny_model, "cpu", "torch", precision="bf16")
    assert plain.runner == TorchRunner(tiny_model, "torch", "torch", "bf16")


# ---------------------------------------------------------------- the real capture function


class FakeCuda:
    """``torch.cuda`` as far as capture_cuda_graph uses it; every event is recorded."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.current = "caller"
        self.capturing = False
        fake = self

        class Stream:
            def __init__(self, device=None) -> None:
                self.name = "side"

            def wait_stream(self, other) -> None:
                fake.events.append(("wait", self.name, getattr(other, "name", other)))

        class Caller(Stream):
            def __init__(self) -> None:
                self.name = "caller"

        class CUDAGraph:
            def replay(self) -> None:
                fake.events.append(("replay", fake.current, fake.device_now))

        self.Stream, self.CUDAGraph, self._caller = Stream, CUDAGraph, Caller()
        self.device_now = None

    def current_stream(self, device=None):
        return self._caller

    @contextlib.contextmanager
    def stream(self, stream):
        previous, self.current = self.current, stream.name
        yield
        self.current = previous

    @contextlib.contextmanager
    def graph(self, graph, stream=None, capture_error_mode="global"):
        previous, self.current, self.capturing = self.current, stream.name, True
        self.events.append(("capture", stream.name, capture_error_mode))
        yield
        self.current, self.capturing = previous, False

    @contextlib.contextmanager
    def device(self, device):
        previous, self.device_now = self.device_now, device
        yield
        self.device_now = previous


def test_capture_warms_up_on_a_side_stream_then_captures_there() -> None:
    cuda = FakeCuda()
    out = (torch.zeros(1), torch.zeros(1))

    def frame():
        cuda.events.append(("frame", cuda.current, cuda.capturing))
        return out

    graph, outputs = capture_cuda_graph(frame, torch.device("cuda:1"), warmup=2, cuda=cuda)
    assert outputs is out
    assert cuda.events == [
        ("wait", "side", "caller"),  # the static inputs, written on the caller's stream
        ("frame", "side", False),  # warm-up: Triton compiles, lazy inits
        ("frame", "side", False),
        ("capture", "side", "thread_local"),
        ("frame", "side", True),  # captured once
        ("wait", "caller", "side"),
    ]
    graph.replay()
    assert cuda.events[-1] == ("replay", "caller", torch.device("cuda:1"))
