"""Tests for lsdseg.metrics against scikit-learn, scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score, roc_auc_score

from lsdseg import metrics as M
from lsdseg.metrics.sets import _linear_assignment

H, W = 37, 53


def blobs(rng: np.random.Generator, n: int, h: int = H, w: int = W, frac: float = 0.3):
    """Smooth random blobs (realistic boundaries), about ``frac`` foreground per image."""
    noise = ndimage.gaussian_filter(rng.standard_normal((n, h, w)), sigma=(0, 3, 3))
    return noise > np.quantile(noise, 1 - frac, axis=(1, 2), keepdims=True)


def speckle(rng: np.random.Generator, n: int, p: float, h: int = H, w: int = W) -> np.ndarray:
    return rng.random((n, h, w)) < p


# --------------------------------------------------------------------------- overlap metrics
@pytest.mark.parametrize("seed", [0, 1])
def test_overlap_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred, target = blobs(rng, 5), speckle(rng, 5, 0.4) | blobs(rng, 5, frac=0.2)
    got = {
        name: getattr(M, name)(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
        for name in ("dice", "iou", "precision", "recall")
    }
    refs = {"dice": f1_score, "iou": jaccard_score, "precision": precision_score}
    refs["recall"] = recall_score
    for name, ref in refs.items():
        expected = [ref(t.ravel(), p.ravel()) for p, t in zip(pred, target, strict=True)]
        np.testing.assert_allclose(got[name], expected, rtol=1e-12, err_msg=name)
        assert got[name].dtype == np.float64 and got[name].shape == (5,)


def test_overlap_hand_computed_4x4() -> None:
    pred = torch.zeros(4, 4, dtype=torch.bool)
    target = torch.zeros(4, 4, dtype=torch.bool)
    pred[0, :4] = True  # 4 pixels
    target[0, 1:4] = True
    target[1, 0:3] = True  # 6 pixels, 3 shared with pred
    assert M.dice(pred, target).tolist() == pytest.approx([6 / 10])
    assert M.iou(pred, target).tolist() == pytest.approx([3 / 7])
    assert M.precision(pred, target).tolist() == pytest.approx([3 / 4])
    assert M.recall(pred, target).tolist() == pytest.approx([3 / 6])


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float32])
def test_accepts_binary_dtypes_and_2d_input(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    pred, target = blobs(rng, 1)[0], blobs(rng, 1)[0]
    ref = M.dice(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    got = M.dice(torch.from_numpy(pred).to(dtype), torch.from_numpy(target).to(dtype))
    assert got.shape == (1,) and got.dtype == torch.float64
    assert torch.equal(got, ref)


EMPTY, FULL = torch.zeros(1, 5, 6), torch.zeros(1, 5, 6)
FULL[0, 1:3, 2:5] = 1


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        # dice, iou, precision, recall, hd95
        (EMPTY, EMPTY, [1.0, 1.0, 1.0, 1.0, 0.0]),
        (EMPTY, FULL, [0.0, 0.0, 0.0, 0.0, float("nan")]),
        (FULL, EMPTY, [0.0, 0.0, 0.0, 0.0, float("nan")]),
        (FULL, FULL, [1.0, 1.0, 1.0, 1.0, 0.0]),
    ],
)
def test_empty_mask_conventions(pred: torch.Tensor, target: torch.Tensor, expected: list) -> None:
    fns = (M.dice, M.iou, M.precision, M.recall, M.hd95)
    got = [fn(pred, target).item() for fn in fns]
    np.testing.assert_equal(got, expected)


def test_batch_mixes_empty_and_nonempty_images() -> None:
    pred = torch.cat([EMPTY, FULL, EMPTY])
    target = torch.cat([EMPTY, FULL, FULL])
    np.testing.assert_equal(M.dice(pred, target).tolist(), [1.0, 1.0, 0.0])
    np.testing.assert_equal(M.hd95(pred, target).tolist(), [0.0, 0.0, float("nan")])


# --------------------------------------------------------------------------- HD95
def hd95_reference(pred: np.ndarray, target: np.ndarray, spacing=None) -> float:
    """Independent medpy-style HD95: scipy erosion + EDT, pooled directions, np.percentile."""
    cross = ndimage.generate_binary_structure(2, 1)

    def surface(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a_border = a ^ ndimage.binary_erosion(a, structure=cross)
        b_border = b ^ ndimage.binary_erosion(b, structure=cross)
        return ndimage.distance_transform_edt(~b_border, sampling=spacing)[a_border]

    return float(np.percentile(np.hstack([surface(pred, target), surface(target, pred)]), 95))


@pytest.mark.parametrize("spacing", [None, (0.7, 1.9)])
@pytest.mark.parametrize("kind", ["blobs", "wide", "speckle"])
def test_hd95_matches_scipy_reference(kind: str, spacing) -> None:
    rng = np.random.default_rng(11)
    if kind == "blobs":
        pred, target = blobs(rng, 4, frac=0.25), blobs(rng, 4, frac=0.35)
    elif kind == "wide":  # short boundaries relative to the width: brute-force cdist path
        pred, target = blobs(rng, 3, 23, 301, frac=0.04), blobs(rng, 3, 23, 301, frac=0.06)
    else:  # long boundaries relative to the width: separable column path
        pred, target = speckle(rng, 4, 0.08), blobs(rng, 4, frac=0.1) | speckle(rng, 4, 0.05)
    cross = ndimage.generate_binary_structure(2, 1)
    n_border = [(m ^ ndimage.binary_erosion(m, cross)).sum() for m in [*pred, *target]]
    width = pred.shape[-1]
    assert all(n <= width for n in n_border) if kind == "wide" else min(n_border) > width
    got = M.hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing=spacing)
    expected = [hd95_reference(p, t, spacing) for p, t in zip(pred, target, strict=True)]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_hd95_matches_medpy_if_installed() -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(5)
    pred, target = blobs(rng, 3, frac=0.2), blobs(rng, 3, frac=0.3)
    got = M.hd95(torch.from_numpy(pred), torch.from_numpy(target), spacing=(1.5, 0.5))
    expected = [
        binary.hd95(p, t, voxelspacing=(1.5, 0.5)) for p, t in zip(pred, target, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_hd95_hand_computed() -> None:
    pred, target = torch.zeros(10, 10), torch.zeros(10, 10)
    pred[1, 1] = 1
    target[4, 5] = 1  # offset (3, 4)
    assert M.hd95(pred, target).item() == pytest.approx(5.0)
    assert M.hd95(pred, target, spacing=(2.0, 1.0)).item() == pytest.approx((36 + 16) ** 0.5)
    # 3x3 square vs same square shifted right by 2: boundary distances are 0 or 2,
    # 4 of 16 pooled distances are 2 -> 95th percentile is 2.
    a, b = torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool)
    a[2:5, 1:4] = True
    b[2:5, 3:6] = True
    assert M.hd95(a, b).item() == pytest.approx(2.0)


# --------------------------------------------------------------------------- ECE
def ece_reference(prob: np.ndarray, target: np.ndarray, bins: int) -> float:
    p, y = prob.ravel(), target.ravel().astype(float)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return total


def test_ece_hand_computed() -> None:
    prob = torch.tensor([[0.1, 0.3], [0.6, 0.9]])
    target = torch.tensor([[0, 1], [0, 1]])
    # bin [0, .5): mean p .2, freq .5 -> .5 * .3; bin [.5, 1]: mean .75, freq .5 -> .5 * .25
    assert M.ece(prob, target, bins=2).item() == pytest.approx(0.275)
    # an edge value goes to the upper bin: 0.5 -> [.5, 1] (gap .5), 0.25 -> [0, .5) (gap .25)
    assert M.ece(torch.tensor([[0.5, 0.25]]), torch.tensor([[1, 0]]), bins=2).item() == 0.375
    # perfectly calibrated constant prediction
    calibrated = torch.full((1, 4, 4), 0.25)
    tgt = torch.zeros(1, 4, 4)
    tgt[0, 0] = 1
    assert M.ece(calibrated, tgt).item() == pytest.approx(0.0, abs=1e-15)
    # p = 0 and p = 1 land in the first and last bin: confident and right -> 0
    assert M.ece(torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 1]]), bins=3).item() == 0.0


@pytest.mark.parametrize("bins", [1, 7, 15])
def test_ece_matches_loop_reference_and_pooled(bins: int) -> None:
    rng = np.random.default_rng(bins)
    target = blobs(rng, 3)
    prob = 0.6 * rng.random(target.shape) + 0.4 * target * rng.random(target.shape)
    prob[0, 0, :5] = [0.0, 1.0, 0.5, 1 / 3, 2 / 3]
    got = M.ece(torch.from_numpy(prob), torch.from_numpy(target), bins=bins)
    np.testing.assert_allclose(
        got.numpy(), [ece_reference(p, t, bins) for p, t in zip(prob, target, strict=True)]
    )
    pooled = M.ece_pooled(torch.from_numpy(prob), torch.from_numpy(target), bins=bins)
    assert pooled.shape == () and pooled.dtype == torch.float64
    assert pooled.item() == pytest.approx(ece_reference(prob, target, bins), rel=1e-12)


# --------------------------------------------------------------------------- uncertainty AUROC
def test_uncertainty_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(7)
    error = speckle(rng, 4, 0.2)
    unc = np.round(error * 0.3 + rng.random(error.shape), 1)  # rounding creates many ties
    got = M.uncertainty_auroc(torch.from_numpy(unc), torch.from_numpy(error))
    expected = [roc_auc_score(e.ravel(), u.ravel()) for u, e in zip(unc, error, strict=True)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    pooled = M.uncertainty_auroc_pooled(torch.from_numpy(unc).float(), torch.from_numpy(error))
    assert pooled.item() == pytest.approx(roc_auc_score(error.ravel(), unc.ravel()), rel=1e-6)


def test_uncertainty_auroc_hand_cases_and_nan() -> None:
    unc = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]])
    error = torch.tensor([[[1, 0], [1, 0]]])
    # pairs (err, ok): (.9,.1)=1, (.9,.5)=1, (.5,.1)=1, (.5,.5)=.5 -> 3.5 / 4
    assert M.uncertainty_auroc(unc, error).item() == pytest.approx(0.875)
    unc2 = torch.cat([unc, unc, unc])
    err2 = torch.stack([torch.zeros(2, 2), torch.ones(2, 2), error[0].float()])
    got = M.uncertainty_auroc(unc2, err2)
    assert torch.isnan(got[:2]).all() and got[2].item() == pytest.approx(0.875)
    assert torch.isnan(M.uncertainty_auroc_pooled(unc, torch.zeros_like(error)))


# --------------------------------------------------------------------------- GED / HM-IoU
def iou_np(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def ged_reference(s: np.ndarray, y: np.ndarray) -> float:
    def mean_d(a, b):
        return np.mean([1 - iou_np(i, j) for i in a for j in b])

    return 2 * mean_d(s, y) - mean_d(s, s) - mean_d(y, y)


def random_sets(seed: int, n: int, k: int, a: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = blobs(rng, n, frac=0.3)[:, None]
    samples = base & ~speckle(rng, n * k, 0.3).reshape(n, k, H, W)
    annotations = base & ~speckle(rng, n * a, 0.2).reshape(n, a, H, W)
    samples[0, 0] = False  # empty masks exercise IoU(empty, empty) = 1
    annotations[0, -1] = False
    return samples, annotations


def test_ged_hand_computed_and_identical_sets() -> None:
    s = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 1, 1]]])  # (K=2, H=1, W=4)
    y = torch.tensor([[[1, 1, 1, 0]]])  # (A=1, 1, 4); IoU(s1,y)=2/3, IoU(s2,y)=1/4
    # 2 * mean(1/3, 3/4) - mean(0, 1, 1, 0) - 0 = 13/12 - 1/2
    assert M.ged(s, y).tolist() == pytest.approx([7 / 12])
    samples, _ = random_sets(0, 2, 4, 1)
    same = torch.from_numpy(samples)
    assert M.ged(same, same.flip(1)).tolist() == pytest.approx([0.0, 0.0], abs=1e-12)


@pytest.mark.parametrize(("k", "a"), [(4, 4), (6, 4), (5, 3)])
def test_ged_and_hm_iou_match_references(k: int, a: int) -> None:
    samples, annotations = random_sets(k * 10 + a, 3, k, a)
    s_t, y_t = torch.from_numpy(samples), torch.from_numpy(annotations)
    got = M.ged(s_t, y_t)
    np.testing.assert_allclose(
        got.numpy(), [ged_reference(s, y) for s, y in zip(samples, annotations, strict=True)]
    )
    lcm = np.lcm(k, a)
    expected = []
    for s, y in zip(samples, annotations, strict=True):
        ious = np.array([[iou_np(i, j) for j in y] for i in s])
        big = np.repeat(np.repeat(ious, lcm // k, 0), lcm // a, 1)
        r, c = linear_sum_assignment(big, maximize=True)
        expected.append(big[r, c].mean())
    np.testing.assert_allclose(M.hm_iou(s_t, y_t).numpy(), expected, rtol=1e-12)


def test_hm_iou_hand_computed() -> None:
    samples, _ = random_sets(2, 1, 4, 1)
    s = torch.from_numpy(samples[0])
    assert M.hm_iou(s, s[[2, 0, 3, 1]]).item() == pytest.approx(1.0)
    x = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 1, 1]]])
    y = torch.tensor([[[1, 1, 1, 0]]])  # IoU(x0, y) = 2/3, IoU(x1, y) = 1/4
    # A = 1 is replicated to 2 copies, so both samples are matched: (2/3 + 1/4) / 2
    assert M.hm_iou(x, y).item() == pytest.approx(11 / 24)
    assert M.hm_iou(y, x).item() == pytest.approx(11 / 24)
    # K = A = 2, optimal matching pairs x0-y1 and x1-y0 (IoU 1 and 2/3), not the diagonal (1/4, 0)
    y2 = torch.tensor([[[0, 1, 1, 1]], [[1, 1, 0, 0]]])
    assert M.hm_iou(x, y2).item() == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("n", [1, 2, 5, 9, 16])
def test_linear_assignment_matches_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    for cost in (rng.random((n, n)), rng.integers(0, 3, (n, n)).astype(float)):  # ties
        rows, cols = _linear_assignment(cost)
        assert sorted(rows.tolist()) == list(range(n)) and sorted(cols.tolist()) == list(range(n))
        r, c = linear_sum_assignment(cost)
        assert cost[rows, cols].sum() == pytest.approx(cost[r, c].sum(), abs=1e-12)


# --------------------------------------------------------------------------- accumulators
def test_segmentation_metrics_accumulates_and_is_nan_aware() -> None:
    rng = np.random.default_rng(21)
    pred = torch.from_numpy(blobs(rng, 4))
    target = torch.from_numpy(blobs(rng, 4))
    target[1] = False  # hd95 NaN for image 1
    prob = torch.from_numpy(rng.random((4, H, W)))
    unc = torch.from_numpy(rng.random((4, H, W)))
    acc = M.SegmentationMetrics(spacing=(1.0, 2.0), ece_bins=10)
    acc.update(pred[:3], target[:3], prob=prob[:3], uncertainty=unc[:3], ids=["a", "b", "c"])
    acc.update(pred[3], target[3], prob=prob[3], uncertainty=unc[3])
    per = acc.per_image()
    assert set(per) == {"dice", "iou", "precision", "recall", "hd95", "ece", "uncertainty_auroc"}
    torch.testing.assert_close(per["dice"], M.dice(pred, target))
    hd = M.hd95(pred, target, spacing=(1.0, 2.0))
    torch.testing.assert_close(per["hd95"], hd, equal_nan=True)
    torch.testing.assert_close(per["uncertainty_auroc"], M.uncertainty_auroc(unc, pred != target))
    out = acc.compute()
    assert out["hd95"] == pytest.approx(hd[[0, 2, 3]].mean().item())
    assert out["ece"] == pytest.approx(M.ece(prob, target, bins=10).mean().item())
    assert out["ece_pooled"] == pytest.approx(M.ece_pooled(prob, target, bins=10).item())
    rows = acc.rows()
    assert [r["id"] for r in rows] == ["a", "b", "c", "3"]
    assert rows[2]["iou"] == pytest.approx(M.iou(pred[2], target[2]).item())
    acc.reset()
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()


def test_segmentation_metrics_rejects_inconsistent_updates() -> None:
    acc = M.SegmentationMetrics(with_hd95=False)
    acc.update(FULL, FULL, prob=FULL * 0.5)
    with pytest.raises(ValueError, match="earlier ones"):
        acc.update(FULL, FULL)
    with pytest.raises(ValueError, match="ids"):
        acc.update(FULL, FULL, prob=torch.full_like(FULL, 0.9), ids=["x", "y"])
    out = acc.compute()  # the rejected updates left no trace
    assert set(out) == {"dice", "iou", "precision", "recall", "ece", "ece_pooled"}
    assert out["ece_pooled"] == pytest.approx(M.ece_pooled(FULL * 0.5, FULL).item())
    assert len(acc.rows()) == 1


def test_sample_set_metrics() -> None:
    samples, annotations = random_sets(4, 3, 4, 2)
    s, y = torch.from_numpy(samples), torch.from_numpy(annotations)
    acc = M.SampleSetMetrics()
    acc.update(s[:2], y[:2])
    acc.update(s[2:], y[2:])
    out = acc.compute()
    assert out["ged"] == pytest.approx(M.ged(s, y).mean().item())
    assert out["hm_iou"] == pytest.approx(M.hm_iou(s, y).mean().item())
    assert len(acc.rows()) == 3


# --------------------------------------------------------------------------- input errors
MASK = torch.zeros(2, 6, 7)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: M.dice(MASK, MASK[:, :5]), ValueError, r"same shape.*\(2, 6, 7\).*\(2, 5, 7\)"),
        (lambda: M.iou(MASK[0, 0], MASK[0, 0]), ValueError, r"pred must have shape"),
        (lambda: M.hd95(MASK[None], MASK[None]), ValueError, r"4-D"),
        (lambda: M.dice(MASK + 0.5, MASK), ValueError, r"pred must be a binary mask.*0\.5"),
        (lambda: M.recall(MASK, MASK - 1), ValueError, r"target must be a binary"),
        (lambda: M.dice(MASK.numpy(), MASK), TypeError, r"pred must be a torch.Tensor"),
        (lambda: M.dice(MASK[:, :0], MASK[:, :0]), ValueError, r"zero-sized"),
        (lambda: M.ece(MASK + 1.5, MASK), ValueError, r"prob must contain probabilities in"),
        (lambda: M.ece(MASK - 0.1, MASK), ValueError, r"\[0, 1\]"),
        (lambda: M.ece(MASK * torch.nan, MASK), ValueError, r"prob contains NaN"),
        (lambda: M.ece(MASK, MASK, bins=0), ValueError, r"bins must be >= 1"),
        (lambda: M.ece(MASK, MASK, bins=2.0), TypeError, r"bins must be an int"),
        (lambda: M.ece(MASK, MASK[:1]), ValueError, r"prob and target"),
        (lambda: M.hd95(MASK, MASK, spacing=(1.0,)), ValueError, r"spacing"),
        (lambda: M.hd95(MASK, MASK, spacing=(1.0, -2.0)), ValueError, r"positive"),
        (lambda: M.hd95(MASK, MASK, spacing="ab"), TypeError, r"spacing"),
        (lambda: M.uncertainty_auroc(MASK * torch.nan, MASK), ValueError, r"uncertainty"),
        (lambda: M.uncertainty_auroc(MASK, MASK[0, :3]), ValueError, r"uncertainty and error"),
        (lambda: M.ged(MASK[None], MASK[None, :, :3]), ValueError, r"agree in N, H, W"),
        (lambda: M.hm_iou(MASK, MASK[None].expand(2, 2, 6, 7)), ValueError, r"agree in N"),
        (lambda: M.ged(MASK[0, 0], MASK[0, 0]), ValueError, r"samples must have shape"),
        (lambda: M.dice(MASK.to(torch.complex64), MASK), TypeError, r"real-valued"),
        (lambda: M.SegmentationMetrics(ece_bins=0), ValueError, r"bins must be >= 1"),
        (lambda: M.SegmentationMetrics(spacing=(0.0, 1.0)), ValueError, r"spacing"),
    ],
)
def test_bad_inputs_raise(call, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_detection_auroc_matches_sklearn_and_checks_inputs() -> None:
    rng = np.random.default_rng(3)
    score = rng.random(40)
    score[5:10] = score[0]  # ties
    label = rng.random(40) < 0.3
    got = M.detection_auroc(torch.tensor(score), torch.tensor(label)).item()
    assert got == pytest.approx(roc_auc_score(label, score))
    assert math.isnan(M.detection_auroc(torch.rand(5), torch.ones(5, dtype=torch.bool)).item())
    with pytest.raises(ValueError, match=r"\(N,\)"):
        M.detection_auroc(torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        M.detection_auroc(torch.tensor([0.1, math.nan]), torch.tensor([True, False]))
