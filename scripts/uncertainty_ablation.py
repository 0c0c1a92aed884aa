"""Uncertainty maps for finding error pixels, paired against the entropy of the mean.

Segments every validation image (``lsdseg evaluate --compare``'s split and seeds: K = 8, 2
steps, 3 seeds per image) once and scores each candidate map by the per-image AUROC of error
pixels (``mask != target``, the mask being ``mean > threshold``), as ``lsdseg evaluate`` scores
the entropy of the mean: the AUROC averaged over the seeds, its difference from the entropy's
and a 95% bootstrap interval over images, per dataset. The candidates: the std and the mutual
information of the K hypotheses, the entropy measured from the decision threshold instead of
from 0.5, and the entropy smoothed over a neighbourhood (errors sit in a band along the
predicted edge, wider than the band where the mean is near 0.5). Per frame, it scores the
unsure score (``Result.unsure``: the mean entropy over the candidate region, at the model's
size S), the same recomputed from the hypotheses at S (a check) and the same rule on the
mutual information, by the AUROC for the images below Dice 0.5
(Dice and score averaged over the seeds; no interval: a handful of images fail).

    python scripts/uncertainty_ablation.py --weights default \
        --data ../shared/data/kvasir-seg --data ../shared/data/cvc-clinicdb
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import ablation
import cv2
import numpy as np
import torch

from lsdseg.uncertainty import binary_entropy

Candidate = Callable[..., np.ndarray]  # (result, threshold) -> (H, W) float uncertainty


def entropy_bits(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits, elementwise (:func:`lsdseg.uncertainty.binary_entropy`)."""
    return binary_entropy(torch.from_numpy(np.asarray(p, np.float32))).numpy()


def centred(mean: np.ndarray, threshold: float) -> np.ndarray:
    """``mean`` mapped piecewise linearly so that ``threshold`` lands on 0.5 (0 and 1 stay)."""
    return np.where(
        mean < threshold,
        0.5 * mean / threshold,
        0.5 + 0.5 * (mean - threshold) / (1 - threshold),
    )


def smoothed(u: np.ndarray, share: float) -> np.ndarray:
    """``u`` blurred by a Gaussian of sigma ``share`` of the shorter image side."""
    sigma = share * min(u.shape)
    return cv2.GaussianBlur(u.astype(np.float32), (0, 0), sigmaX=sigma)


CANDIDATES: dict[str, Candidate] = {
    "entropy of the mean (the default)": lambda r, t: r.entropy,
    "std of the K hypotheses": lambda r, t: r.std,
    "mutual information": lambda r, t: r.mutual_info,
    "entropy from the threshold": lambda r, t: entropy_bits(centred(r.mean, t)),
    "entropy, blurred 1%": lambda r, t: smoothed(r.entropy, 0.01),
    "entropy, blurred 2%": lambda r, t: smoothed(r.entropy, 0.02),
    "entropy, blurred 4%": lambda r, t: smoothed(r.entropy, 0.04),
    "max(entropy, blurred 2%)": lambda r, t: np.maximum(r.entropy, smoothed(r.entropy, 0.02)),
    "entropy from the threshold, blurred 2%": lambda r, t: smoothed(
        entropy_bits(centred(r.mean, t)), 0.02
    ),
}


def main(argv: list[str] | None = None) -> int:
    args = ablation.parser(__doc__).parse_args(argv)
    loaded = ablation.load(args, "uncertainty_ablation")
    if loaded is None:
        return 2
    pairs, seg = loaded

    from lsdseg.compare import SEED_STRIDE, dice
    from lsdseg.data import dataset_of, load_sample
    from lsdseg.metrics.calibration import detection_auroc, uncertainty_auroc
    from lsdseg.uncertainty import aggregate, unsure_score

    threshold = seg.settings().threshold
    scores = {name: np.zeros(len(pairs)) for name in CANDIDATES}  # (images,) per candidate
    counts = np.zeros(len(pairs))  # seeds with both error and correct pixels, per image
    frames = np.zeros((len(pairs), 4))  # (images, [dice, unsure, unsure on entropy, on MI])
    for i, pair in enumerate(pairs):
        image, mask = load_sample(pair)
        for j in range(args.seeds):
            r = seg(
                image,
                hypotheses=8,
                steps=2,
                seed=i * SEED_STRIDE + j,
                order="rgb",
                hypotheses_size="model",
            )
            at_s = aggregate(torch.from_numpy(r.hypotheses))  # maps at the model's S x S
            frames[i] += [
                dice(r.mask, mask),
                r.unsure,
                float(unsure_score(at_s.mean, at_s.entropy)),
                float(unsure_score(at_s.mean, at_s.mutual_info)),
            ]
            error = torch.from_numpy(r.mask != mask)[None]
            if error.all() or not error.any():
                continue  # no AUROC for this seed, as in lsdseg evaluate
            counts[i] += 1
            for name, fn in CANDIDATES.items():
                u = torch.from_numpy(np.ascontiguousarray(fn(r, threshold), dtype=np.float32))
                scores[name][i] += float(uncertainty_auroc(u[None], error)[0])
    keep = counts > 0
    datasets = np.array([dataset_of(pair.group) for pair in pairs])
    base = scores[next(iter(CANDIDATES))][keep] / counts[keep]
    print(f"threshold {threshold}; {int(keep.sum())} of {len(pairs)} images with an AUROC")
    for name, s in scores.items():
        print(f"{name:40s}  " + ablation.paired_cells(s[keep] / counts[keep], base, datasets[keep]))
    frames /= args.seeds
    for d in sorted(set(datasets)):
        sel = datasets == d
        failed = torch.from_numpy(frames[sel, 0] < 0.5)
        cells = [
            f"{what} {float(detection_auroc(torch.from_numpy(frames[sel, c]), failed)):.3f}"
            for c, what in ((1, "unsure"), (2, "entropy at S"), (3, "mutual information at S"))
        ]
        print(
            f"{d}: {int(failed.sum())} of {int(sel.sum())} images below Dice 0.5; AUROC "
            + ", ".join(cells)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
