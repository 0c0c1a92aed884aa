"""Training: a real (tiny) run resumes exactly after SIGKILL, and DDP matches one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lsdseg.config import ModelConfig, from_dict

TINY = {
    "image_size": 64,
    "image_ae": {
        "channels": [8, 16, 16],
        "context_channels": [16],
        "latent_channels": 4,
        "groups": 4,
    },
    "mask_vae": {"encoder_channels": [8, 8, 8], "decoder_channels": [8, 8], "groups": 4},
    "unet": {
        "channels": [8, 16],
        "attention_levels": [1],
        "head_dim": 8,
        "groups": 4,
        "time_embed_dim": 16,
    },
}


def make_dataset(root: Path, n: int = 12, size: int = 64) -> Path:
    """Kvasir-style folder of synthetic frames with a bright disc and its mask."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(40, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        c = tuple(int(v) for v in rng.integers(16, size - 16, 2))
        cv2.circle(mask, c, int(rng.integers(6, 14)), 255, -1)
        img[mask > 0] = (200, 120, 140)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "toy", n=40)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    from_dict(ModelConfig, TINY)  # valid
    path.write_text(json.dumps(TINY))
    return path


def _cmd(data: Path, cfg: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lsdseg.cli.main",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model-config",
        str(cfg),
        "--imgsz",
        "64",
        "--device",
        "cpu",
        "--ae-epochs",
        "2",
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--val-fraction",
        "0.25",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def ref(data, tiny_config, tmp_path_factory) -> Path:
    """A tiny run that was never interrupted."""
    out = tmp_path_factory.mktemp("runs") / "ref"
    subprocess.run(_cmd(data, tiny_config, out), check=True, env=_env(), capture_output=True)
    return out


def _assert_same_run(ref: Path, run: Path) -> None:
    """The same metrics rows (phase, epoch, step) and the same final weights."""
    rows = [r.split(",")[:3] for r in (ref / "metrics.csv").read_text().strip().splitlines()]
    got = [r.split(",")[:3] for r in (run / "metrics.csv").read_text().strip().splitlines()]
    assert got == rows
    a, b = _weights(ref / "last"), _weights(run / "last")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_sigkill_then_rerun_resumes_to_the_same_weights(data, tiny_config, ref, tmp_path):
    rows = (ref / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 + 4  # header, 2 autoencoder epochs, 4 diffusion epochs

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(data, tiny_config, run),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, written = time.time() + 120, 0
    while time.time() < deadline:  # kill in the middle of the diffusion stage
        csv = run / "metrics.csv"
        written = len(csv.read_text().strip().splitlines()) if csv.exists() else 0
        if written >= 1 + 2 + 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # optimiser, EMA and RNG state only matter when the kill lands inside a phase
    assert 1 + 2 + 1 <= written < len(rows), f"kill missed the diffusion stage ({written} rows)"
    assert not list(run.glob(".last.*")) or (run / "last" / "model.safetensors").exists()
    done = subprocess.run(_cmd(data, tiny_config, run), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(ref, run)
    assert (run / "best" / "card.md").exists() and (run / "progress.png").exists()


# the run killed as it renames a finished checkpoint into last/ for the 4th time (diffusion
# epoch 2): last/ has just been moved aside, the new one is complete but not in place yet
_KILL_INTO_LAST = """
import os, signal, sys
from pathlib import Path
from lsdseg.cli.main import main
calls, rename = 0, Path.rename
def kill_into_last(self, to):
    global calls
    if Path(to).name == "last":
        calls += 1
        if calls == 4:
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, to)
Path.rename = kill_into_last
sys.argv[0] = "lsdseg"
sys.exit(main())
"""


def test_a_kill_between_the_renames_of_a_save_resumes_from_the_newest(
    data, tiny_config, ref, tmp_path
):
    run = tmp_path / "between"
    cmd = [sys.executable, "-c", _KILL_INTO_LAST, *_cmd(data, tiny_config, run)[3:]]
    killed = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "last").exists()  # the kill hit while last/ was renamed aside
    done = subprocess.run(_cmd(data, tiny_config, run), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    err = " ".join(done.stderr.split())
    assert "recovered the checkpoint" in err and "resuming from epoch 2 of stage 2" in err, err
    _assert_same_run(ref, run)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]


_HOLD_LOCK = """
import sys, time
from lsdseg.cli.runs import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_training_on_a_busy_run_folder_is_refused_naming_the_holder(
    capsys, data, tiny_config, tmp_path
):
    run = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, err = _main(capsys, _cmd(data, tiny_config, run))
        assert rc == 1 and f"PID {holder.pid}" in err and "--out" in err, err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the second run
    finally:
        holder.kill()
        holder.wait()
    rc, err = _main(capsys, [*_cmd(data, tiny_config, run), "--epochs", "1", "--ae-epochs", "1"])
    assert rc == 0, err  # the holder's end frees the lock: a stale .lock blocks nothing


def test_time_limit_stops_after_one_epoch_and_rerunning_finishes_the_same_run(
    data, tiny_config, ref, tmp_path
):
    run = tmp_path / "slots"
    cmd = [*_cmd(data, tiny_config, run), "--time-limit", "0.00001"]
    for epochs_done in (1, 2, 3):  # autoencoder 1, autoencoder 2 (the phase ends), diffusion 1
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "re-run the same command to continue" in " ".join(r.stderr.split())
        assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + epochs_done
    done = subprocess.run(_cmd(data, tiny_config, run), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "done: best validation Dice" in " ".join(done.stderr.split())
    _assert_same_run(ref, run)


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    _train_tiny(Path(data), Path(out))
    torch.distributed.destroy_process_group()


def _train_tiny(data: Path, out: Path) -> None:
    from lsdseg.augment import AugmentConfig
    from lsdseg.config import TrainConfig
    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.train import train

    _, pairs = find_pairs(data)
    cfg = TrainConfig(ae_epochs=1, epochs=1, batch_size=4, max_steps_per_epoch=2, warmup_steps=1)
    train(
        from_dict(ModelConfig, TINY),
        cfg,
        SegmentationDataset(pairs, 64, AugmentConfig()),
        None,
        out,
        "cpu",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(data, tmp_path):
    torch.manual_seed(0)
    _train_tiny(data, tmp_path / "single")
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), str(data), str(tmp_path / "ddp")), nprocs=2
    )
    a, b = _weights(tmp_path / "single" / "last"), _weights(tmp_path / "ddp" / "last")
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # Adam divides by sqrt(v): where a gradient is ~0, the rounding difference between an
    # all-reduced sum and a single-process sum can flip an update of size lr. Measured: 0.15%
    # of weights differ by more than 1e-5 with a correct all-reduce, 69% without one.
    assert (diff > 1e-5).float().mean() < 0.01
    assert diff.max() < 2 * 1e-3 * 4  # at most a few lr-sized steps anywhere
    init = _weights_of_init()
    changed = sum(not torch.equal(a[k], init[k]) for k in a)
    assert changed > len(a) // 2  # the run really trained


def _weights_of_init() -> dict[str, torch.Tensor]:
    from lsdseg.model import LatentSegmenter

    torch.manual_seed(0)
    return LatentSegmenter(from_dict(ModelConfig, TINY)).state_dict()


def test_stage_one_from_decoder_less_weights_is_refused_and_stage_two_trains(data, tmp_path):
    from lsdseg.augment import AugmentConfig
    from lsdseg.checkpoint import save_checkpoint, without_image_decoder
    from lsdseg.config import TrainConfig
    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.model import LatentSegmenter
    from lsdseg.train import train

    init = save_checkpoint(
        without_image_decoder(LatentSegmenter(from_dict(ModelConfig, TINY))), tmp_path / "init"
    )
    _, pairs = find_pairs(data)
    dataset = SegmentationDataset(pairs, 64, AugmentConfig())
    cfg = TrainConfig(epochs=1, batch_size=4, max_steps_per_epoch=2, warmup_steps=1, init=str(init))
    model_cfg = from_dict(ModelConfig, TINY)
    with pytest.raises(ValueError, match=r"has no image decoder.*use stage='diffusion'"):
        train(model_cfg, cfg, dataset, None, tmp_path / "all", "cpu")
    assert not (tmp_path / "all" / "last").exists()
    loop = train(model_cfg, replace(cfg, stage="diffusion"), dataset, None, tmp_path / "ft", "cpu")
    assert loop.phase == "done"
    trained = _weights(tmp_path / "ft" / "last")
    assert not any(k.startswith("image_ae.decoder.") for k in trained)
    before = _weights(init)
    assert any(not torch.equal(trained[k], before[k]) for k in trained if k.startswith("unet."))
    # last/ holds the live weights; the EMA that best/ was saved from is in its training state
    from lsdseg.trainstate import ema_weights

    ema = ema_weights(tmp_path / "ft" / "last")
    assert ema.keys() == trained.keys()
    best = _weights(tmp_path / "ft" / "best")  # one epoch: best/ is the final EMA
    assert all(torch.equal(ema[k], best[k]) for k in best)
    assert any(not torch.equal(ema[k], trained[k]) for k in trained)
    with pytest.raises(FileNotFoundError, match="no training state"):
        ema_weights(init)


def test_datasets_at_another_size_than_the_model_are_refused(data, tmp_path):
    from lsdseg.checkpoint import save_checkpoint
    from lsdseg.config import TrainConfig
    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.model import LatentSegmenter
    from lsdseg.train import train

    init = save_checkpoint(LatentSegmenter(from_dict(ModelConfig, TINY)), tmp_path / "init")
    _, pairs = find_pairs(data)
    cfg = TrainConfig(stage="diffusion", epochs=1, batch_size=4, init=str(init))
    model_cfg = from_dict(ModelConfig, TINY)  # 64 px, as the checkpoint
    with pytest.raises(ValueError, match=r"resized to 32 px but the model trains at 64"):
        train(model_cfg, cfg, SegmentationDataset(pairs, 32), None, tmp_path / "run", "cpu")
    assert not (tmp_path / "run" / "last").exists()


def _main(capsys, argv: list[str]) -> tuple[int, str]:
    from lsdseg.cli.main import main

    saved, sys.argv = sys.argv, ["lsdseg", *argv[3:]]  # command.txt records sys.argv
    try:
        code = main(argv[3:])  # without "python -m lsdseg.cli.main"
    finally:
        sys.argv = saved
    return code, " ".join(capsys.readouterr().err.split())


def _metadata(run: Path) -> tuple[str, str]:
    return (run / "config.json").read_text(), (run / "command.txt").read_text()


def test_a_run_records_its_split(ref, data):
    split = json.loads((ref / "splits.json").read_text())
    assert split["seed"] == 0 and split["val_fraction"] == 0.25
    assert split["datasets"]["toy"]["root"] == str(data.resolve())
    images = sorted(e["image"] for e in split["train"] + split["val"])
    assert images == sorted(f"toy/images/{p.name}" for p in (data / "images").iterdir())
    assert len(split["val"]) == 10  # a quarter of the 40, one image a group
    assert {e["group"] for e in split["train"]}.isdisjoint(e["group"] for e in split["val"])


def test_a_resume_with_other_settings_is_refused_naming_each(
    capsys, data, tiny_config, ref, tmp_path
):
    import shutil

    run = shutil.copytree(ref, tmp_path / "done")
    before = _metadata(run)
    cmd = _cmd(data, tiny_config, run)
    code, err = _main(capsys, [*cmd, "--epochs", "8"])  # argparse: the last --epochs wins
    assert code == 1 and "--epochs 8 (the run has 4): pass --extend" in err, err
    other = make_dataset(tmp_path / "other", n=12)
    code, err = _main(capsys, [*cmd[:5], str(other), *cmd[6:]])
    assert code == 1 and f"--data ['{other}'] (the run has ['{data}'])" in err, err
    code, err = _main(capsys, [*cmd, "--batch-size", "2", "--lr", "0.01", "--epochs", "8"])
    assert code == 1 and "--batch-size 2 (the run has 4)" in err and "--lr 0.01" in err, err
    assert "--epochs 8" in err and err.count("error") == 1
    code, err = _main(capsys, [*cmd, "--extend", "--epochs", "3"])
    assert code == 1 and "more epochs than the run's, not fewer" in err, err
    code, err = _main(capsys, [*cmd, "--extend", "--ae-epochs", "3"])
    assert code == 1 and "that stage is over" in err, err
    code, err = _main(capsys, cmd)  # the same command: done, nothing trained
    assert code == 0 and "is done: nothing to train" in err, err
    assert _metadata(run) == before  # no refused or empty resume rewrites the run's files
    assert not (run / "resumes.txt").exists()


def test_extend_trains_a_finished_run_for_more_epochs(capsys, data, tiny_config, ref, tmp_path):
    import shutil

    run = shutil.copytree(ref, tmp_path / "longer")
    state = json.loads((ref / "last" / "trainer.json").read_text())
    assert state["optimizer_phase"] == "diffusion"  # kept for an extension, not dropped
    code, err = _main(capsys, [*_cmd(data, tiny_config, run), "--extend", "--epochs", "6"])
    assert code == 0, err
    assert f"resuming from epoch 4 of stage 2 (diffusion) in {run}/last" in err
    rows = [r.split(",")[:3] for r in (run / "metrics.csv").read_text().strip().splitlines()]
    old = [r.split(",")[:3] for r in (ref / "metrics.csv").read_text().strip().splitlines()]
    assert rows[: len(old)] == old and [r[:2] for r in rows[len(old) :]] == [
        ["diffusion", "5"],
        ["diffusion", "6"],
    ]
    steps = int(old[-1][2])
    assert int(rows[-1][2]) == steps + 2 * (steps // 4)  # the step count goes on
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 6
    assert (run / "command.txt").read_text() == (ref / "command.txt").read_text()
    assert "--extend --epochs 6" in (run / "resumes.txt").read_text()


def test_an_interrupted_run_says_where_it_resumes(capsys, data, tiny_config, tmp_path):
    run = tmp_path / "slot"
    cmd = _cmd(data, tiny_config, run)
    code, err = _main(capsys, [*cmd, "--time-limit", "0.00001"])
    assert code == 0 and "resuming" not in err, err
    code, err = _main(capsys, [*cmd, "--lr", "0.01"])
    assert code == 1 and "--lr 0.01 (the run has 0.0005)" in err, err
    code, err = _main(capsys, [*cmd, "--time-limit", "0.00001", "--workers", "0"])
    assert code == 0 and f"resuming from epoch 1 of stage 1 (autoencoders) in {run}/last" in err


def test_a_run_without_validation_images_says_so_and_best_is_the_last_epoch(
    capsys, tiny_config, tmp_path
):
    data = make_dataset(tmp_path / "one", n=1)
    run = tmp_path / "run"
    cmd = _cmd(data, tiny_config, run)
    cmd[cmd.index("--ae-epochs") + 1], cmd[cmd.index("--epochs") + 1] = "1", "2"
    cmd[cmd.index("--batch-size") + 1] = "1"
    code, err = _main(capsys, cmd)
    assert code == 0, err
    assert "validation: 0 pairs" in err and "-1.0000" not in err, err
    assert (
        "done: no validation images (the validation split is empty): best/ is the last epoch; "
        f"checkpoints in {run}/best and {run}/last"
    ) in err
    best = json.loads((run / "best" / "config.json").read_text())["extra"]["loop"]
    assert (best["phase"], best["epoch"]) == ("done", 0)  # saved after the last epoch
    last = json.loads((run / "last" / "config.json").read_text())["extra"]["loop"]
    assert best == last  # written together, after the last epoch (not after the first)
    card = (run / "best" / "card.md").read_text()
    assert "-1.0000" not in card and "no validation images" in card


def test_latent_scale_is_estimated_without_a_graph_or_a_warning():
    """A from-scratch run once leaked torch's "Converting a tensor with requires_grad=True to
    a scalar" UserWarning here; the statistic needs no autograd graph."""
    import warnings

    from lsdseg.model import LatentSegmenter
    from lsdseg.train import estimate_latent_scale

    model = LatentSegmenter(from_dict(ModelConfig, TINY))
    rng = np.random.default_rng(0)
    masks = [rng.random((64, 64)) > 0.7 for _ in range(3)]

    class Masks:  # what estimate_latent_scale reads of a SegmentationDataset
        def __len__(self):
            return len(masks)

        def load_resized(self, i):
            return np.zeros((64, 64, 3), np.uint8), masks[i]

    dataset = Masks()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scale = estimate_latent_scale(model, dataset)
    y = torch.from_numpy(np.stack(masks)).float()[:, None]
    with torch.no_grad():
        expected = 1.0 / float(model.mask_vae.encode(y)[0].std())
    assert scale == pytest.approx(expected, rel=1e-5)


def test_new_runs_are_numbered_and_only_a_named_folder_resumes(capsys, data, tiny_config, ref,
                                                               tmp_path):  # fmt: skip
    import shutil

    project = tmp_path / "runs"
    quick = [*_cmd(data, tiny_config, tmp_path / "unused")]
    quick = quick[:6] + quick[8:]  # no --out
    quick += ["--project", str(project), "--ae-epochs", "1", "--epochs", "1",
              "--max-steps-per-epoch", "1"]  # fmt: skip
    for expected in ("exp", "exp2"):  # the second, different run gets a folder of its own
        code, err = _main(capsys, [*quick, "--lr", "0.001" if expected == "exp" else "0.002"])
        assert code == 0, err
        assert (project / expected / "last").is_dir(), expected
    # a named folder is resumed (here: it is done), never renumbered
    shutil.copytree(ref, project / "mine")
    code, err = _main(capsys, [*_cmd(data, tiny_config, ref)[:6], *_cmd(data, tiny_config, ref)[8:],
                               "--project", str(project), "--name", "mine"])  # fmt: skip
    assert code == 0 and "is done: nothing to train" in err, err
    code, err = _main(capsys, [*quick, "--lr", "0.001", "--resume", str(project / "exp")])
    assert code == 0 and "is done: nothing to train" in err, err
    assert not (project / "exp3").exists()
    code, err = _main(capsys, [*quick, "--resume", str(tmp_path / "empty")])
    assert code == 1 and "no run to resume there" in err, err
    code, err = _main(capsys, [*quick, "--name", "a", "--out", str(tmp_path / "b")])
    assert code == 1 and "--out and --name both name the run folder" in err, err


def test_the_same_command_resumes_a_run_from_init_at_another_size(capsys, data, tmp_path):
    """A run from --init at another --imgsz records the size among its --grow settings; running
    the same command again once failed its own resume check ("--grow {} (the run has
    {'image_size': 32})")."""
    from lsdseg.checkpoint import save_checkpoint
    from lsdseg.model import LatentSegmenter

    init = save_checkpoint(LatentSegmenter(from_dict(ModelConfig, TINY)), tmp_path / "init")
    base = _cmd(data, tmp_path / "unused.json", tmp_path / "ft")[:8]  # ... train --data --out
    options = ["--imgsz", "32", "--device", "cpu", "--init", str(init), "--stage", "diffusion"]
    cmd = [*base, *options, "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "4"]
    code, err = _main(capsys, cmd)
    assert code == 0, err
    code, err = _main(capsys, cmd)
    assert code == 0 and "is done: nothing to train" in err, err


def test_without_matplotlib_a_run_finishes_and_says_why_it_has_no_picture(
    capsys, caplog, data, tiny_config, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    cmd = _cmd(data, tiny_config, tmp_path / "run")
    code, err = _main(capsys, [*cmd, "--ae-epochs", "1", "--epochs", "1",
                               "--max-steps-per-epoch", "1"])  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert not (tmp_path / "run" / "progress.png").exists()
    assert [r.getMessage() for r in caplog.records if "progress.png" in r.getMessage()] == [
        'progress.png not drawn: matplotlib is not installed: pip install "lsdseg[plot]"'
    ]


def test_a_diverging_run_stops_at_once_and_keeps_a_finite_checkpoint(
    capsys, data, tiny_config, tmp_path
):
    from lsdseg.checkpoint import load_checkpoint

    run = tmp_path / "diverged"
    code, err = _main(capsys, [*_cmd(data, tiny_config, run), "--lr", "1e30"])
    assert code == 1 and "training diverged at diffusion epoch 1" in err, err
    assert "lower the learning rate (--lr 1e+30)" in err and "keeps the last checkpoint" in err
    load_checkpoint(run / "last")  # finite: loading refuses NaN or infinite weights
    assert not (run / "best").exists()  # no diffusion epoch ended
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["autoencoders", "autoencoders"]


def test_val_steps_are_checked_first_and_may_change_on_resume(capsys, data, tiny_config, tmp_path):
    run = tmp_path / "val"
    code, err = _main(capsys, [*_cmd(data, tiny_config, run), "--val-steps", "5000"])
    assert code == 1 and "--val-steps 5000 must be between 1 and 1000" in err, err
    assert not run.exists()  # refused before anything trained or was written
    cmd = [*_cmd(data, tiny_config, run), "--epochs", "2", "--time-limit", "0.00001"]
    code, err = _main(capsys, cmd)  # one autoencoder epoch, then stopped at the time limit
    assert code == 0, err
    code, err = _main(capsys, [*cmd, "--val-steps", "1", "--val-every", "2"])
    assert code == 0 and "resuming from epoch 1" in err, err
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["val_steps"] == 1 and saved["val_every"] == 2


def test_a_run_folder_that_holds_the_data_is_refused(capsys, data, tiny_config, tmp_path):
    import shutil

    inside = shutil.copytree(data, tmp_path / "run" / "toy")
    code, err = _main(capsys, [*_cmd(inside, tiny_config, tmp_path / "run")])
    assert code == 1 and f"--out {tmp_path / 'run'} holds the input {inside}" in err, err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["toy"]
