"""Tests for lsdseg.validation: the sampler's Dice, thresholded as the checkpoint ships it."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from lsdseg.data import Pair, find_pairs
from lsdseg.dataset import SegmentationDataset
from lsdseg.model import LatentSegmenter
from lsdseg.validation import validate


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[Pair]:
    root = tmp_path_factory.mktemp("val")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        cv2.circle(mask, (20 + 10 * i, 32), 12, 255, -1)
        cv2.imwrite(str(root / "images" / f"{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask)
    return find_pairs(root)[1]


def _reference_dice(model: LatentSegmenter, ds: SegmentationDataset, k: int, seed: int) -> float:
    """Mean Dice in float64 numpy of mean p > threshold, with validate's noise draws (batch 8)."""
    gen = torch.Generator().manual_seed(seed)
    x = model.normalize(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    noise = torch.randn((len(ds), k, *model.latent_shape), generator=gen)
    with torch.no_grad():
        p = model.hypotheses(x, noise, 2, 0.0).double().mean(dim=1).numpy()
    pred = p > model.cfg.sampler.threshold
    dices = []
    for i in range(len(ds)):
        y = ds[i]["mask"][0].numpy() > 0.5
        dices.append(2 * (pred[i] & y).sum() / (pred[i].sum() + y.sum()))
    return float(np.mean(dices))


def test_validation_thresholds_at_the_models_sampler_threshold(tiny_model, pairs) -> None:
    ds = SegmentationDataset(pairs, tiny_model.cfg.image_size)
    got = {}
    for threshold in (0.3, 0.5, 0.7):
        sampler = dataclasses.replace(tiny_model.cfg.sampler, threshold=threshold)
        model = LatentSegmenter(dataclasses.replace(tiny_model.cfg, sampler=sampler))
        model.load_state_dict(tiny_model.state_dict())
        got[threshold] = validate(model, ds, hypotheses=3, steps=2, seed=1)["dice"]
        assert got[threshold] == pytest.approx(_reference_dice(model.eval(), ds, 3, 1), abs=1e-6)
    assert len(set(got.values())) == 3  # the threshold matters for this model
