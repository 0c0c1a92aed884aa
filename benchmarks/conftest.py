"""Fixtures shared by the benchmark suites.

Benchmarks measure this machine as it is: torch uses every core it sees, the bundled default
weights are timed (an untrained model of the same architecture when they are missing; weights do
not change latency), and every backend that can run here is timed; the others skip with the
reason. CUDA work is synchronised inside the timed functions.

Run them with ``make bench`` (all suites) or ``make bench-check`` (compare with the saved
baseline of this machine class, see ``benchmarks/check.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

import lsdseg
from lsdseg.card import cpu_name
from lsdseg.checkpoint import CheckpointError
from lsdseg.cli.bench_cmd import backend_problem

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IMAGE_SIZE = 256


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "device": str(DEVICE),
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if DEVICE.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _record(benchmark, items: int = 1, **config: object) -> None:
    benchmark.extra_info.update(config)
    benchmark.extra_info.update(machine_info())
    if benchmark.stats is not None:  # None under --benchmark-disable: nothing was timed
        benchmark.extra_info["per_second"] = items / benchmark.stats.stats.median
        benchmark.extra_info["median_ms"] = benchmark.stats.stats.median * 1000


def _load(backend: str) -> tuple[lsdseg.Segmenter, str]:
    try:
        return lsdseg.load("default", device=DEVICE, backend=backend), "default"
    except CheckpointError:
        seg = lsdseg.load("untrained", device=DEVICE, backend=backend)
        return seg, "untrained (default architecture)"


@pytest.fixture(scope="session")
def segmenter_for() -> Callable[[str], tuple[lsdseg.Segmenter, str]]:
    """``segmenter_for(backend)`` -> (Segmenter, which weights); skips if it cannot run here."""
    cache: dict[str, tuple[lsdseg.Segmenter, str] | str] = {}

    def get(backend: str) -> tuple[lsdseg.Segmenter, str]:
        if backend not in cache:
            why = backend_problem(backend, DEVICE)
            if why is None:
                try:
                    cache[backend] = _load(backend)
                except (ImportError, RuntimeError, ValueError) as e:
                    why = str(e)
            if why is not None:
                cache[backend] = why
        entry = cache[backend]
        if isinstance(entry, str):
            pytest.skip(f"backend {backend} cannot run here: {entry}")
        return entry

    return get


@pytest.fixture(scope="session")
def model() -> lsdseg.LatentSegmenter:
    """The default-architecture network on DEVICE (bundled weights when present)."""
    return _load("torch")[0].model


@pytest.fixture(scope="session")
def frame() -> np.ndarray:
    """One frame already at the model's input size (no resize cost)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return DEVICE


@pytest.fixture(scope="session")
def sync() -> Callable[[], None]:
    """``sync()`` waits for queued CUDA work, so a timer around it measures the work."""
    return _sync


@pytest.fixture(scope="session")
def record() -> Callable[..., None]:
    """``record(benchmark, items=1, **config)``: the configuration, the machine and the rate
    (``items`` per call, per second of the median) into the benchmark's extra_info."""
    return _record
