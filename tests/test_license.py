"""The LICENSE file is the licence pyproject.toml declares."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the opening lines of each licence's standard text, by SPDX identifier
TITLES = {"Apache-2.0": ("Apache License", "Version 2.0, January 2004")}


def test_license_file_matches_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib needs Python 3.11
    declared = re.search(r'^license\s*=\s*(?:\{\s*text\s*=\s*)?"([^"]+)"', pyproject, re.M)
    assert declared, "pyproject.toml declares no license"
    spdx = declared.group(1)
    assert spdx in TITLES, f"no standard text known for {spdx!r}"
    text = (ROOT / "LICENSE").read_text()
    head = [line.strip() for line in text.splitlines() if line.strip()][:2]
    assert tuple(head) == TITLES[spdx]
    assert "END OF TERMS AND CONDITIONS" in text and "Copyright 2026 lsdseg authors" in text
