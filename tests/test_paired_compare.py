"""scripts/paired_compare.py: the paired bootstrap that decides whether new weights are better."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_compare.py"


def _module():
    return load_script("scripts/paired_compare.py")  # it imports bundle_weights beside it


def test_bootstrap_interval_contains_zero_for_noise_and_not_for_a_shift() -> None:
    bootstrap = _module().bootstrap
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.05, 90)
    lo, hi = bootstrap(noise - noise.mean())
    assert lo < 0 < hi
    lo, hi = bootstrap(noise - noise.mean() + 0.03)
    assert 0 < lo < 0.03 < hi


def test_a_checkpoint_against_itself_differs_by_exactly_zero(tiny, tmp_path: Path) -> None:
    from test_train import make_dataset

    data = make_dataset(tmp_path / "kvasir", n=20)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), tiny, tiny, "--data", str(data), "--seeds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "difference +0.0000, 95% interval [+0.0000, +0.0000]" in out.stdout, out.stdout
