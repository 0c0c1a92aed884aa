"""Every backend gives the same frame-level decision: torch, triton, onnx (the exported graph),
trt (its runner hands the engine's score through), the server model and its client."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lsdseg.segmenter import Segmenter


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(4)]


def _midway(model) -> tuple[Segmenter, list[float]]:
    """The torch segmenter with its presence threshold set between the frames' scores, so
    that two frames are judged polyp frames and two are not."""
    seg = Segmenter(model, "cpu")
    scores = sorted(seg(f, seed=1).score for f in _frames())
    cut = (scores[1] + scores[2]) / 2
    cfg = model.cfg
    model.cfg = dataclasses.replace(
        cfg, sampler=dataclasses.replace(cfg.sampler, presence_threshold=cut)
    )
    return seg, scores


def _decisions(seg: Segmenter) -> list[tuple[float, bool]]:
    return [(r.score, r.present) for r in (seg(f, seed=1) for f in _frames())]


def test_onnx_graph_gives_the_torch_decision(tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from lsdseg.checkpoint import load_checkpoint

    monkeypatch.setenv("LSDSEG_CACHE", str(tmp_path / "cache"))
    model = load_checkpoint(tiny)
    torch_seg, _ = _midway(model)
    onnx_seg = Segmenter(model, "cpu", backend="onnx", checkpoint=tiny)
    want, got = _decisions(torch_seg), _decisions(onnx_seg)
    assert [p for _, p in want] == [p for _, p in got]
    assert sorted(p for _, p in want) == [False, False, True, True]  # the test decides both ways
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in want], atol=1e-5)


def test_triton_kernels_give_the_torch_decision(make_model):
    pytest.importorskip("triton")
    pytest.importorskip("lsdseg.kernels")
    model = make_model()
    torch_seg, _ = _midway(model)
    triton_seg = Segmenter(model, "cpu", backend="triton")
    want, got = _decisions(torch_seg), _decisions(triton_seg)
    assert [p for _, p in want] == [p for _, p in got]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in want], atol=1e-5)


def test_the_server_model_and_its_client_give_the_local_decision(tiny):
    from lsdseg.checkpoint import load_checkpoint
    from lsdseg.cli.remote import RemoteSegmenter
    from lsdseg.cli.server import SegmentModel

    model = load_checkpoint(tiny)
    local, _ = _midway(model)
    server = SegmentModel(local)

    class Request:
        def __init__(self, frame: np.ndarray) -> None:
            self.data = {"frame": frame[None]}
            self.parameters = {"seed": 1}
            self.requested_output_names = None

    frames = _frames()
    answers = server([Request(f[..., ::-1].copy()) for f in frames])  # the server takes BGR
    for frame, answer in zip(frames, answers, strict=True):
        want = local(frame, seed=1, order="rgb")
        got = RemoteSegmenter._result(answer, None, 1, 0.0)  # what the client makes of it
        assert got.present == want.present
        assert got.score == pytest.approx(want.score, abs=1e-5)
        assert got.threshold == want.threshold
        np.testing.assert_array_equal(got.mask, want.mask)


def test_the_trt_runner_hands_the_engines_score_through(monkeypatch):
    from lsdseg.export import trt_runtime

    class Engine:
        def __call__(self, x, noise):
            return torch.zeros(noise.shape[0], noise.shape[1], 4, 4), torch.tensor([0.25])

    from lsdseg.export.trt_spec import Profile

    runner = trt_runtime.TrtRunner.__new__(trt_runtime.TrtRunner)  # no TensorRT here
    runner.device, runner.profile = torch.device("cpu"), Profile()
    monkeypatch.setattr(runner, "engine", lambda steps: Engine(), raising=False)
    _, latents, score = runner(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 1, 1, 1), 1, 0.0, None)
    assert latents is None and score.tolist() == [0.25]
