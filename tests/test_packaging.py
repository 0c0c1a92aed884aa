"""Building lsdseg prints no setuptools warning and the wheel holds every package and the
bundled checkpoint (a fresh `make demo` shows nothing but lsdseg's own lines)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_builds_without_warnings_and_holds_the_weights(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--quiet", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # pip's own notes about this machine's index configuration are not the project's
    lines = [ln for ln in proc.stderr.splitlines() if "Location 'file:" not in ln]
    assert not [ln for ln in lines if "Warning" in ln or "deprecated" in ln], "\n".join(lines)
    (wheel,) = tmp_path.glob("lsdseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("model.safetensors", "config.json", "card.md"):
        assert f"lsdseg/weights/default/{name}" in names
    for module in ("lsdseg/cli/main.py", "lsdseg/export/onnx.py", "lsdseg/kernels/attention.py"):
        assert module in names
    assert not [n for n in names if n.startswith(("cli/", "export/", "kernels/"))]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(meta).decode()
