"""torch vs ONNX Runtime on the CPU: per-frame latency at K = 8, 4 DDIM steps, 256x256.

Two levels, each timed for both backends in the same run (same machine state, same threads:
the onnx backend uses as many intra-op threads as torch):

- ``segmenter``: one full :class:`~lsdseg.Segmenter` call on a 256x256 frame (preprocessing,
  the network, aggregation of the 8 maps, conversion to numpy), what a video pipeline pays;
- ``network``: only the network, the torch model's ``hypotheses`` against the exported graph's
  session, so the shared pre- and post-processing does not dilute the comparison.

Each level is timed twice: as two ordinary benchmarks (one per backend, one after the other),
and interleaved (``test_interleaved``: torch and onnx calls alternate, so a background load that
comes and goes hits both alike; the medians and their ratio go to ``extra_info`` and are
printed with ``-s``). The issue's target is onnxruntime at most 0.8x torch. Run:
``pytest benchmarks/bench_onnx.py --benchmark-only --benchmark-group-by=group -s``.
"""

from __future__ import annotations

import statistics
import time

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


def _network_call(segs, backend):
    """The network alone for ``backend``: a function of no arguments."""
    model = segs["torch"].model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 256, 256, generator=gen)
    noise = torch.randn(1, HYPOTHESES, *model.latent_shape, generator=gen)
    if backend == "torch":
        return torch.inference_mode()(lambda: model.hypotheses(x, noise, STEPS))
    session = segs["onnx"].runner.session(STEPS)
    feeds = {"image": x.numpy(), "noise": noise.numpy()}
    return lambda: session.run(["hypotheses"], feeds)[0]


@pytest.mark.parametrize("level", ["segmenter", "network"])
def test_interleaved(benchmark, pair, record, frame, level) -> None:
    segs, weights = pair
    if level == "segmenter":
        calls = {
            name: (lambda seg=seg: seg(frame, hypotheses=HYPOTHESES, steps=STEPS, seed=0))
            for name, seg in segs.items()
        }
    else:
        calls = {name: _network_call(segs, name) for name in segs}
    times: dict[str, list[float]] = {name: [] for name in calls}

    def both():
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)

    warmup = 2
    benchmark.group = f"interleaved torch + onnx, K={HYPOTHESES} steps={STEPS} 256x256 CPU"
    benchmark.pedantic(both, rounds=15, warmup_rounds=warmup)
    median = {name: statistics.median(t[warmup:]) * 1000 for name, t in times.items()}
    ratio = median["onnx"] / median["torch"]
    record(benchmark, level=level, hypotheses=HYPOTHESES, steps=STEPS, weights=weights)
    benchmark.extra_info.update(
        torch_median_ms=median["torch"], onnx_median_ms=median["onnx"], onnx_over_torch=ratio
    )
    print(
        f"\n{level}, interleaved, {torch.get_num_threads()} threads: "
        f"torch {median['torch']:.1f} ms, onnx {median['onnx']:.1f} ms, onnx/torch {ratio:.2f}"
    )
