"""The pictures of ``lsdseg evaluate --save-vis``, on hand-built masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsdseg.cli.evalvis import (
    GT_BGR,
    PANEL_H,
    PRED_BGR,
    Reliability,
    image_panel,
    summary_figure,
)
from lsdseg.metrics import ece_pooled


def near(img: np.ndarray, colour: tuple[int, int, int], tol: int = 30) -> np.ndarray:
    """(H, W) bool: pixels within ``tol`` of ``colour`` in every channel."""
    return (np.abs(img.astype(int) - np.array(colour)) <= tol).all(axis=-1)


def discs(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth disc on the left and a predicted one shifted right of it."""
    yy, xx = np.mgrid[:h, :w]
    gt = (yy - h / 2) ** 2 + (xx - w * 0.35) ** 2 < (h / 5) ** 2
    pred = (yy - h / 2) ** 2 + (xx - w * 0.6) ** 2 < (h / 5) ** 2
    return gt, pred


def test_image_panel_draws_both_contours_titles_and_the_scale():
    h, w = 150, 200  # drawn at PANEL_H = 300: twice the size
    image = np.full((h, w, 3), 110, np.uint8)
    gt, pred = discs(h, w)
    entropy = np.zeros((h, w), np.float32)
    row = {"labelled": True, "dice": 0.4321, "iou": 0.2756}
    panel = image_panel(image, gt, pred, entropy, "case7", row)
    scale = PANEL_H / h
    assert panel.shape == (28 + PANEL_H + 26, 2 * round(w * scale) + 70, 3)
    left = panel[28 : 28 + PANEL_H, : round(w * scale)]
    yellow, blue = near(left, GT_BGR), near(left, PRED_BGR)
    assert yellow.sum() > 100 and blue.sum() > 100
    # each contour lies on its own mask's edge: yellow left of the middle, blue right of it
    cols = np.arange(left.shape[1])
    assert cols[yellow.any(axis=0)].mean() < cols[blue.any(axis=0)].mean()
    assert not near(panel[:28], (255, 255, 255), 0).all()  # a title is written
    assert near(panel[-26:], GT_BGR).any() and near(panel[-26:], PRED_BGR).any()  # legend
    bar = panel[28 : 28 + PANEL_H, -70:]
    assert len(np.unique(bar.reshape(-1, 3), axis=0)) > 50  # the colour scale


def test_an_unlabelled_image_gets_the_prediction_only():
    image = np.full((100, 100, 3), 110, np.uint8)
    _, pred = discs(100, 100)
    panel = image_panel(image, None, pred, np.zeros((100, 100), np.float32), "u", None)
    left = panel[:, :PANEL_H]  # title, the image and the legend (the colour bar has yellow)
    assert near(left, PRED_BGR).sum() > 100 and not near(left, GT_BGR).any()


def test_reliability_is_the_pooled_ece_of_the_metrics():
    rng = np.random.default_rng(0)
    rel = Reliability()
    probs, masks = [], []
    for h, w in [(30, 40), (30, 40), (30, 40)]:
        p = rng.random((h, w)).astype(np.float32)
        p[0, 0], p[0, 1] = 0.0, 1.0  # the closed last bin
        m = rng.random((h, w)) < p  # calibrated-ish
        rel.update(p, m)
        probs.append(p)
        masks.append(m)
    expected = ece_pooled(torch.from_numpy(np.stack(probs)), torch.from_numpy(np.stack(masks)))
    assert rel.ece == pytest.approx(expected.item(), abs=1e-12)
    assert rel.count.sum() == 3 * 30 * 40


def test_summary_figure_has_three_plots():
    rel = Reliability()
    rel.update(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), np.eye(10, dtype=bool))
    fig = summary_figure([0.9, 0.8, float("nan"), 0.1], [0.1, 0.02, 0.0, 0.3], rel, "run")
    assert fig.shape == (26 + 300, 3 * 380, 3)
    for i in range(3):  # each plot has ink: its axes, ticks and data
        plot = fig[26:, i * 380 : (i + 1) * 380]
        assert (plot < 200).any(axis=-1).sum() > 500


def test_evaluate_pictures_show_the_map_segment_draws_by_default(tmp_path):
    """segment draws the mutual information by default; evaluate's pictures once showed the
    entropy of the mean instead."""
    from types import SimpleNamespace

    import cv2

    from lsdseg.cli.evaluate_cmd import Pictures
    from lsdseg.cli.overlay import OverlayOptions, colourise

    assert OverlayOptions().measure == "mi"
    h = w = PANEL_H
    gt, pred = discs(h, w)
    ones, zeros = np.ones((h, w), np.float32), np.zeros((h, w), np.float32)
    result = SimpleNamespace(mask=pred, mean=pred.astype(np.float32), entropy=ones,
                             mutual_info=zeros)  # fmt: skip
    pictures = Pictures(tmp_path)
    pictures.add("x", np.full((h, w, 3), 110, np.uint8), gt, result, {"labelled": True,
                 "dice": 0.5, "iou": 0.3})  # fmt: skip
    panel = cv2.imread(str(tmp_path / "vis" / "x.png"))
    right = panel[28 + 10 : 28 + 40, w + 10 : w + 40].reshape(-1, 3)  # away from any contour
    assert (np.abs(right.astype(int) - colourise(zeros[:1, :1], 1.0, "turbo")[0, 0]) <= 2).all()


def test_the_caption_names_the_map_and_its_unit(monkeypatch):
    from lsdseg.cli import evalvis

    texts = []
    real = evalvis._put
    monkeypatch.setattr(
        evalvis, "_put", lambda img, text, *a: (texts.append(text), real(img, text, *a))
    )
    gt, pred = discs(100, 100)
    image_panel(np.full((100, 100, 3), 110, np.uint8), gt, pred, np.zeros((100, 100), np.float32),
                "x", None)  # fmt: skip
    assert (
        "uncertainty: mutual information of the K hypotheses, bits (white: ground truth)" in texts
    )
    texts.clear()
    image_panel(np.full((100, 100, 3), 110, np.uint8), gt, pred, np.zeros((100, 100), np.float32),
                "x", None, label="entropy of the mean")  # fmt: skip
    assert "uncertainty: entropy of the mean, bits (white: ground truth)" in texts


@pytest.mark.parametrize("shape", [(1, 5000), (5000, 1), (3, 20000)])
def test_an_extreme_aspect_ratio_gives_a_bounded_panel(shape):
    from lsdseg.cli.evalvis import PANEL_H, PANEL_W

    h, w = shape
    image = np.full((h, w, 3), 90, np.uint8)
    maps = np.zeros((h, w), bool)
    panel = image_panel(image, maps, maps, np.zeros((h, w), np.float32), "x", None)
    assert panel.shape[0] == 28 + PANEL_H + 26
    assert 2 * PANEL_W[0] + 70 <= panel.shape[1] <= 2 * PANEL_W[1] + 70
