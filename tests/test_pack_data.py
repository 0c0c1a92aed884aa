"""scripts/pack_data.py: a downsized copy with the original's training/validation split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from lsdseg.data import load_pairs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pack_data.py"


def make_sequences(root: Path, n: int = 12, shape: tuple[int, int] = (90, 120)) -> Path:
    """CVC-style folder: PNG frames and masks, four frames per sequence in sequences.csv."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["file,sequence"]
    for i in range(n):
        img = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
        mask = np.zeros(shape, np.uint8)
        cv2.circle(mask, (60, 45), 10 + i, 255, -1)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask)
        rows.append(f"{i}.png,{i // 4 + 1}")
    (root / "sequences.csv").write_text("\n".join(rows) + "\n")
    return root


def _pack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


def test_copy_is_smaller_binary_and_splits_like_the_original(tmp_path):
    src = make_sequences(tmp_path / "src" / "clinic")
    r = _pack(str(src), "--out", str(tmp_path / "packed"), "--short-side", "30", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "split is the original's" in r.stdout
    dst = tmp_path / "packed" / "clinic"
    images = sorted((dst / "images").glob("*.jpg"))
    assert len(images) == 12 and (dst / "sequences.csv").is_file()
    assert cv2.imread(str(images[0])).shape == (30, 40, 3)  # short side 30, aspect kept
    mask = cv2.imread(str(dst / "masks" / "5.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(mask)) <= {0, 255} and mask.shape == (30, 40)

    def split(root: Path) -> tuple[list[str], list[str]]:
        train, val = load_pairs([str(root)], None, 0.3, 3)
        return [Path(p.image).stem for p in train], [Path(p.image).stem for p in val]

    assert split(src) == split(dst) and split(dst)[1]  # whole sequences held out


def test_same_folder_names_and_missing_folders_are_refused(tmp_path):
    a = make_sequences(tmp_path / "a" / "data", n=4)
    b = make_sequences(tmp_path / "b" / "data", n=4)
    r = _pack(str(a), str(b), "--out", str(tmp_path / "packed"))
    assert r.returncode != 0
    assert "names must differ" in r.stderr and "Traceback" not in r.stderr
    r = _pack(str(tmp_path / "missing"), "--out", str(tmp_path / "packed"))
    assert r.returncode != 0
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
