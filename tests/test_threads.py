"""lsdseg sets passive waiting for torch's OpenMP threads and ONNX Runtime's before torch is
imported, and the user's own environment wins (lsdseg/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lsdseg.threads import DEFAULTS, apply_defaults, ort_spinning

# what OMP_WAIT_POLICY says at the moment torch is first imported, in a fresh interpreter
SPY = """
import os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Spy())
import lsdseg.cli.main, lsdseg.segmenter
print(seen.get("torch", "torch not imported"))
"""


def _policy_at_torch_import(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", *env)}
    out = subprocess.run(
        [sys.executable, "-c", SPY], env={**clean, **env}, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.slow
def test_torch_starts_with_passive_waiting_unless_the_user_says_otherwise():
    assert _policy_at_torch_import() == "PASSIVE"
    assert _policy_at_torch_import(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_defaults_fill_only_what_the_environment_leaves_unset():
    env: dict[str, str] = {}
    assert apply_defaults(env) == DEFAULTS == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == DEFAULTS
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert apply_defaults(mine) == {} and mine == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_onnx_runtime_spins_only_when_asked():
    assert ort_spinning({}) == "0"
    assert ort_spinning({"OMP_WAIT_POLICY": "PASSIVE"}) == "0"
    assert ort_spinning({"OMP_WAIT_POLICY": "active"}) == "1"
    assert ort_spinning({"OMP_WAIT_POLICY": "PASSIVE", "LSDSEG_ORT_SPINNING": "1"}) == "1"
    assert ort_spinning({"OMP_WAIT_POLICY": "ACTIVE", "LSDSEG_ORT_SPINNING": "0"}) == "0"
    with pytest.raises(ValueError, match="LSDSEG_ORT_SPINNING='yes' must be 0 or 1"):
        ort_spinning({"LSDSEG_ORT_SPINNING": "yes"})
