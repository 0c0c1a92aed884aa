"""Latency of one full Segmenter call per backend, K and steps (256x256, one frame).

The call a video pipeline makes per frame: preprocessing, the image encoder, ``steps`` denoiser
passes over K hypotheses, the mask decoder, aggregation and conversion to numpy. Every backend
that can run on this machine is timed (torch; onnx with onnxruntime; triton and trt with a
CUDA GPU); the others skip with the reason.

Run: ``make bench`` or ``pytest benchmarks/bench_segmenter.py --benchmark-only``.
"""

from __future__ import annotations

import pytest

from lsdseg.backends import names

HYPOTHESES = (1, 4, 8, 16)
STEPS = (1, 2, 4, 8)


@pytest.mark.parametrize("steps", STEPS, ids=lambda n: f"steps{n}")
@pytest.mark.parametrize("hypotheses", HYPOTHESES, ids=lambda k: f"K{k}")
@pytest.mark.parametrize("backend", names())
def test_segmenter(benchmark, segmenter_for, record, frame, backend, hypotheses, steps) -> None:
    seg, weights = segmenter_for(backend)
    result = benchmark(seg, frame, hypotheses=hypotheses, steps=steps, seed=0)
    assert result.hypotheses.shape == (hypotheses, *frame.shape[:2])
    record(
        benchmark,
        backend=backend,
        hypotheses=hypotheses,
        steps=steps,
        image_size=frame.shape[0],
        weights=weights,
    )
    if benchmark.stats is not None:
        benchmark.extra_info["fps"] = benchmark.extra_info["per_second"]
