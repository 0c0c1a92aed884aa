"""Latency of one full Segmenter call (K=8, 4 DDIM steps, 256x256) on this machine.

Run: ``make bench`` or ``pytest benchmarks/bench_segmenter.py --benchmark-only``. The default
architecture is timed with the bundled weights when present (weights do not change latency; an
untrained model of the same architecture is used otherwise, and ``extra_info`` says which).
"""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest
import torch

import lsdseg
from lsdseg.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def segmenter() -> tuple[lsdseg.Segmenter, str]:
    try:
        return lsdseg.load("default"), "default"
    except CheckpointError:
        return lsdseg.load("untrained"), "untrained (default architecture)"


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # already at S: no resize cost


@pytest.mark.parametrize("hypotheses,steps", [(8, 4), (8, 2), (8, 1), (1, 4)])
def test_segmenter_latency(benchmark, segmenter, frame, hypotheses: int, steps: int) -> None:
    seg, weights = segmenter
    result = benchmark(seg, frame, hypotheses=hypotheses, steps=steps, seed=0)
    assert result.hypotheses.shape == (hypotheses, 256, 256)
    if benchmark.stats is None:  # --benchmark-disable: a plain run, nothing timed
        return
    median_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "hypotheses": hypotheses,
            "steps": steps,
            "image_size": 256,
            "backend": seg.backend,
            "device": str(seg.device),
            "weights": weights,
            "fps": 1.0 / median_s,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        }
    )
