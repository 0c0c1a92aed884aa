"""torch vs ONNX Runtime on the CPU: per-frame latency at K = 8, 4 DDIM steps, 256x256.

Two levels, each timed for both backends in the same run (same machine state, same threads:
the onnx backend uses as many intra-op threads as torch):

- ``segmenter``: one full :class:`~lsdseg.Segmenter` call on a 256x256 frame (preprocessing,
  the network, aggregation of the 8 maps, conversion to numpy), what a video pipeline pays;
- ``network``: only the network, the torch model's ``hypotheses`` against the exported graph's
  session, so the shared pre- and post-processing does not dilute the comparison.

The issue's target is onnxruntime at most 0.8x torch. Run:
``pytest benchmarks/bench_onnx.py --benchmark-only --benchmark-group-by=group``.
"""

from __future__ import annotations

import pytest
import torch

HYPOTHESES, STEPS = 8, 4


@pytest.fixture(scope="module")
def pair(segmenter_for, device):
    if device.type != "cpu":
        pytest.skip("this comparison is for the CPU (bench_segmenter.py times GPU backends)")
    torch_seg, weights = segmenter_for("torch")
    onnx_seg, _ = segmenter_for("onnx")
    onnx_seg.runner.session(STEPS)  # export (or find in the cache) outside the timer
    return {"torch": torch_seg, "onnx": onnx_seg}, weights


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_segmenter(benchmark, pair, record, frame, backend) -> None:
    segs, weights = pair
    seg = segs[backend]
    benchmark.group = f"segmenter K={HYPOTHESES} steps={STEPS} 256x256 CPU"
    result = benchmark(seg, frame, hypotheses=HYPOTHESES, steps=STEPS, seed=0)
    assert result.hypotheses.shape == (HYPOTHESES, *frame.shape[:2])
    record(benchmark, backend=backend, hypotheses=HYPOTHESES, steps=STEPS, weights=weights)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_network(benchmark, pair, record, backend) -> None:
    segs, weights = pair
    model = segs["torch"].model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 256, 256, generator=gen)
    noise = torch.randn(1, HYPOTHESES, *model.latent_shape, generator=gen)
    if backend == "torch":

        @torch.inference_mode()
        def run():
            return model.hypotheses(x, noise, STEPS)

    else:
        session = segs["onnx"].runner.session(STEPS)
        feeds = {"image": x.numpy(), "noise": noise.numpy()}

        def run():
            return session.run(["hypotheses"], feeds)[0]

    benchmark.group = f"network K={HYPOTHESES} steps={STEPS} 256x256 CPU"
    p = benchmark(run)
    assert tuple(p.shape) == (1, HYPOTHESES, 256, 256)
    record(benchmark, backend=backend, hypotheses=HYPOTHESES, steps=STEPS, weights=weights)
