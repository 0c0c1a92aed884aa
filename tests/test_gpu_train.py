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


def _pairs(root: Path, n: int = 4) -> Path:
    import cv2
    import numpy as np

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        m = np.zeros((32, 32), np.uint8)
        cv2.circle(m, (16, 16), 6 + i, 255, -1)
        img = np.full((32, 32, 3), 60, np.uint8)
        img[m > 0] = (90, 90, 220)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), m)
    return root


def _export_setup(tmp_path, tiny, monkeypatch):
    """gpu_train, its bundle_weights, a run folder holding ``tiny`` as best/, an empty out/."""
    gpu_train = _module()
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import bundle_weights

    run = tmp_path / "run"
    shutil.copytree(tiny, run / "best")
    out = tmp_path / "out"
    out.mkdir()
    return gpu_train, bundle_weights, run, out


def test_weights_and_config_are_written_before_the_probe_runs(tmp_path, tiny, monkeypatch):
    """The slot can end the command during the probe: what came before must be on disk."""
    gpu_train, bundle_weights, run, out = _export_setup(tmp_path, tiny, monkeypatch)
    seen = []

    def killed_during_the_probe(seg, samples, steps, k):
        summary = json.loads((out / "summary.json").read_text())
        seen.append(summary["checkpoint_config"])
        assert sorted((out / "best").glob("model.[0-9][0-9].safetensors"))
        raise KeyboardInterrupt  # what a kill looks like from here

    monkeypatch.setattr(bundle_weights, "sweep", killed_during_the_probe)
    data = str(_pairs(tmp_path / "data"))
    with pytest.raises(KeyboardInterrupt):
        gpu_train.export(run, out, [1], [data], ["--val-fraction", "0.5"])
    assert seen and seen[0]["model"]["image_size"] == 32
    # and what came back joins into a checkpoint
    assert _run("--join", str(out), "--to", str(tmp_path / "back")).returncode == 0
    assert (tmp_path / "back" / "best" / "model.safetensors").is_file()


def test_probe_rows_are_recorded_one_by_one(tmp_path, tiny, monkeypatch):
    gpu_train, bundle_weights, run, out = _export_setup(tmp_path, tiny, monkeypatch)
    calls = []

    def sweep(seg, samples, steps, k):
        calls.append(steps)
        if len(calls) == 2:
            rows = json.loads((out / "summary.json").read_text())["probe"]["rows"]["best"]
            assert [r["steps"] for r in rows] == [1]
            raise KeyboardInterrupt
        return {"steps": steps, "hypotheses": k}

    monkeypatch.setattr(bundle_weights, "sweep", sweep)
    data = str(_pairs(tmp_path / "data"))
    with pytest.raises(KeyboardInterrupt):
        gpu_train.export(run, out, [1, 2], [data], ["--val-fraction", "0.5"])
    assert calls == [1, 2]


def test_the_split_options_are_read_as_lsdseg_train_reads_them():
    """gpu_train.py reads the validation split from the train arguments itself (scripts do not
    import lsdseg.cli); its defaults are the command's."""
    from lsdseg.cli.main import build_parser

    argv = ["--data", "a", "--data", "b", "--stage", "diffusion", "--seed", "3", "--epochs", "2"]
    gpu_train = _module()
    mine = gpu_train.split_options(argv)
    theirs = build_parser().parse_args(["train", *argv])
    for key in ("data", "val_data", "val_fraction", "seed"):
        assert getattr(mine, key) == getattr(theirs, key), key
    defaults = build_parser().parse_args(["train", "--data", "a"])
    expected = {"val_fraction": defaults.val_fraction, "seed": defaults.seed}
    assert expected == gpu_train.SPLIT_DEFAULTS


def test_scripts_import_no_cli():
    import ast

    for path in SCRIPT.parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.startswith("lsdseg.cli")], path.name
