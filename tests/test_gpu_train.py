"""scripts/gpu_train.py: weights cut to the GPU slot's 16 MiB per file, and joined back here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script, model_outputs

from lsdseg.checkpoint import load_checkpoint, save_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train.py"
BUNDLED = Path(__file__).resolve().parents[1] / "lsdseg" / "weights" / "default"


def _module():
    return load_script("scripts/gpu_train.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


def _results(tmp_path: Path, model, max_bytes: int) -> Path:
    """A folder laid out as a slot's results: summary.json and best/ in pieces."""
    gpu_train = _module()
    results = tmp_path / "results"
    save_checkpoint(model, results / "best", "", dtype=torch.float16)
    config = json.loads((results / "best" / "config.json").read_text())
    for f in ("config.json", "card.md"):
        (results / "best" / f).unlink()
    gpu_train.split_weights(results / "best", max_bytes)
    (results / "summary.json").write_text(json.dumps({"checkpoint_config": config}))
    return results


def test_pieces_join_into_the_same_checkpoint(tmp_path, tiny_model):
    max_bytes = 2**20 + 16_000  # 16 kB of tensors per piece: the tiny model needs several
    results = _results(tmp_path, tiny_model, max_bytes)
    pieces = sorted((results / "best").iterdir())
    assert len(pieces) > 2 and all(p.stat().st_size < max_bytes for p in pieces)
    assert not (results / "best" / "model.safetensors").exists()

    done = _run("--join", str(results), "--to", str(tmp_path / "back"))
    assert done.returncode == 0, done.stderr
    joined = load_checkpoint(tmp_path / "back" / "best")
    expected = load_checkpoint(save_checkpoint(tiny_model, tmp_path / "fp16", dtype=torch.float16))
    for a, b in zip(model_outputs(joined), model_outputs(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (tmp_path / "back" / "summary.json").is_file()


def test_the_bundled_weights_fit_the_slot_in_two_pieces(tmp_path):
    if not (BUNDLED / "model.safetensors").is_file():
        pytest.skip("no bundled weights in this checkout")
    gpu_train = _module()
    folder = tmp_path / "best"
    folder.mkdir()
    shutil.copyfile(BUNDLED / "model.safetensors", folder / "model.safetensors")
    pieces = gpu_train.split_weights(folder)
    # 2 checkpoints x 2 pieces + summary.json, train.log, progress.png: 7 of the slot's 8 files
    assert len(pieces) <= 2
    assert all(p.stat().st_size < gpu_train.MAX_FILE_BYTES for p in pieces)


def test_a_missing_piece_is_one_line_and_exit_2(tmp_path, tiny_model):
    results = _results(tmp_path, tiny_model, 2**20 + 16_000)
    sorted((results / "best").iterdir())[-1].unlink()
    done = _run("--join", str(results), "--to", str(tmp_path / "back"))
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "back" / "best").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--join", "{tmp}"],  # no --to
        ["--join", "{tmp}", "--to", "{tmp}/back"],  # no summary.json
        ["--minutes", "1"],  # neither --data nor --join
    ],
)
def test_bad_invocations_say_what_to_do(tmp_path, args):
    done = _run(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--to" in done.stderr or "summary.json" in done.stderr or "--data" in done.stderr
