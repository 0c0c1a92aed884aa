"""scripts/uncertainty_ablation.py and scripts/resolution_ablation.py on a tiny model and data
the test makes: every candidate and size is scored, the reference against itself is exactly 0,
and bad input is one error line and exit 2."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from conftest import load_script

LINE = re.compile(r"(\S+) (\d\.\d{4}) \(([+-]\d\.\d{4}) \[([+-]\d\.\d{4}), ([+-]\d\.\d{4})\]\)")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """Twenty 48 x 56 frames with an off-centre disc each; half of them are validation."""
    root = tmp_path_factory.mktemp("data") / "discs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        img = rng.integers(40, 80, (48, 56, 3), dtype=np.uint8)
        m = np.zeros((48, 56), np.uint8)
        cv2.circle(m, (20 + i, 24), 6 + i % 5, 255, -1)
        img[m > 0] = (90, 90, 220)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), m)
    return str(root)


def test_centred_puts_the_threshold_at_one_half() -> None:
    centred = load_script("scripts/uncertainty_ablation.py").centred
    out = centred(np.array([0.0, 0.3, 0.6, 0.8, 1.0]), 0.6)
    np.testing.assert_allclose(out, [0.0, 0.25, 0.5, 0.75, 1.0])


def test_uncertainty_ablation_scores_every_candidate(tiny, data, capsys) -> None:
    script = load_script("scripts/uncertainty_ablation.py")
    args = ["--weights", tiny, "--data", data, "--val-fraction", "0.5", "--seeds", "2"]
    assert script.main(args) == 0
    out = capsys.readouterr().out.splitlines()[1:]
    lines, frames = out[: len(script.CANDIDATES)], out[len(script.CANDIDATES) :]
    for name, line in zip(script.CANDIDATES, lines, strict=True):
        assert line.startswith(name)
        dataset, auroc, _, lo, hi = LINE.search(line).groups()
        assert dataset == "discs" and 0 <= float(auroc) <= 1 and float(lo) <= float(hi)
    assert LINE.search(lines[0]).groups()[2:] == ("+0.0000", "+0.0000", "+0.0000")
    assert (
        len(frames) == 1
        and frames[0].startswith("discs: ")
        and "mutual information at S" in frames[0]
    )


def test_resolution_ablation_pairs_each_size_with_the_first(tiny, data, capsys) -> None:
    script = load_script("scripts/resolution_ablation.py")
    args = ["--weights", tiny, "--sizes", "32,64", "--data", data, "--val-fraction", "0.5"]
    assert script.main([*args, "--seeds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == ["S = 32", "S = 64"]
    assert "(+0.0000 [+0.0000, +0.0000])" in lines[0]
    assert LINE.search(lines[1]) is not None


@pytest.mark.parametrize(
    ("name", "args", "expect"),
    [
        ("resolution", ["--sizes", "32,40"], "image_size=40"),
        ("resolution", ["--sizes", "32,big"], "big"),
        ("uncertainty", ["--weights", "nowhere"], "nowhere"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny, data, capsys, name, args, expect) -> None:
    script = load_script(f"scripts/{name}_ablation.py")
    base = {"--weights": tiny, "--data": data}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    assert script.main([x for kv in base.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{name}_ablation: error:")
    assert expect in err
