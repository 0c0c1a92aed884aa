"""End to end: frames per second of ``lsdseg segment`` on the bundled demo clip.

Decoding, preprocessing, the model at its bundled defaults (K = 8), the uncertainty overlay,
encoding the output video and writing the per-frame records all count: this is the number a
user of ``make demo`` sees. The command runs in-process (no interpreter start-up in the time).

Run: ``pytest benchmarks/bench_video.py --benchmark-only``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsdseg.cli.main import main

CLIP = Path(__file__).resolve().parents[1] / "assets" / "demo" / "cvc_seq5.mp4"


@pytest.mark.parametrize("overlay", ["uncertainty"])
def test_segment_demo_clip(benchmark, record, tmp_path, device, overlay) -> None:
    if not CLIP.is_file():
        pytest.skip(f"the demo clip {CLIP} is missing")
    argv = [
        "segment",
        str(CLIP),
        "--hypotheses",
        "8",
        "--overlay",
        overlay,
        "--device",
        str(device),
        "--project",
        str(tmp_path),
        "--name",
        "bench",
        "--exist-ok",
    ]
    status = benchmark.pedantic(main, args=(argv,), rounds=3, iterations=1, warmup_rounds=1)
    assert status == 0
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    frames = int(summary["frames"])
    assert frames > 0
    record(benchmark, items=frames, clip=CLIP.name, frames=frames, hypotheses=8, overlay=overlay)
    if benchmark.stats is not None:
        benchmark.extra_info["fps"] = benchmark.extra_info["per_second"]
