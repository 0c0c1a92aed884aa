"""``lsdseg evaluate --compare`` / ``--sweep`` and :mod:`lsdseg.compare`: the paired bootstrap
that decides whether new weights are better, and the sweep the sampler defaults are picked by."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lsdseg.cli.main import main
from lsdseg.compare import (
    THRESHOLDS,
    bootstrap,
    compare_datasets,
    dice,
    load_model,
    per_image_scores,
)
from lsdseg.data import load_pairs, load_sample
from lsdseg.metrics import dice as torch_dice
from lsdseg.segmenter import Segmenter, load


def make_dataset(root: Path, n: int = 6, size: int = 40) -> Path:
    """A labelled folder of synthetic frames with a bright disc each (file-name groups)."""
    from test_train import make_dataset as make

    return make(root, n=n, size=size)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cmp") / "toy", n=6)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bootstrap_interval_contains_zero_for_noise_and_not_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.05, 90)
    lo, hi = bootstrap(noise - noise.mean())
    assert lo < 0 < hi
    lo, hi = bootstrap(noise - noise.mean() + 0.03)
    assert 0 < lo < 0.03 < hi


def test_bootstrap_is_the_percentile_interval_of_resampled_means() -> None:
    diff = np.array([0.1, -0.2, 0.3, 0.0, 0.05])
    rng = np.random.default_rng(0)  # the same draws, written out by hand
    means = [diff[rng.integers(0, 5, 5)].mean() for _ in range(2000)]
    assert bootstrap(diff, n=2000) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))


def test_compare_datasets_per_dataset_means_and_counts() -> None:
    a = np.array([0.9, 0.5, 0.7, 0.2, 0.8])
    b = np.array([0.95, 0.65, 0.7, 0.1, 0.85])
    rows = compare_datasets(a, b, ["kvasir", "cvc", "kvasir", "cvc", "kvasir"], resamples=500)
    assert [r.dataset for r in rows] == ["cvc", "kvasir"]
    cvc, kvasir = rows
    assert (cvc.images, kvasir.images) == (2, 3)
    assert cvc.mean_a == pytest.approx(0.35) and cvc.mean_b == pytest.approx(0.375)
    assert kvasir.difference == pytest.approx((0.05 + 0.0 + 0.05) / 3)
    assert (cvc.below_a, cvc.below_b, kvasir.below_a, kvasir.below_b) == (2, 1, 0, 0)
    assert (cvc.low, cvc.high) == bootstrap(b[[1, 3]] - a[[1, 3]], 500)
    assert "kvasir (3 images): Dice 0.8000 -> 0.8333, difference +0.0333" in kvasir.line()
    assert kvasir.line().endswith("images below 0.6: 0 -> 0")
    with pytest.raises(ValueError, match="one entry per image"):
        compare_datasets(a, b[:4], ["x"] * 5)


def test_compare_datasets_of_aurocs_leaves_out_images_without_one_and_counts_nothing() -> None:
    a = np.array([0.9, np.nan, 0.7, 0.6, 0.8])
    b = np.array([0.95, 0.9, np.nan, 0.7, 0.85])
    names = ["kvasir", "kvasir", "cvc", "cvc", "kvasir"]
    cvc, kvasir = compare_datasets(a, b, names, resamples=200, metric="entropy AUROC")
    assert (cvc.images, kvasir.images) == (1, 2)  # only images where both have an AUROC
    assert kvasir.mean_a == pytest.approx(0.85) and kvasir.mean_b == pytest.approx(0.9)
    assert cvc.difference == pytest.approx(0.1)
    assert (kvasir.below_a, kvasir.below_b, kvasir.metric) == (None, None, "entropy AUROC")
    line = kvasir.line()
    assert (
        line.startswith("kvasir (2 images): entropy AUROC 0.8500 -> 0.9000") and "below" not in line
    )
    (only,) = compare_datasets(a[:2], b[:2], names[:2], resamples=10, metric="entropy AUROC")
    assert only.images == 1
    assert compare_datasets(a[1:3], b[1:3], names[1:3], metric="entropy AUROC") == []


def test_per_image_scores_average_the_entropy_auroc_over_the_seeds_that_have_one() -> None:
    from types import SimpleNamespace

    from lsdseg.config import SamplerConfig
    from lsdseg.metrics.calibration import uncertainty_auroc

    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    rng = np.random.default_rng(0)
    means = [rng.random((8, 8)).astype(np.float32) for _ in range(2)]
    means.append(np.where(mask, 0.9, 0.1).astype(np.float32))  # seed 2: no error pixel

    class Fixed:  # a segmenter whose seed s returns means[s % 3]
        def settings(self, *args):
            return SamplerConfig(hypotheses=2, steps=1, threshold=0.5)

        def __call__(self, image, **kw):
            mean = means[kw["seed"] % 1000]
            entropy = (-mean * np.log2(mean) - (1 - mean) * np.log2(1 - mean)).astype(np.float32)
            return SimpleNamespace(mean=mean, entropy=entropy, mask=mean > kw["threshold"])

    samples = [(None, np.zeros((8, 8, 3), np.uint8), mask)]

    def auroc(mean: np.ndarray) -> float:
        entropy = -mean * np.log2(mean) - (1 - mean) * np.log2(1 - mean)
        error = torch.from_numpy((mean > 0.5) != mask)[None]
        return float(uncertainty_auroc(torch.from_numpy(entropy)[None], error)[0])

    two = per_image_scores(Fixed(), samples, seeds=2)
    assert two.entropy_auroc[0] == pytest.approx((auroc(means[0]) + auroc(means[1])) / 2)
    three = per_image_scores(Fixed(), samples, seeds=3)  # seed 2 has no AUROC: left out
    assert three.entropy_auroc[0] == pytest.approx(two.entropy_auroc[0])
    assert three.dice[0] == pytest.approx((two.dice[0] * 2 + 1.0) / 3)
    assert np.isnan(per_image_scores(Fixed(), samples, seeds=3, auroc=False).entropy_auroc[0])
    means[0] = means[2]  # seed 0 now has no error pixel either
    assert np.isnan(per_image_scores(Fixed(), samples, seeds=1).entropy_auroc[0])


def test_numpy_dice_matches_the_metrics_module() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        p, g = rng.random((2, 17, 23)) > 0.6
        ref = torch_dice(torch.from_numpy(p)[None], torch.from_numpy(g)[None])  # (1,)
        assert dice(p, g) == pytest.approx(float(ref[0]))
    empty = np.zeros((4, 4), bool)
    assert dice(empty, empty) == 1.0


def test_per_image_scores_seed_each_image_apart(tiny) -> None:
    seg = load(tiny, device="cpu")
    seen = []

    class Recording:
        settings = seg.settings

        def __call__(self, image, **kw):
            seen.append(kw["seed"])
            return seg(image, **kw)

    image = np.zeros((20, 20, 3), np.uint8)
    samples = [(None, image, np.zeros((20, 20), bool))] * 3
    out = per_image_scores(Recording(), samples, seeds=2, seed=5).dice
    assert seen == [5, 6, 1005, 1006, 2005, 2006]
    assert out.shape == (3,) and ((out >= 0) & (out <= 1)).all()


def test_a_checkpoint_against_a_copy_of_itself_differs_by_exactly_zero(
    capsys, tiny, twin, data, tmp_path
) -> None:
    argv = ["--data", str(data), "--weights", tiny, "--compare", twin, "--seeds", "2"]
    code, out, err = _run(capsys, *argv, "--device", "cpu", "--project", str(tmp_path))
    assert code == 0, err
    assert "toy (6 images):" in out
    assert "Dice" in out and "difference +0.0000, 95% interval [+0.0000, +0.0000]" in out, out
    record = json.loads((tmp_path / "exp" / "compare.json").read_text())
    (row,) = record["datasets"]
    assert row["images"] == 6 and row["difference"] == 0.0
    for auroc in record["entropy_auroc"]:  # the images with error and correct pixels, if any
        assert auroc["difference"] == 0.0 and auroc["metric"] == "entropy AUROC"
        assert f"toy ({auroc['images']} images): entropy AUROC" in out
    assert record["seeds"] == 2 and record["a"]["hypotheses"] == 2  # the checkpoint's K
    rows = list(csv.DictReader((tmp_path / "exp" / "per_image.csv").open()))
    assert len(rows) == 6 and all(r["dice_a"] == r["dice_b"] for r in rows)
    assert all(r["entropy_auroc_a"] == r["entropy_auroc_b"] for r in rows)


def test_compare_on_the_validation_split_matches_a_direct_computation(
    capsys, tiny, twin, data, tmp_path
) -> None:
    argv = ["--data", str(data), "--weights", tiny, "--compare", twin, "--compare-steps", "2"]
    argv += ["--val-fraction", "0.4", "--split-seed", "3", "--seeds", "1", "--threshold", "0.45"]
    code, _, err = _run(capsys, *argv, "--device", "cpu", "--project", str(tmp_path))
    assert code == 0, err
    _, val = load_pairs([str(data)], None, 0.4, 3)
    samples = [(p, *load_sample(p)) for p in val]
    seg = Segmenter(load_model(tiny))
    a = per_image_scores(seg, samples, 1, 0.45, seeds=1).dice
    b = per_image_scores(seg, samples, 2, 0.45, seeds=1).dice
    record = json.loads((tmp_path / "exp" / "compare.json").read_text())
    (row,) = record["datasets"]
    assert row["images"] == len(val) == 3
    assert row["mean_a"] == pytest.approx(a.mean()) and row["mean_b"] == pytest.approx(b.mean())
    assert (record["a"]["steps"], record["b"]["steps"]) == (1, 2)
    assert record["val_fraction"] == 0.4 and record["split_seed"] == 3


def test_sweep_scores_every_step_count_and_threshold(capsys, tiny, twin, data, tmp_path) -> None:
    argv = ["--data", str(data), "--weights", tiny, "--compare", twin, "--sweep", "1,2"]
    code, out, err = _run(capsys, *argv, "--device", "cpu", "--project", str(tmp_path))
    assert code == 0, err
    rows = json.loads((tmp_path / "exp" / "sweep.json").read_text())["rows"]
    assert [(r["weights"], r["steps"]) for r in rows] == [
        (tiny, 1),
        (tiny, 2),
        (twin, 1),
        (twin, 2),
    ]
    # an independent reference: torch Dice of each image's mean at the threshold, seed = index
    seg = load(tiny, device="cpu")
    _, pairs = load_pairs([], [str(data)], 0.0, 0)
    for r in rows[:2]:
        for th in THRESHOLDS:
            ref = []
            for i, p in enumerate(pairs):
                image, mask = load_sample(p)
                m = seg(image, steps=r["steps"], seed=i, order="rgb").mean > th
                ref.append(
                    float(torch_dice(torch.from_numpy(m)[None], torch.from_numpy(mask)[None]))
                )
            assert r[f"dice/toy@{th}"] == pytest.approx(np.mean(ref))
        assert f"{tiny}, {r['steps']}, 2, toy: " in out


@pytest.mark.parametrize(
    "args",
    [
        ["--compare", "{tmp}/missing"],  # no such weights folder
        ["--compare", "{tiny}"],  # the same weights at the same settings
        ["--compare", "{twin}", "--sweep", "--weights", "{twin}"],
        ["--compare", "{twin}", "--data", "{tmp}/empty"],  # no images
        ["--compare", "{twin}", "--data", "{tmp}/unlabelled"],  # no masks
        ["--compare", "{twin}", "--val-fraction", "1.5"],
        ["--compare", "{twin}", "--val-fraction", "0.5", "--data", "{tmp}/one"],  # empty split
        ["--compare", "{twin}", "--seeds", "0"],
        ["--compare", "{twin}", "--save-vis"],
        ["--compare", "{twin}", "--steps", "0"],
        ["--compare", "{twin}", "--compare-threshold", "2"],
        ["--compare", "{twin}", "--weights", "{tmp}/one"],  # a data folder is no checkpoint
        ["--sweep", "--steps", "2"],
        ["--sweep", "0"],
        ["--sweep", "--seeds", "2"],
        ["--seeds", "2"],  # an option of --compare without it
        ["--compare-steps", "2"],
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(cli_error, tiny, twin, data, tmp_path, args):
    (tmp_path / "empty").mkdir()
    make_dataset(tmp_path / "one", n=1)
    unlabelled = make_dataset(tmp_path / "unlabelled", n=2)
    shutil.rmtree(unlabelled / "masks")
    argv = ["evaluate", "--weights", tiny, "--device", "cpu", "--project", str(tmp_path / "runs")]
    argv += [] if "--data" in args else ["--data", str(data)]
    cli_error(argv + [a.format(tmp=tmp_path, tiny=tiny, twin=twin) for a in args])
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made


def test_every_file_and_field_written_is_documented(capsys, tiny, twin, data, tmp_path) -> None:
    """docs/outputs.md names each key of compare.json and sweep.json and each column of the
    comparison's per_image.csv, as `key`."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    argv = ["--data", str(data), "--weights", tiny, "--compare", twin, "--device", "cpu"]
    assert _run(capsys, *argv, "--seeds", "1", "--project", str(tmp_path), "--name", "c")[0] == 0
    assert _run(capsys, *argv, "--sweep", "1", "--project", str(tmp_path), "--name", "s")[0] == 0
    compare = json.loads((tmp_path / "c" / "compare.json").read_text())
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    with (tmp_path / "c" / "per_image.csv").open() as f:
        columns = next(csv.reader(f))
    names = [*compare, *compare["a"], *compare["datasets"][0], *sweep, *columns]
    names += [
        "dice/<dataset>@<threshold>" if k.startswith("dice/") else k for k in sweep["rows"][0]
    ]
    for name in ("compare.json", "sweep.json", "per_image.csv", *names):
        assert f"`{name}`" in docs, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "100000000"], "--seeds 100000000 must be between 1 and 1000"),
        (["--resamples", "2000000000"], "--resamples 2000000000 must be between 1 and 100,000"),
    ],
)
def test_seeds_and_resamples_are_bounded(capsys, tiny, twin, data, tmp_path, args, message):
    argv = ["--data", str(data), "--weights", tiny, "--compare", twin, *args]
    code, _, err = _run(capsys, *argv, "--project", str(tmp_path))
    assert code == 1 and message in err, err
