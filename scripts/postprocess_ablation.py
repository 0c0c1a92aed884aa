"""Mask rules on the mean map, paired against the plain threshold on the validation split.

Segments every validation image (``lsdseg evaluate --compare``'s split and seeds: K = 8, 2
steps, 3 seeds per image) once, keeps the mean maps, and scores each rule against
``mean > 0.6`` on the same maps: Dice per image (at its original resolution, averaged over the
seeds), its difference and a 95% bootstrap interval over images, per dataset. The rules are
those the polyp literature and issue 21 suggest against failure modes (a) and (b): a lower
threshold, hole filling, hysteresis (components above a low threshold that reach the high one)
and dropping small components.

    python scripts/postprocess_ablation.py --weights default \
        --data ../shared/data/kvasir-seg --data ../shared/data/cvc-clinicdb
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import ablation
import cv2
import numpy as np
from scipy import ndimage

Rule = Callable[[np.ndarray], np.ndarray]  # mean (H, W) float in [0, 1] -> mask (H, W) bool


def hysteresis(mean: np.ndarray, high: float, low: float) -> np.ndarray:
    """The 8-connected components of ``mean > low`` that hold a pixel above ``high``."""
    _, labels = cv2.connectedComponents((mean > low).astype(np.uint8), connectivity=8)
    keep = np.unique(labels[mean > high])
    return np.isin(labels, keep[keep > 0])


def drop_small(mean: np.ndarray, threshold: float, share: float) -> np.ndarray:
    """``mean > threshold`` without components smaller than ``share`` of the largest."""
    mask = (mean > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return np.isin(labels, 1 + np.nonzero(areas >= share * areas.max())[0])


RULES: dict[str, Rule] = {
    "mean > 0.6 (the default)": lambda m: m > 0.6,
    "mean > 0.5": lambda m: m > 0.5,
    "mean > 0.6, holes filled": lambda m: ndimage.binary_fill_holes(m > 0.6),
    "hysteresis 0.6 / 0.5": lambda m: hysteresis(m, 0.6, 0.5),
    "hysteresis 0.6 / 0.4": lambda m: hysteresis(m, 0.6, 0.4),
    "hysteresis 0.6 / 0.3": lambda m: hysteresis(m, 0.6, 0.3),
    "hysteresis 0.7 / 0.4": lambda m: hysteresis(m, 0.7, 0.4),
    "mean > 0.6, components < 10% dropped": lambda m: drop_small(m, 0.6, 0.1),
}


def main(argv: list[str] | None = None) -> int:
    args = ablation.parser(__doc__).parse_args(argv)
    loaded = ablation.load(args, "postprocess_ablation")
    if loaded is None:
        return 2
    pairs, seg = loaded

    from lsdseg.compare import SEED_STRIDE, dice
    from lsdseg.data import dataset_of, load_sample

    scores = {name: np.zeros(len(pairs)) for name in RULES}  # (images,) per rule
    for i, pair in enumerate(pairs):
        image, mask = load_sample(pair)
        for j in range(args.seeds):
            r = seg(image, hypotheses=8, steps=2, seed=i * SEED_STRIDE + j, order="rgb")
            for name, rule in RULES.items():
                scores[name][i] += float(dice(rule(r.mean), mask)) / args.seeds
    datasets = np.array([dataset_of(pair.group) for pair in pairs])
    base = scores[next(iter(RULES))]
    for name, s in scores.items():
        print(f"{name:40s}  " + ablation.paired_cells(s, base, datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
