"""``lsdseg evaluate`` and ``lsdseg train`` from the command line, with a tiny checkpoint."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lsdseg.backends import resolve_backend
from lsdseg.cli.main import main
from lsdseg.data import find_pairs
from lsdseg.evaluate import COLUMNS, evaluate
from lsdseg.metrics import dice, uncertainty_auroc
from lsdseg.segmenter import Segmenter


def make_pairs(root: Path, sizes: list[tuple[int, int]], masks: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(sizes):
        img = np.full((h, w, 3), 60, np.uint8)
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (w // 2, h // 2), min(h, w) // 4, 255, -1)
        img[m > 0] = (90, 90, 220)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        if masks:
            cv2.imwrite(str(root / "masks" / f"{i}.png"), m)
    return root


def test_evaluate_scores_at_original_resolution(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50), (37, 61), (64, 64)])
    out = tmp_path / "out"
    where = ["--project", str(tmp_path), "--name", "out"]
    code = main(["evaluate", "--data", str(data), "--weights", tiny, *where, "--save-vis"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "per_image.csv").read_text().splitlines()))
    assert [(int(r["height"]), int(r["width"])) for r in rows] == [(40, 50), (37, 61), (64, 64)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labelled"] == 3 and summary["skipped"] == 0
    sampler = json.loads((Path(tiny) / "config.json").read_text())["model"]["sampler"]
    for key in ("hypotheses", "steps", "eta", "threshold"):  # the checkpoint's, as run
        assert summary["settings"][key] == sampler[key], key
    for key in (
        "dice",
        "iou",
        "precision",
        "recall",
        "hd95",
        "ece_pooled",
        "uncertainty_auroc",
        "mi_auroc",
        "std_auroc",
        "unsure_auroc",
        "low_dice_images",
        "mean_latency_ms",
    ):
        assert key in summary
    assert all(0 <= float(r["unsure"]) <= 1 for r in rows)
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["0.png", "1.png", "2.png"]
    panel = cv2.imread(str(out / "vis" / "1.png"))
    assert panel.shape[0] == 28 + 300 + 26 and panel.shape[1] == 2 * round(61 * 300 / 37) + 70
    assert cv2.imread(str(out / "summary.png")).shape == (26 + 300, 3 * 380, 3)
    # the CLI's Dice is the Dice of the same prediction recomputed independently
    seg = Segmenter(__import__("lsdseg").load_checkpoint(tiny))
    _, pairs = find_pairs(data)
    ev = evaluate(seg, pairs, seed=0)
    from lsdseg.data import load_sample

    image, mask = load_sample(pairs[1])
    r = seg(image, seed=1, order="rgb")
    expected = dice(torch.from_numpy(r.mask), torch.from_numpy(mask)).item()
    assert ev.rows[1]["dice"] == pytest.approx(expected)
    assert float(rows[1]["dice"]) == pytest.approx(expected, rel=1e-5)  # 6 digits
    # the other uncertainty maps are scored as the entropy is, each on its own map
    error = torch.from_numpy(r.mask != mask)[None]
    assert 0 < error.float().mean() < 1  # some pixels wrong, some right: an AUROC exists
    for key, field in (("mi_auroc", r.mutual_info), ("std_auroc", r.std)):
        got = ev.rows[1][key]
        want = uncertainty_auroc(torch.from_numpy(field)[None], error).item()
        assert 0 <= got <= 1 and got == pytest.approx(want), key
        values = [row[key] for row in ev.rows if not np.isnan(row[key])]
        assert ev.summary[key] == pytest.approx(np.mean(values) if values else np.nan, nan_ok=True)
    assert "Dice" in capsys.readouterr().out


def test_val_fraction_scores_the_validation_split_of_train(capsys, tiny, tmp_path):
    from lsdseg.data import load_pairs

    data = make_pairs(tmp_path / "d", [(40, 50)] * 8)
    where = ["--project", str(tmp_path), "--name", "out"]
    argv = ["evaluate", "--data", str(data), "--weights", tiny, "--device", "cpu", *where]
    code = main([*argv, "--val-fraction", "0.3", "--split-seed", "2"])
    assert code == 0, capsys.readouterr().err
    _, val = load_pairs([str(data)], None, 0.3, 2)  # what lsdseg train --seed 2 holds out
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == [p.name for p in val] and len(val) == 3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["labelled"] == 3 and summary["settings"]["val_fraction"] == 0.3
    assert summary["settings"]["split_seed"] == 2


def test_unlabelled_and_unreadable_images_are_counted_and_the_run_fails_at_the_end(
    capsys, tiny, tmp_path
):
    data = make_pairs(tmp_path / "d", [(40, 50), (40, 50), (40, 50)])
    (data / "masks" / "2.png").unlink()  # image 2 has no mask
    (data / "images" / "1.png").write_bytes(b"not a png")  # image 1 is unreadable
    out = tmp_path / "out"
    where = ["--project", str(tmp_path), "--name", "out"]
    assert main(["evaluate", "--data", str(data), "--weights", tiny, *where]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["labelled"], summary["unlabelled"], summary["skipped"]) == (1, 1, 1)
    assert summary["skipped_files"][0][0].endswith("1.png")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("lsdseg evaluate: warning: skipped 1: cannot decode image")
    assert err[-1] == (
        "lsdseg evaluate: error: 1 of 3 images could not be read and were skipped (named "
        f"above); the results of the other 2 are in {out}"
    )


def test_a_folder_without_masks_is_scored_as_polyp_free_frames(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50), (30, 20)], masks=False)
    where = ["--project", str(tmp_path), "--name", "out"]
    assert main(["evaluate", "--data", str(data), "--weights", tiny, *where]) == 0
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower() and "Dice" not in captured.out
    assert "false alarms" in captured.out and "0 polyp frames, 2 polyp-free" in captured.out
    assert captured.err == ""
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").read_text().splitlines()))
    assert [r["labelled"] for r in rows] == ["False", "False"]
    assert [r["polyp"] for r in rows] == ["False", "False"]
    assert all(r["dice"] == r["hd95"] == "" for r in rows)  # the metric columns stay empty
    assert float(rows[1]["area_fraction"]) >= 0


def test_nothing_readable_fails(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)] * 2)
    for f in (data / "images").iterdir():
        f.write_bytes(b"")
    assert main(["evaluate", "--data", str(data), "--weights", tiny, "--project", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "lsdseg evaluate: error: none of the 2 images could be read (named above)"
    assert len(err) == 3 and "Traceback" not in "".join(err)  # two named, then the error


def test_per_image_csv_floats_have_six_significant_digits(capsys, tiny, tmp_path):
    import re

    data = make_pairs(tmp_path / "d", [(40, 50), (37, 61), (64, 64)])
    where = ["--project", str(tmp_path), "--name", "out"]
    assert main(["evaluate", "--data", str(data), "--weights", tiny, *where]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").read_text().splitlines()))
    seg = Segmenter(__import__("lsdseg").load_checkpoint(tiny))
    expected = evaluate(seg, find_pairs(data)[1], seed=0).rows
    for got, want in zip(rows, expected, strict=True):
        for key, value in want.items():
            if not isinstance(value, float) or key == "latency_ms":  # timings differ
                continue
            if math.isnan(value):
                assert got[key] == "", key  # no value: empty, not "nan"
                continue
            digits = re.sub(r"e[-+]\d+$", "", got[key]).replace("-", "").replace(".", "")
            assert len(digits.lstrip("0")) <= 6, (key, got[key])
            assert float(got[key]) == pytest.approx(value, rel=1e-5, abs=1e-12), key


def test_zero_byte_image_or_mask_is_skipped_and_named(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)] * 4)
    (data / "images" / "1.png").write_bytes(b"")
    (data / "masks" / "2.png").write_bytes(b"")
    where = ["--project", str(tmp_path), "--name", "out"]
    assert main(["evaluate", "--data", str(data), "--weights", tiny, *where]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in ("images/1.png", "masks/2.png"):
        assert f"{name}: the file is empty (0 bytes)" in err, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["labelled"], summary["skipped"]) == (2, 2)  # the others kept their results
    assert [Path(p).name for p, _ in summary["skipped_files"]] == ["1.png", "2.png"]
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["0", "3"]


GROW = '{{"image_ae": {{"context_depth": 2}}}}'  # str.format-escaped JSON
WIDER = '{{"image_ae": {{"channels": [8, 8, 16]}}}}'


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--data", "{tmp}/missing"],
        ["evaluate", "--data", "{tmp}/empty"],
        ["evaluate", "--data", "{data}", "--weights", "{tmp}/no-such-checkpoint"],
        ["evaluate", "--data", "{data}", "--weights", "{tiny}", "--steps", "0"],
        ["evaluate", "--data", "{data}", "--weights", "{tiny}", "--backend", "tensorflow"],
        ["train", "--data", "{tmp}/empty", "--out", "{tmp}/run"],
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--batch-size", "64"],
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--val-fraction", "1.5"],
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--time-limit", "-5"],
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--val-steps", "0"],
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--grow", GROW],
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--init", "{tiny}", "--grow", "{{x"],
        ["train", "--data", "{data}", "--out", "{tmp}/run", "--init", "{tiny}", "--grow", "[2]"],
        [
            "train",
            *("--data", "{data}", "--out", "{tmp}/run", "--init", "{tiny}", "--stage", "diffusion"),
            *("--imgsz", "32", "--batch-size", "2", "--grow", WIDER),
        ],
        [
            "train",
            *("--data", "{data}", "--out", "{tmp}/run", "--init", "{tiny}", "--imgsz", "64"),
            *("--grow", '{{"image_size": 96}}'),
        ],
        [
            "train",
            *("--data", "{data}", "--out", "{tmp}/run", "--init", "{tiny}"),
            *("--grow", '{{"image_ae": {{"backbone": "mobilenet_v2"}}}}'),
        ],
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(capsys, tiny, tmp_path, args):
    data = make_pairs(tmp_path / "d", [(40, 50)] * 4)
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path, data=data, tiny=tiny) for a in args]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refuses a value outside --backend's choices
        rc = e.code
    assert rc != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_train_grows_a_checkpoint_and_saves_the_deeper_model(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)] * 8)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--init", tiny]
    argv += ["--stage", "diffusion", "--epochs", "1", "--imgsz", "32", "--batch-size", "2"]
    argv += ["--max-steps-per-epoch", "2", "--grow", GROW.format()]
    assert main(argv) == 0, capsys.readouterr().err
    meta = json.loads((run / "best" / "config.json").read_text())
    assert meta["model"]["image_ae"]["context_depth"] == 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["grow"] == {"image_ae": {"context_depth": 2}}


def test_train_keeps_the_init_size_or_fine_tunes_at_imgsz(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)] * 8)
    base = ["train", "--data", str(data), "--init", tiny, "--stage", "diffusion", "--epochs", "1"]
    base += ["--batch-size", "2", "--max-steps-per-epoch", "2"]

    def trained(name: str, *extra: str) -> dict:
        assert main([*base, "--out", str(tmp_path / name), *extra]) == 0, capsys.readouterr().err
        return json.loads((tmp_path / name / "config.json").read_text())

    same = trained("same")  # no --imgsz: the checkpoint's 32 px, not the 256 px default
    assert same["model"]["image_size"] == 32 and same["train"]["grow"] == {}
    bigger = trained("bigger", "--imgsz", "64")
    assert bigger["model"]["image_size"] == 64
    assert bigger["train"]["grow"] == {"image_size": 64}
    best = json.loads((tmp_path / "bigger" / "best" / "config.json").read_text())
    assert best["model"]["image_size"] == 64
    # a finished run re-run with another size is refused, not silently resized
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bigger"), "--imgsz", "96"]) != 0
    assert "trains at --imgsz 64" in capsys.readouterr().err


def test_refused_grow_fails_before_the_data_is_decoded(capsys, tiny, tmp_path, monkeypatch):
    from lsdseg.dataset import SegmentationDataset

    def preload(self) -> None:
        raise AssertionError("the data was decoded before the checkpoint was checked")

    monkeypatch.setattr(SegmentationDataset, "preload", preload)
    data = make_pairs(tmp_path / "d", [(40, 50)] * 4)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--init", tiny, "--imgsz", "32"]
    argv += ["--stage", "diffusion", "--batch-size", "2", "--grow", WIDER.format()]
    assert main(argv) == 1
    assert "renamed or reshaped" in capsys.readouterr().err
    assert not run.exists()  # nothing written for a run that never started


def test_stage_one_from_inference_only_weights_is_one_line(capsys, tiny, tmp_path):
    from lsdseg.checkpoint import load_checkpoint, save_checkpoint, without_image_decoder

    slim = save_checkpoint(without_image_decoder(load_checkpoint(tiny)), tmp_path / "slim")
    data = make_pairs(tmp_path / "d", [(40, 50)] * 4)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--init", str(slim)]
    assert main([*argv, "--imgsz", "32", "--batch-size", "2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--stage diffusion" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err


def test_mismatched_checkpoint_is_refused(capsys, tiny, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["model"]["unet"]["channels"] = [16, 32]
    (broken / "config.json").write_text(json.dumps(meta))
    data = make_pairs(tmp_path / "d", [(40, 50)])
    assert main(["evaluate", "--data", str(data), "--weights", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "does not match" in err and err.count("\n") == 1


def test_misspelt_option_suggests_the_right_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--data", "x", "--hypothesis", "4"])
    assert e.value.code == 2
    assert "--hypotheses" in capsys.readouterr().err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("lsdseg ")
    assert main([]) == 2


def test_unsure_summary_scores_the_failed_images() -> None:
    from lsdseg.evaluate import unsure_summary

    rows = [
        {"dice": 0.9, "unsure": 0.05},
        {"dice": 0.3, "unsure": 0.40},
        {"dice": 0.8, "unsure": 0.10},
        {"dice": 0.1, "unsure": 0.08},  # a confident failure ranks below one success
    ]
    s = unsure_summary(rows)
    assert s["low_dice_images"] == 2
    assert s["unsure_auroc"] == pytest.approx(3 / 4)  # 3 of the 4 (failed, ok) pairs ordered
    none_failed = unsure_summary([{"dice": 0.9, "unsure": 0.1}, {"dice": 0.8, "unsure": 0.2}])
    assert none_failed["low_dice_images"] == 0 and math.isnan(none_failed["unsure_auroc"])


def test_docs_document_every_per_image_column(tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)])
    seg = Segmenter(__import__("lsdseg").load_checkpoint(tiny))
    columns = set(evaluate(seg, find_pairs(data)[1]).rows[0]) | {"dataset"}  # the CLI adds it
    doc = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    table = doc.split("| `per_image.csv` column | meaning |")[1].split("\n\n")[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("|")]
    documented = {name for row in rows for name in row.split("`")[1::2]}
    assert documented == columns


def _ece_reference(probs: list[np.ndarray], masks: list[np.ndarray], bins: int = 15) -> float:
    """ECE of all pixels pooled, in float64 numpy: sum_b |sum(p in b) - sum(y in b)| / n."""
    p = np.concatenate([x.ravel() for x in probs]).astype(np.float64)
    y = np.concatenate([m.ravel() for m in masks]).astype(np.float64)
    b = np.minimum(np.floor(p * bins), bins - 1).astype(int)
    gap = np.bincount(b, weights=p, minlength=bins) - np.bincount(b, weights=y, minlength=bins)
    return float(np.abs(gap).sum() / p.size)


def test_ece_has_one_name_per_definition(capsys, tiny, tmp_path, monkeypatch):
    from lsdseg.data import load_sample

    monkeypatch.setenv("COLUMNS", "80")
    data = make_pairs(tmp_path / "d", [(40, 50), (37, 61), (64, 64)])
    where = ["--project", str(tmp_path), "--name", "out"]
    assert main(["evaluate", "--data", str(data), "--weights", tiny, *where]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").read_text().splitlines()))
    assert "ece" not in summary  # each figure under the name of its definition
    assert summary["ece_image_mean"] == pytest.approx(np.mean([float(r["ece"]) for r in rows]))
    seg = Segmenter(__import__("lsdseg").load_checkpoint(tiny))
    samples = [load_sample(p) for p in find_pairs(data)[1]]
    probs = [seg(x, seed=i, order="rgb").mean for i, (x, _) in enumerate(samples)]
    pooled = _ece_reference(probs, [m for _, m in samples])
    assert summary["ece_pooled"] == pytest.approx(pooled, rel=1e-6)
    assert pooled != pytest.approx(summary["ece_image_mean"], rel=1e-3)  # they do differ
    # the table shows the pooled figure, named so
    line = next(line for line in printed.splitlines() if "ECE" in line)
    assert "ECE pooled" in line and f"{pooled:.4g}" in line and "ece_pooled" in line
    # at 80 columns every name is whole (the one-row table cut "Precision" to "Precisi…")
    assert "Precision" in printed and "…" not in printed
    assert max(len(line) for line in printed.splitlines() if "│" in line) <= 80


def test_summary_json_has_null_where_a_metric_has_no_value(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50), (40, 50)])
    cv2.imwrite(str(data / "masks" / "1.png"), np.zeros((40, 50), np.uint8))  # empty mask
    where = ["--project", str(tmp_path), "--name", "out"]
    assert main(["evaluate", "--data", str(data), "--weights", tiny, *where]) == 0

    def refuse(name):
        raise ValueError(f"{name} in summary.json")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=refuse)
    ev = evaluate(Segmenter(__import__("lsdseg").load_checkpoint(tiny)), find_pairs(data)[1])
    missing = [k for k, v in ev.summary.items() if isinstance(v, float) and math.isnan(v)]
    assert missing  # the run has figures without a value, and they are null
    assert all(summary[k] is None for k in missing)


def test_evaluate_stops_between_images_and_summarises_what_was_done(tiny, tmp_path):
    import threading

    data = make_pairs(tmp_path / "d", [(40, 50)] * 5)
    stop, seen = threading.Event(), []

    def on_row(row):
        seen.append(row["name"])
        if len(seen) == 2:
            stop.set()  # as a signal would, during the second image

    seg = Segmenter(__import__("lsdseg").load_checkpoint(tiny))
    ev = evaluate(seg, find_pairs(data)[1], on_row=on_row, stop=stop)
    assert ev.stopped and seen == ["0", "1"] and [r["name"] for r in ev.rows] == seen
    assert ev.summary["images"] == ev.summary["labelled"] == 2
    assert tuple(ev.rows[0]) == COLUMNS  # a labelled row has every column, in order


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_keeps_the_rows_written_and_writes_the_summary(tiny, tmp_path, sig, code):
    data = make_pairs(tmp_path / "d", [(48, 64)] * 400)
    out = tmp_path / "out"
    entry = "import sys; from lsdseg.cli.main import main; sys.exit(main())"
    cmd = [sys.executable, "-c", entry, "evaluate", "--data", str(data), "--weights", tiny]
    cmd += ["--project", str(tmp_path), "--name", "out", "--hypotheses", "16", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    csv_path = out / "per_image.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) >= 4:  # header + 3
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()  # rows appear while the run goes on
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == signal.Signals(sig).name
    assert 3 <= summary["images"] == len(rows) < 400
    assert [r["name"] for r in rows] == [str(i) for i in range(len(rows))]
    assert all(r["dice"] != "" for r in rows)  # every row whole
    assert f"stopped by {signal.Signals(sig).name} after {len(rows)} of 400" in stdout


def test_summary_keeps_settings_apart_from_metrics(capsys, tiny, tmp_path):
    """``precision`` is a metric (the table's Precision); the fp32 setting once overwrote it."""
    data = make_pairs(tmp_path / "d", [(40, 50), (48, 48)])
    where = ["--project", str(tmp_path), "--name", "out"]
    code = main(["evaluate", "--data", str(data), "--weights", tiny, *where, "--seed", "5"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    settings = summary["settings"]
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").read_text().splitlines()))
    precision = np.mean([float(r["precision"]) for r in rows])
    assert summary["precision"] == pytest.approx(precision, rel=1e-5)  # the metric, a number
    assert settings["precision"] == "fp32"
    assert settings["device"] == "cpu"  # resolved, not "auto"
    assert (settings["seed"], settings["groups"]) == (5, None)
    assert settings["backend"] == resolve_backend("auto", torch.device("cpu"))  # as run


def test_a_stopped_run_says_partial_on_its_figure(capsys, tiny, tmp_path, monkeypatch):
    import lsdseg.evaluate
    from lsdseg.cli.evaluate_cmd import Pictures

    data = make_pairs(tmp_path / "d", [(40, 50)] * 5)
    titles = []
    monkeypatch.setattr(Pictures, "write_summary", lambda self, title: titles.append(title))
    original = lsdseg.evaluate.evaluate

    def interrupted(*args, on_row=None, **kwargs):
        def row_then_ctrl_c(row):
            on_row(row)
            if len(titles) == 0 and row["name"] == "1":
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C during the second image

        return original(*args, on_row=row_then_ctrl_c, **kwargs)

    monkeypatch.setattr(lsdseg.evaluate, "evaluate", interrupted)
    where = ["--project", str(tmp_path), "--name", "out", "--backend", "torch"]
    code = main(["evaluate", "--data", str(data), "--weights", tiny, *where, "--save-vis"])
    assert code == 130, capsys.readouterr().err
    assert titles and titles[0].startswith("PARTIAL, stopped by SIGINT after 2 of 5: ")
    assert titles[0].endswith("2 polyp frames")


def test_a_log_gets_a_progress_line_every_30_seconds(capsys):
    from lsdseg.cli.display import PlainProgress

    now = [0.0]
    progress = PlainProgress("lsdseg evaluate", 100, clock=lambda: now[0])
    for _ in range(99):
        now[0] += 1.0  # one image a second
        progress.advance()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "lsdseg evaluate: 30 of 100 images (30%), 0:30 elapsed, about 1:10 left",
        "lsdseg evaluate: 60 of 100 images (60%), 1:00 elapsed, about 0:40 left",
        "lsdseg evaluate: 90 of 100 images (90%), 1:30 elapsed, about 0:10 left",
    ]


def test_max_images_scores_the_first_n(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)] * 5)
    where = ["--project", str(tmp_path), "--name", "out", "--backend", "torch"]
    code = main(["evaluate", "--data", str(data), "--weights", tiny, *where, "--max-images", "2"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == ["0", "1"]
    assert "--max-images 2: the first 2 of 5" in capsys.readouterr().out
    code = main(["evaluate", "--data", str(data), "--weights", tiny, *where, "--max-images", "-1"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == (
        "lsdseg evaluate: error: --max-images -1 must be >= 0 (0: all images)"
    )


def test_data_the_weights_trained_on_is_named_with_how_to_score_the_rest(capsys, tiny, tmp_path):
    import shutil

    data = make_pairs(tmp_path / "CVC", [(40, 50)] * 4)
    run = tmp_path / "run"
    shutil.copytree(tiny, run / "best")
    split = {
        "seed": 0,
        "val_fraction": 0.5,
        "datasets": {"cvc": {"root": "/elsewhere/cvc"}},  # another copy: names still match
        "train": [{"image": f"cvc/images/{i}.png", "group": f"cvc:{i}"} for i in (0, 1)],
        "val": [{"image": f"cvc/images/{i}.png", "group": f"cvc:{i}"} for i in (2, 3)],
    }
    (run / "splits.json").write_text(json.dumps(split))
    where = ["--project", str(tmp_path), "--backend", "torch"]
    argv = ["evaluate", "--data", str(data), "--weights", str(run / "best"), *where]
    assert main([*argv, "--name", "all"]) == 0
    err = capsys.readouterr().err
    assert (
        f"lsdseg evaluate: warning: 2 of 4 images are in the training split of these weights "
        f"({run / 'splits.json'}): their scores flatter the model; score only the held-out part "
        "with --groups 2,3"
    ) in err.splitlines(), err
    assert main([*argv, "--name", "held", "--groups", "2,3"]) == 0  # the advice, followed
    assert "training split" not in capsys.readouterr().err


def test_a_bundle_carries_its_runs_split_without_machine_paths(capsys, tiny, tmp_path):
    """scripts/bundle_weights.py copies the run's splits.json into the bundle (no absolute
    roots), and evaluate's warning then works from the bundled folder itself."""
    import shutil

    from conftest import load_script

    bundle_weights = load_script("scripts/bundle_weights.py")
    run = tmp_path / "run"
    run.mkdir()
    split = {
        "seed": 0,
        "val_fraction": 0.5,
        "datasets": {"cvc": {"root": "/somewhere/private/cvc", "train": 2, "val": 2}},
        "train": [{"image": f"cvc/images/{i}.png", "group": f"cvc:{i}"} for i in (0, 1)],
        "val": [{"image": f"cvc/images/{i}.png", "group": f"cvc:{i}"} for i in (2, 3)],
    }
    (run / "splits.json").write_text(json.dumps(split))
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny, bundle)
    written = bundle_weights.bundle_splits(run, bundle)
    assert written == bundle / "splits.json" and "/somewhere" not in written.read_text()
    data = make_pairs(tmp_path / "cvc", [(40, 50)] * 4)
    where = ["--project", str(tmp_path), "--name", "e", "--backend", "torch"]
    assert main(["evaluate", "--data", str(data), "--weights", str(bundle), *where]) == 0
    assert "2 of 4 images are in the training split" in capsys.readouterr().err


def test_two_datasets_with_the_same_names_keep_every_row_and_picture(capsys, tiny, tmp_path):
    a = make_pairs(tmp_path / "a" / "data", [(40, 50), (37, 61)])
    b = make_pairs(tmp_path / "b" / "data", [(44, 52), (30, 30)])  # same folder and file names
    argv = ["evaluate", "--data", str(a), "--data", str(b), "--weights", tiny, "--save-vis"]
    rc = main([*argv, "--project", str(tmp_path), "--name", "out", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "per_image.csv").read_text().splitlines()))
    assert [(r["dataset"], r["name"]) for r in rows] == [
        (str(a), "0"),
        (str(a), "1"),
        (str(b), "0"),
        (str(b), "1"),
    ]
    assert len({(r["dataset"], r["name"]) for r in rows}) == 4
    pictures = sorted(p.name for p in (out / "vis").iterdir())
    assert pictures == ["0.png", "1.png", "data_0.png", "data_1.png"]


def test_file_names_are_written_safe_for_a_spreadsheet(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)] * 3)
    for old, new in [(b"0", b'=HYPERLINK("http:__x","y")'), (b"1", b"b\xff")]:
        for sub in (b"images", b"masks"):
            folder = os.path.join(os.fsencode(data), sub)
            os.rename(os.path.join(folder, old + b".png"), os.path.join(folder, new + b".png"))
    rc = main(["evaluate", "--data", str(data), "--weights", tiny, "--project", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "exp" / "per_image.csv").read_text().splitlines()))
    names = sorted(r["name"] for r in rows)
    assert names == sorted(['\'=HYPERLINK("http:__x","y")', "b\\xff", "2"])
    assert all(r["dice"] != "" for r in rows)  # the three images were scored


def test_evaluate_keeps_the_k_maps_at_the_models_size(tiny, tmp_path):
    # K maps at a large frame's size cost K x H x W floats (10.7 GB at K = 32 for 8000 x 6000)
    # and evaluate scores none of them: only the mean, std, entropy and MI are frame-sized
    data = make_pairs(tmp_path / "d", [(200, 260)])
    seg = Segmenter(__import__("lsdseg").load_checkpoint(tiny))
    shapes = []

    def on_image(pair, image, mask, r):
        shapes.append((r.hypotheses.shape, r.mean.shape, r.entropy.shape))

    ev = evaluate(seg, find_pairs(data)[1], hypotheses=4, on_image=on_image)
    s = seg.config.image_size
    assert shapes == [((4, s, s), (200, 260), (200, 260))]
    assert ev.rows[0]["dice"] >= 0 and ev.rows[0]["width"] == 260


def test_groups_that_name_no_group_are_refused(capsys, tiny, tmp_path):
    data = make_pairs(tmp_path / "d", [(40, 50)])
    rc = main(["evaluate", "--data", str(data), "--weights", tiny, "--groups", ","])
    err = capsys.readouterr().err
    assert rc == 1 and "--groups ',' names no group" in err, err
    assert "none of the 0 images" not in err
