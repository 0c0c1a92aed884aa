"""The split record of a training run and the check for video frames split one by one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from lsdseg.data import Pair, find_pairs, split_pairs
from lsdseg.splits import VIDEO_SHARE, split_record, video_frame_share, write_splits

_DATA = Path(os.environ.get("LSDSEG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def scene(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A smooth random 'mucosa': blurred noise, larger than a frame, to pan over."""
    smooth = cv2.GaussianBlur(rng.random((size * 2, size * 2)).astype(np.float32), (0, 0), 6)
    return cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def write_folder(root: Path, video: bool, n: int = 24, size: int = 64) -> list[Pair]:
    """``n`` frames: consecutive crops of a few slowly panned scenes (video) or of a new
    scene each (independent images), with masks."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    big = scene(rng)
    for i in range(n):
        if not video or i % 8 == 0:  # a new scene each, or three videos of eight frames
            big = scene(rng)
        x = 2 * (i % 8) if video else 0
        img = np.repeat(big[x : x + size, x : x + size, None], 3, axis=2)
        cv2.imwrite(str(root / "images" / f"{i + 1}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i + 1}.png"), np.zeros((size, size), np.uint8))
    return find_pairs(root)[1]


def test_video_frames_are_told_from_independent_images(tmp_path):
    frames = video_frame_share(write_folder(tmp_path / "video", video=True))
    images = video_frame_share(write_folder(tmp_path / "images", video=False))
    assert frames > VIDEO_SHARE > images, (frames, images)
    assert abs(images) < 0.1


@pytest.mark.data
@pytest.mark.skipif(not (_DATA / "cvc-clinicdb").is_dir(), reason="real data not available")
def test_cvc_clinicdb_frames_look_like_video():
    _, pairs = find_pairs(_DATA / "cvc-clinicdb")
    assert video_frame_share(pairs) > VIDEO_SHARE


def test_split_record_lists_every_image_once_by_dataset_and_group(tmp_path):
    pairs = write_folder(tmp_path / "toy", video=True)
    named = [Pair(p.image, p.mask, group=f"toy:{p.group}") for p in pairs]
    train, val = split_pairs(named, val_fraction=0.25, seed=3)
    info = {"toy": {"root": str(tmp_path / "toy"), "grouped_by": "file names"}}
    record = split_record(train, val, info, 3, 0.25)
    write_splits(tmp_path / "splits.json", record)
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved == record and saved["seed"] == 3 and saved["val_fraction"] == 0.25
    images = [e["image"] for e in saved["train"] + saved["val"]]
    assert sorted(images) == sorted(f"toy/images/{p.image.name}" for p in pairs)
    assert saved["datasets"]["toy"]["train"] == len(train) and len(saved["val"]) == len(val)
    assert {e["group"] for e in saved["train"]}.isdisjoint(e["group"] for e in saved["val"])


def test_train_warns_about_video_frames_split_one_by_one_only(tmp_path):
    from lsdseg.cli.train_cmd import frame_split_warnings
    from lsdseg.data import load_pairs

    video = tmp_path / "clips"
    pairs = write_folder(video, video=True)
    datasets: dict = {}
    load_pairs([str(video)], None, 0.25, 0, datasets)
    (warning,) = frame_split_warnings(datasets)
    assert warning.startswith(f"{video}: its images look like frames of videos")
    assert "sequences.csv" in warning and "--val-data" in warning
    others = write_folder(tmp_path / "stills", video=False)
    datasets = {}
    load_pairs([str(tmp_path / "stills")], None, 0.25, 0, datasets)
    assert frame_split_warnings(datasets) == [] and len(others) == 24
    # with the videos named in sequences.csv, or validation given apart, nothing is split
    # frame by frame
    rows = "".join(f"{p.image.name},{i // 8}\n" for i, p in enumerate(pairs))
    (video / "sequences.csv").write_text("file,sequence\n" + rows)
    for val_dirs in (None, [str(tmp_path / "stills")]):
        datasets = {}
        load_pairs([str(video)], val_dirs, 0.25, 0, datasets)
        assert frame_split_warnings(datasets) == []
    (video / "sequences.csv").unlink()
    datasets = {}
    load_pairs([str(video)], [str(tmp_path / "stills")], 0.25, 0, datasets)
    assert frame_split_warnings(datasets) == [] and "video_frame_share" not in datasets["clips"]


def _stills(root: Path, n: int, sequences: bool) -> None:
    """``n`` blank 8x8 image/mask pairs 1.png..n.png; with ``sequences``, three to a sequence."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(1, n + 1):
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i}.png"), np.zeros((8, 8), np.uint8))
    if sequences:
        rows = "".join(f"{i}.png,{(i - 1) // 3 + 1}\n" for i in range(1, n + 1))
        (root / "sequences.csv").write_text("file,sequence\n" + rows)


def test_load_pairs_keeps_the_split_that_training_runs_use(tmp_path):
    # pinned from lsdseg.cli.train_cmd.load_pairs before it moved to lsdseg.data: runs that
    # resume must see the same pairs, in the same order, on each side
    from lsdseg.data import dataset_of, load_pairs

    _stills(tmp_path / "alpha", 10, sequences=False)
    _stills(tmp_path / "beta", 12, sequences=True)
    dirs = [str(tmp_path / "alpha"), str(tmp_path / "beta")]
    datasets: dict[str, dict] = {}
    train, val = load_pairs(dirs, None, 0.25, 7, datasets)
    assert [p.group for p in train] == [
        *("alpha:2", "alpha:3", "alpha:4", "alpha:5", "alpha:6", "alpha:7", "alpha:10"),
        *(["beta:2"] * 3 + ["beta:3"] * 3 + ["beta:4"] * 3),
    ]
    assert [f"{p.group}|{p.image.name}" for p in val] == [
        *("alpha:1|1.png", "alpha:8|8.png", "alpha:9|9.png"),
        *("beta:1|1.png", "beta:1|2.png", "beta:1|3.png"),
    ]
    assert [dataset_of(p.group) for p in val] == ["alpha"] * 3 + ["beta"] * 3
    assert dataset_of("no-prefix") == ""
    assert datasets["beta"]["grouped_by"] == "sequences.csv"
    assert datasets["alpha"]["grouped_by"] == "file names (one image a group)"
    assert "video_frame_share" in datasets["alpha"] and "video_frame_share" not in datasets["beta"]
    record = split_record(train, val, datasets, 7, 0.25)
    assert [e["image"] for e in record["val"]] == [
        *("alpha/images/1.png", "alpha/images/8.png", "alpha/images/9.png"),
        *("beta/images/1.png", "beta/images/2.png", "beta/images/3.png"),
    ]
    assert (record["datasets"]["alpha"]["train"], record["datasets"]["beta"]["val"]) == (7, 3)
    # with validation folders every pair of dirs trains, in order
    train2, val2 = load_pairs(dirs[:1], dirs[1:], 0.25, 7)
    assert [p.image.name for p in train2] == [f"{i}.png" for i in range(1, 11)]
    assert [p.group for p in val2] == [f"beta:{(i - 1) // 3 + 1}" for i in range(1, 13)]


def test_load_pairs_without_masks_is_a_data_error(tmp_path):
    from lsdseg.data import DataError, load_pairs

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "1.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="no image/mask pairs found"):
        load_pairs([str(tmp_path)], None, 0.25, 0)
