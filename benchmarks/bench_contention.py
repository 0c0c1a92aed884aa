"""Per-frame slowdown of lsdseg on a shared CPU: alone, then beside a busy program.

A video tool never has the CPU to itself. Each measurement runs in a fresh interpreter (the
OpenMP wait policy is read when torch starts, see ``lsdseg/threads.py``) that loads the bundled
weights, warms up and times ``LSDSEG_BENCH_FRAMES`` frames (default 15) at the defaults; the
median per-frame time is compared:

- ``loop``: beside one program that keeps a core busy (``while True: pass``);
- ``lsdseg``: beside a second lsdseg process doing the same (both timed, the slower counts).

``extra_info`` holds ``alone_ms``, ``shared_ms`` and ``slowdown`` (shared / alone); the target
beside the busy loop is at most ``TARGET`` (1.6x). The timed call is the shared run. The
environment the worker gets is this process's, so ``OMP_WAIT_POLICY=ACTIVE pytest ...`` shows
what spinning threads cost.

Run: ``pytest benchmarks/bench_contention.py --benchmark-only -s`` on an otherwise idle machine
(anything else running is one more contender); ``LSDSEG_BENCH_FRAMES=2`` for a quick check that
it runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

TARGET = 1.6  # the slowest per-frame time beside one busy core, as a multiple of alone's
FRAMES = int(os.environ.get("LSDSEG_BENCH_FRAMES", "15"))

WORKER = """
import json, statistics, sys, time
import numpy as np
import lsdseg
backend, frames = sys.argv[1], int(sys.argv[2])
try:
    seg = lsdseg.load("default", device="cpu", backend=backend)
except lsdseg.CheckpointError:  # weights do not change latency
    seg = lsdseg.load("untrained", device="cpu", backend=backend)
frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
for _ in range(2):
    seg(frame, seed=0)
print("ready", flush=True)
sys.stdin.readline()  # go: every contender has loaded and warmed up
times = []
for _ in range(frames):
    t0 = time.perf_counter()
    seg(frame, seed=0)
    times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"ms": statistics.median(times)}), flush=True)
"""


def _start(backend: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, backend, str(FRAMES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _finish(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return float(json.loads(out.strip().splitlines()[-1])["ms"])


def _run(backend: str, contender: str | None) -> list[float]:
    """Median per-frame ms of each timed worker, with ``contender`` running beside it."""
    workers = [_start(backend)] + ([_start(backend)] if contender == "lsdseg" else [])
    busy = None
    if contender == "loop":
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # it is spinning before the clock starts
    try:
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        return [_finish(w) for w in workers]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


@pytest.mark.parametrize("contender", ["loop", "lsdseg"])
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_slowdown_on_a_shared_cpu(benchmark, record, backend, contender) -> None:
    if backend == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip('ONNX Runtime is not installed: pip install "lsdseg[onnx]"')
    alone = _run(backend, None)[0]
    shared = benchmark.pedantic(_run, args=(backend, contender), rounds=1, iterations=1)
    slowdown = max(shared) / alone
    record(
        benchmark,
        backend=backend,
        contender=contender,
        frames=FRAMES,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "PASSIVE (lsdseg's default)"),
        alone_ms=round(alone, 2),
        shared_ms=[round(s, 2) for s in shared],
        slowdown=round(slowdown, 3),
        target=TARGET if contender == "loop" else None,
    )
    print(
        f"\n{backend}, beside {contender}: {alone:.1f} ms alone, "
        f"{', '.join(f'{s:.1f}' for s in shared)} ms shared: {slowdown:.2f}x"
    )
