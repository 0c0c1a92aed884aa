"""The frame-level decision: the presence head, its training, polyp-free crops and the filter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lsdseg.checkpoint import load_checkpoint, save_checkpoint
from lsdseg.decision import PresenceFilter
from lsdseg.negatives import MARGIN, polyp_free_crop
from lsdseg.presence import PresenceHead, pool
from lsdseg.presence_train import (
    PresenceTrainConfig,
    choose_threshold,
    fit_head,
    summary,
    with_head,
)
from lsdseg.segmenter import Segmenter


def _frame(seed: int, h: int = 48, w: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- the head


def test_pool_is_mean_and_max_per_channel_of_each_map() -> None:
    h = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    g = torch.randn(2, 2, 2, 2)
    v = pool([h, g])
    assert v.shape == (2, 10)
    torch.testing.assert_close(v[:, :3], h.mean(dim=(2, 3)))
    torch.testing.assert_close(v[:, 3:6], h.amax(dim=(2, 3)))
    torch.testing.assert_close(v[:, 6:8], g.mean(dim=(2, 3)))
    torch.testing.assert_close(v[:, 8:], g.amax(dim=(2, 3)))


def test_model_without_a_head_scores_every_frame_one(make_model, make_config) -> None:
    model = make_model(make_config(presence=0))
    assert model.presence is None
    x = torch.randn(2, 3, 64, 64)
    _, score = model.encode_image_and_score(x)
    assert torch.equal(score, torch.ones(2))


def test_score_is_the_heads_probability_of_the_encoder_features(tiny_model) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        z_x, score = tiny_model.encode_image_and_score(x)
        _, maps = tiny_model.image_ae.encode_with_presence_features(x)
        want = torch.sigmoid(tiny_model.presence(maps))
    assert [m.shape[1] for m in maps] == list(tiny_model.image_ae.presence_channels)
    torch.testing.assert_close(score, want)
    torch.testing.assert_close(z_x, tiny_model.encode_image(x))  # the latent is unchanged


# ----------------------------------------------------------------------------- the decision


def _segmenter(model) -> Segmenter:
    return Segmenter(model, "cpu")


def test_a_frame_below_the_presence_threshold_gets_an_empty_mask(tiny_model) -> None:
    seg = _segmenter(tiny_model)
    frame = _frame(1)
    # threshold 0: every frame is a polyp frame, the mask is mean > threshold
    every = seg(frame, seed=3, threshold=0.01, presence_threshold=0.0)
    assert every.present and every.mask.any()
    never = seg(frame, seed=3, threshold=0.01, presence_threshold=1.0)
    assert not never.present and not never.mask.any()
    assert never.score == every.score and 0 < never.score < 1
    # the maps stay: a weak suspicion can still be shown
    np.testing.assert_array_equal(never.mean, every.mean)
    np.testing.assert_array_equal(never.mutual_info, every.mutual_info)
    at_score = seg(frame, seed=3, threshold=0.01, presence_threshold=every.score)
    assert at_score.present  # score >= threshold holds a polyp


def test_presence_threshold_is_range_checked(tiny_model) -> None:
    seg = _segmenter(tiny_model)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="presence_threshold"):
            seg(_frame(0), presence_threshold=bad)


def test_batched_frames_get_their_own_scores(tiny_model) -> None:
    seg = _segmenter(tiny_model)
    frames = [_frame(1), _frame(2)]
    alone = [seg(f, seed=5) for f in frames]
    batch = seg(frames, seed=[5, 5])
    for a, b in zip(alone, batch, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.present == b.present


# ----------------------------------------------------------------------------- polyp-free crops


def _polyp_frame(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    image = _frame(7, h, w)
    mask = np.zeros((h, w), bool)
    mask[10:40, 100:140] = True  # a polyp in the top right
    return image, mask


def test_a_polyp_free_crop_keeps_clear_of_the_polyp() -> None:
    image, mask = _polyp_frame()
    marked = image.copy()
    marked[mask] = 0  # find where the crop came from by its content
    crop = polyp_free_crop(marked, mask)
    assert crop is not None and crop.shape[0] == crop.shape[1]
    assert crop.shape[0] >= 0.3 * 120
    assert not (crop == 0).all(axis=2).any()  # no polyp pixel inside
    # the largest square fits left of the polyp dilated by the margin
    assert crop.shape[1] <= 100 - int(MARGIN * 120) + 2


def test_no_crop_when_the_polyp_fills_the_frame() -> None:
    image, mask = _frame(1, 64, 64), np.ones((64, 64), bool)
    assert polyp_free_crop(image, mask) is None


def test_random_crops_are_reproducible_and_resized() -> None:
    image, mask = _polyp_frame()
    a = polyp_free_crop(image, mask, size=32, rng=np.random.default_rng(4))
    b = polyp_free_crop(image, mask, size=32, rng=np.random.default_rng(4))
    assert a is not None and a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- training


def test_fit_head_separates_and_takes_raw_features() -> None:
    g = torch.Generator().manual_seed(0)
    n, c = 400, 6
    labels = torch.arange(n) % 2 == 0
    feats = torch.randn(n, 2 * c, generator=g) * 5 + 100  # far from standardised
    feats[labels, 0] += 40.0  # one channel tells them apart (8 standard deviations)
    cfg = PresenceTrainConfig(hidden=8, steps=300, batch_size=64)
    head = fit_head(feats, labels, [c], cfg)
    with torch.no_grad():
        p = torch.sigmoid(head.forward_pooled(feats))
    assert float((p[labels] > 0.5).float().mean()) > 0.95
    assert float((p[~labels] < 0.5).float().mean()) > 0.95


def test_fit_head_needs_both_kinds() -> None:
    with pytest.raises(ValueError, match="both"):
        fit_head(torch.randn(8, 4), torch.ones(8, dtype=torch.bool), [2], PresenceTrainConfig())


def test_choose_threshold_keeps_the_asked_sensitivity() -> None:
    scores = np.linspace(0.5, 1.0, 100)
    t = choose_threshold(scores, 1.0)
    assert np.mean(scores >= t) == 1.0 and t == pytest.approx(0.25)  # nothing below: halfway
    t99 = choose_threshold(scores, 0.99)
    assert np.mean(scores >= t99) == 0.99
    assert t99 == pytest.approx((scores[0] + scores[1]) / 2)
    # a polyp-free score below the lowest kept one: the threshold sits in the middle of the gap
    t = choose_threshold(scores, 1.0, np.array([0.1, 0.4, 0.9]))
    assert t == pytest.approx(0.45)


def test_summary_counts_judged_frames_per_set() -> None:
    scores = {"polyp": np.array([0.9, 0.8, 0.2]), "normal": np.array([0.1, 0.6, 0.05, 0.0])}
    table = summary(scores, 0.5)
    assert table["polyp"]["judged_polyp"] == pytest.approx(2 / 3)
    assert table["normal"]["judged_polyp"] == pytest.approx(1 / 4)
    assert 0.5 < table["normal"]["auroc"] <= 1.0


def test_a_checkpoint_with_a_head_round_trips(tmp_path, make_model, make_config) -> None:
    model = make_model(make_config(presence=0))
    head = PresenceHead(model.image_ae.presence_channels, 5)
    new = with_head(model, head, 0.42)
    assert new.cfg.presence == 5 and new.cfg.sampler.presence_threshold == 0.42
    for k, v in model.state_dict().items():  # the segmentation weights are the model's
        assert torch.equal(new.state_dict()[k], v)
    loaded = load_checkpoint(save_checkpoint(new, tmp_path / "ckpt"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = new.encode_image_and_score(x)[1], loaded.encode_image_and_score(x)[1]
    torch.testing.assert_close(a, b)


def test_train_config_is_range_checked() -> None:
    for bad in ({"views": 0}, {"min_sensitivity": 0.2}, {"lr": float("nan")}, {"hidden": 0}):
        with pytest.raises(ValueError):
            dataclasses.replace(PresenceTrainConfig(), **bad)


# ----------------------------------------------------------------------------- over time


def _run(f: PresenceFilter, decisions: str) -> str:
    return "".join("1" if f.update(c == "1") else "0" for c in decisions)


def test_an_isolated_false_alarm_is_never_shown() -> None:
    assert _run(PresenceFilter(), "0001000000100000") == "0" * 16
    assert _run(PresenceFilter(), "0011000000") == "0" * 10  # two in five are not enough


def test_a_polyp_shows_from_its_third_frame_and_survives_dips() -> None:
    assert _run(PresenceFilter(), "0001111011101111") == "0000011111111111"
    # it goes once fewer than two of the last five hold one
    assert _run(PresenceFilter(), "111110000000") == "001111110000"  # 3 frames of delay


def test_a_window_of_one_passes_each_decision_through() -> None:
    pattern = "0110100111"
    assert _run(PresenceFilter(1, 1, 1), pattern) == pattern


def test_reset_forgets_the_video() -> None:
    f = PresenceFilter()
    _run(f, "11111")
    f.reset()
    assert _run(f, "1") == "0"


def test_filter_settings_are_checked() -> None:
    for window, on, off in ((5, 6, 2), (5, 2, 3), (0, 0, 0), (5, 3, 0)):
        with pytest.raises(ValueError, match="off <= on <= window"):
            PresenceFilter(window, on, off)


# ----------------------------------------------------------------------------- the CLI


def _dataset(root, n: int, polyp: bool, masks: bool = True, seed: int = 0):
    """``n`` 48x64 frames: a red disc (with its mask) on polyp frames, plain mucosa else."""
    import cv2

    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.full((48, 64, 3), 60, np.uint8) + rng.integers(0, 20, (48, 64, 3), np.uint8)
        m = np.zeros((48, 64), np.uint8)
        if polyp:
            cv2.circle(m, (16 + i % 30, 24), 8, 255, -1)
            img[m > 0] = (90, 90, 220)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        if masks:
            cv2.imwrite(str(root / "masks" / f"{i}.png"), m)
    return root


def test_evaluate_counts_false_alarms_on_a_folder_of_polyp_free_frames(capsys, tiny, tmp_path):
    import json

    from lsdseg.cli.main import main

    free = _dataset(tmp_path / "free", 4, polyp=False, masks=False)
    argv = ["evaluate", "--data", str(free), "--weights", tiny, "--project", str(tmp_path)]
    # the tiny model's head is untrained: threshold 0 draws on every frame, 1 on none
    assert main([*argv, "--name", "all", "--threshold", "0.01"]) == 0, capsys.readouterr().err
    assert main([*argv, "--name", "none", "--threshold", "0.01", "--presence-threshold", "1"]) == 0
    out = capsys.readouterr().out
    assert "false alarms" in out and "polyp-free" in out
    every = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert every["polyp_frames"] == 0 and every["polyp_free_frames"] == 4
    assert every["false_alarm_rate"] == 1.0  # a mask drawn on each polyp-free frame
    assert "dice" not in every  # no Dice without polyp frames
    none = json.loads((tmp_path / "none" / "summary.json").read_text())
    assert none["settings"]["presence_threshold"] == 1.0 and none["false_alarm_rate"] == 0.0


def test_evaluate_keeps_dice_to_polyp_frames_and_scores_both_kinds(tiny, tmp_path):
    from lsdseg.data import find_pairs
    from lsdseg.evaluate import evaluate

    polyps = _dataset(tmp_path / "p", 3, polyp=True)
    empty = _dataset(tmp_path / "e", 2, polyp=False)  # masks that are all background
    seg = Segmenter(load_checkpoint(tiny))
    pairs = find_pairs(polyps)[1] + find_pairs(empty)[1]
    ev = evaluate(seg, pairs, threshold=0.01)
    s = ev.summary
    assert s["polyp_frames"] == 3 and s["polyp_free_frames"] == 2
    assert [r["polyp"] for r in ev.rows] == [True, True, True, False, False]
    assert all("dice" not in r for r in ev.rows[3:])  # empty masks are not scored for Dice
    assert s["sensitivity"] == 1.0 and s["false_alarm_rate"] == 1.0  # threshold 0.01: drawn
    assert 0.0 <= s["score_auroc"] <= 1.0
    never = evaluate(seg, pairs, threshold=0.01, presence_threshold=1.0).summary
    assert never["sensitivity"] == 0.0 and never["false_alarm_rate"] == 0.0


def test_train_reads_negatives_and_records_them_in_the_split(tmp_path):
    from lsdseg.data import load_pairs
    from lsdseg.splits import split_record

    polyps = _dataset(tmp_path / "polyps", 6, polyp=True)
    free = _dataset(tmp_path / "free", 120, polyp=False, masks=False)
    datasets: dict = {}
    train, val = load_pairs([str(polyps)], None, 0.3, 0, datasets, [str(free)])
    negatives = [p for p in train + val if p.mask is None]
    assert len(negatives) == 120
    assert (
        datasets["free"]["negatives"] == 120 and "50 neighbours" in datasets["free"]["grouped_by"]
    )
    # whole runs of 50 neighbours are held out, never single frames
    held = {p.group for p in val if p.mask is None}
    assert held and all(sum(p.group == g for p in val) in (50, 20) for g in held)
    record = split_record(train, val, datasets, 0, 0.3)
    flagged = [e for e in record["train"] + record["val"] if e.get("negative")]
    assert len(flagged) == 120


def test_train_stage_presence_fits_a_head_and_chooses_a_threshold(capsys, tiny, tmp_path):
    import json

    from lsdseg.cli.main import main

    polyps = _dataset(tmp_path / "polyps", 12, polyp=True)
    free = _dataset(tmp_path / "free", 60, polyp=False, masks=False, seed=1)
    out = tmp_path / "run"
    argv = ["train", "--stage", "presence", "--init", tiny, "--data", str(polyps)]
    argv += ["--negatives", str(free), "--out", str(out), "--presence-views", "2"]
    argv += ["--val-fraction", "0.3", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().err  # train reports on stderr
    assert "presence threshold" in text and "polyp-free" in text
    report = json.loads((out / "presence.json").read_text())
    new = load_checkpoint(out / "best")
    assert new.cfg.sampler.presence_threshold == pytest.approx(report["threshold"], abs=1e-6)
    assert new.cfg.presence == 64
    old = load_checkpoint(tiny)
    for k, v in old.state_dict().items():
        if not k.startswith("presence."):  # the rest is frozen
            assert torch.equal(new.state_dict()[k], v), k
    splits = json.loads((out / "splits.json").read_text())
    assert any(e.get("negative") for e in splits["val"])
    assert report["validation"]["polyp"]["judged_polyp"] >= 0.99


def test_train_stage_presence_needs_a_checkpoint(cli_error, tmp_path):
    polyps = _dataset(tmp_path / "polyps", 4, polyp=True)
    out = str(tmp_path / "run")
    err = cli_error(["train", "--stage", "presence", "--data", str(polyps), "--out", out])
    assert "--init" in err


def test_decide_draws_a_held_frame_from_its_mean_and_hides_an_unconfirmed_one() -> None:
    from lsdseg.cli.pipeline import decide, state_word
    from lsdseg.segmenter import Result

    def result(present: bool) -> Result:
        mean = np.zeros((4, 4), np.float32)
        mean[1:3, 1:3] = 0.9
        z = np.zeros((4, 4), np.float32)
        mask = (mean > 0.5) if present else np.zeros((4, 4), bool)
        return Result(mask, mean, z, z, z, z[None], 1.0, 0.0, 0, 0.7, present, 0.5)

    f = PresenceFilter()
    shown = [decide(result(True), f) for _ in range(3)]
    assert shown == [False, False, True]
    r = result(False)  # a dip: the filter holds the polyp, drawn from the mean
    assert decide(r, f) and r.mask.sum() == 4
    r = result(True)
    assert not decide(r, PresenceFilter()) and not r.mask.any()  # first frame: not yet
    assert state_word(True, False, False) == "UNSURE"
    assert state_word(False, False, False) == "no polyp"
    assert state_word(True, True, False) == "POLYP"
    assert state_word(False, True, True) == "UNSURE"


def test_frame_views_shrink_large_frames_and_label_them(tmp_path):
    import cv2

    from lsdseg.data import Pair
    from lsdseg.presence_train import frame_views

    image, mask = _polyp_frame(600, 800)
    cv2.imwrite(str(tmp_path / "i.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), mask.astype(np.uint8) * 255)
    pair = Pair(tmp_path / "i.png", tmp_path / "m.png")
    frames = list(frame_views(pair, 3, 0, "frame", max_side=150))
    assert [p for _, p in frames] == [True] * 3
    assert frames[0][0].shape == (150, 200, 3)  # the shorter side to 150, aspect kept
    crops = list(frame_views(pair, 2, 0, "crop", max_side=150))
    assert [p for _, p in crops] == [False, False] and crops[0][0].shape[0] >= 45
    free = Pair(tmp_path / "i.png")  # no mask: a polyp-free frame, and no crops to cut
    assert [p for _, p in frame_views(free, 2, 0, "frame")] == [False, False]
    assert list(frame_views(free, 2, 0, "crop")) == []


def test_train_stage_presence_without_polyp_free_frames_says_what_to_add(cli_error, tiny, tmp_path):
    import cv2

    polyps = _dataset(tmp_path / "polyps", 6, polyp=True)
    for f in (polyps / "masks").iterdir():  # polyps that fill the frame: no crop is polyp-free
        cv2.imwrite(str(f), np.full((48, 64), 255, np.uint8))
    argv = ["train", "--stage", "presence", "--init", tiny, "--data", str(polyps)]
    err = cli_error([*argv, "--out", str(tmp_path / "run"), "--val-fraction", "0.3"])
    assert "no polyp-free frame" in err and "--negatives" in err
