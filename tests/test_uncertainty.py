"""Tests for lsdseg.uncertainty against numpy float64, scipy and hand-computed Dice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from lsdseg.uncertainty import aggregate, agreement, binary_entropy, unsure_score, unsure_window


def _h2(q: np.ndarray) -> np.ndarray:
    """Binary entropy in bits with 0 log 0 = 0, float64."""
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log2(q), 0.0) + np.where(
            q < 1, (1 - q) * np.log2(1 - q), 0.0
        )
    return -terms


def _probabilities(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.random(shape)
    p[rng.random(shape) < 0.1] = 0.0  # saturated pixels, as a trained model produces
    p[rng.random(shape) < 0.1] = 1.0
    return p


def test_binary_entropy_matches_scipy() -> None:
    q = np.array([0.0, 1e-3, 0.1, 0.3, 0.5, 0.77, 0.999, 1.0])
    expected = [scipy_entropy([x, 1 - x], base=2) for x in q]
    got = binary_entropy(torch.tensor(q, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=5e-5)
    assert got[4] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(5, 7, 9), (2, 4, 6, 3), (2, 3, 1, 4, 4)])
def test_aggregate_matches_float64(shape: tuple[int, ...]) -> None:
    p = _probabilities(0, shape)
    got = aggregate(torch.tensor(p, dtype=torch.float32))
    mean = p.mean(axis=-3)
    std = p.std(axis=-3)  # population std (ddof=0)
    entropy = _h2(mean)
    mi = entropy - _h2(p).mean(axis=-3)
    out_shape = shape[:-3] + shape[-2:]
    for name, expected in (("mean", mean), ("std", std), ("entropy", entropy), ("mutual_info", mi)):
        value = getattr(got, name)
        assert value.shape == out_shape, name
        # the clamp of p to [1e-6, 1 - 1e-6] moves H(0) to ~2e-5 bits
        np.testing.assert_allclose(value.numpy(), expected, atol=1e-4, err_msg=name)
    assert torch.all(got.mutual_info >= 0)
    assert torch.all(got.mutual_info <= got.entropy + 1e-6)


def test_mutual_info_is_never_negative() -> None:
    for seed in range(5):
        p = torch.tensor(_probabilities(seed, (8, 16, 16)), dtype=torch.float32)
        assert float(aggregate(p).mutual_info.min()) >= 0.0


def test_identical_hypotheses_have_no_disagreement() -> None:
    one = torch.tensor(_probabilities(3, (1, 6, 6)), dtype=torch.float32)
    agg = aggregate(one.expand(5, 6, 6))
    np.testing.assert_allclose(agg.mutual_info.numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(agg.std.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(agg.mean.numpy(), one[0].numpy(), atol=1e-6)
    assert float(agg.entropy.max()) > 0.5  # uncertain, but every hypothesis agrees


def test_full_disagreement_is_one_bit() -> None:
    p = torch.zeros(4, 2, 2)
    p[:2] = 1.0  # two say foreground, two say background
    agg = aggregate(p)
    np.testing.assert_allclose(agg.mean.numpy(), 0.5)
    np.testing.assert_allclose(agg.std.numpy(), 0.5)
    np.testing.assert_allclose(agg.entropy.numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(agg.mutual_info.numpy(), 1.0, atol=1e-4)


def test_aggregate_rejects_too_few_dims() -> None:
    with pytest.raises(ValueError, match="expected"):
        aggregate(torch.rand(4, 4))


def _agreement_by_hand(masks: np.ndarray) -> float:
    k = masks.shape[0]
    if k < 2:
        return 1.0
    scores = []
    for i, j in itertools.permutations(range(k), 2):
        a, b = masks[i].astype(bool), masks[j].astype(bool)
        total = a.sum() + b.sum()
        scores.append(1.0 if total == 0 else 2.0 * (a & b).sum() / total)
    return float(np.mean(scores))


def test_agreement_matches_pairwise_dice() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 4, 6, 7)) < 0.4  # (B, K, H, W)
    masks[1, 2] = False  # an empty hypothesis among non-empty ones
    masks[2, :2] = False  # two empty hypotheses: their pair counts as agreement
    got = agreement(torch.from_numpy(masks))
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), [_agreement_by_hand(m) for m in masks], rtol=1e-6)


def test_agreement_hand_checked_cases() -> None:
    a = torch.zeros(2, 2, 3)
    a[0, 0, 0] = a[0, 0, 1] = 1  # |A| = 2
    a[1, 0, 1] = a[1, 1, 1] = 1  # |B| = 2, one pixel shared
    assert float(agreement(a)) == pytest.approx(0.5)  # 2 * 1 / (2 + 2)
    assert float(agreement(torch.zeros(3, 4, 4))) == 1.0  # all empty
    assert float(agreement(torch.ones(3, 4, 4))) == 1.0
    single = agreement(torch.rand(2, 1, 4, 4) > 0.5)  # K = 1
    assert single.shape == (2,) and torch.all(single == 1.0)
    disjoint = torch.zeros(2, 1, 2)
    disjoint[0, 0, 0] = disjoint[1, 0, 1] = 1
    assert float(agreement(disjoint)) == 0.0


def test_unsure_score_is_zero_without_a_candidate_and_low_for_crisp_masks() -> None:
    empty = torch.zeros(8, 64, 64)
    agg = aggregate(empty)
    assert unsure_score(agg.mean, agg.entropy).item() == 0.0
    crisp = torch.zeros(8, 64, 64)
    crisp[:, 16:48, 16:48] = 0.999  # every hypothesis draws the same sharp square
    agg = aggregate(crisp)
    assert unsure_score(agg.mean, agg.entropy).item() < 0.02


def test_unsure_score_is_the_mean_entropy_over_the_dilated_region() -> None:
    mean = torch.zeros(32, 32)
    mean[10:20, 10:20] = 0.5  # one bit of entropy inside
    ent = binary_entropy(mean)
    # the 10x10 seed dilated by a 5x5 window is 14x14; entropy 1 on 100 of its 196 pixels
    assert unsure_score(mean, ent, window=5).item() == pytest.approx(100 / 196)
    # disagreeing hypotheses score higher than agreeing ones over the same region
    agree = torch.zeros(8, 32, 32)
    agree[:, 8:24, 8:24] = 1.0
    split = agree.clone()
    split[4:] = 0.0  # half the hypotheses see nothing
    a, b = aggregate(agree), aggregate(split)
    assert unsure_score(b.mean, b.entropy) > unsure_score(a.mean, a.entropy) + 0.5


def test_unsure_score_batches_and_checks_its_inputs() -> None:
    mean = torch.rand(3, 2, 16, 16)
    ent = binary_entropy(mean)
    batched = unsure_score(mean, ent)
    assert batched.shape == (3, 2)
    assert batched[1, 0] == pytest.approx(unsure_score(mean[1, 0], ent[1, 0]).item())
    assert unsure_window(256) == 17 and unsure_window(32) == 3 and unsure_window(64) == 5
    with pytest.raises(ValueError, match="same shape"):
        unsure_score(mean, ent[0])
    with pytest.raises(ValueError, match="odd"):
        unsure_score(mean, ent, window=4)
