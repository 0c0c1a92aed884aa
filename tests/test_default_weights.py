"""The bundled default weights: present, small, documented, and good on held-out real frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import lsdseg
from lsdseg.metrics import dice, uncertainty_auroc
from lsdseg.segmenter import bundled_weights

# the real datasets sit beside the checkout on the project's machines (../shared/data)
_SIBLING = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = Path(os.environ.get("LSDSEG_DATA", _SIBLING if _SIBLING.is_dir() else "/work/shared/data"))


@pytest.fixture(scope="module")
def seg() -> lsdseg.Segmenter:
    return lsdseg.load("default")


def test_bundled_checkpoint_is_small_and_carries_its_card(seg) -> None:
    folder = bundled_weights()
    assert (folder / "model.safetensors").stat().st_size < 20e6
    card = (folder / "card.md").read_text()
    assert "research and educational use only" in card and "Kvasir-SEG" in card
    assert "CVC-ClinicDB" in card
    s = seg.config.sampler
    assert s.hypotheses == 8 and 1 <= s.steps <= 4 and 0 < s.threshold < 1


def test_default_weights_run_on_any_frame(seg) -> None:
    frame = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    r = seg(frame, seed=0)
    assert r.mask.shape == (120, 200) and r.hypotheses.shape == (8, 120, 200)
    assert np.isfinite(r.mean).all() and r.latents is not None


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "cvc-clinicdb").is_dir(), reason="real data not available")
def test_held_out_cvc_sequence_is_segmented_and_errors_are_uncertain(seg) -> None:
    # sequence 5 was held out from training; every 5th frame keeps the test quick
    from lsdseg.data import find_pairs, load_sample

    _, pairs = find_pairs(DATA / "cvc-clinicdb")
    frames = [load_sample(p) for p in pairs if p.group == "5"][::5]
    dices, aurocs = [], []
    for i, (image, mask) in enumerate(frames):
        r = seg(image, seed=i, order="rgb")
        m = torch.from_numpy(mask)
        dices.append(dice(torch.from_numpy(r.mask), m).item())
        error = torch.from_numpy(r.mask) != m
        aurocs.append(uncertainty_auroc(torch.from_numpy(r.entropy), error).item())
    assert np.mean(dices) > 0.7, dices
    assert np.nanmean(aurocs) > 0.75, aurocs
