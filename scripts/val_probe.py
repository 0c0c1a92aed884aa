"""Dice of checkpoints on the training validation split, per dataset, steps and threshold.

A quick comparison of training runs at each image's original resolution, before one is
bundled (``scripts/bundle_weights.py`` does the full sweep and the final metrics). It rebuilds
the split of ``lsdseg train`` (by group, ``--val-fraction``, ``--seed``) and draws K = 8
hypotheses with one seed per image.

    python scripts/val_probe.py runs/train/default-v7/best runs/train/default-v8/best \\
        --data ../shared/data/kvasir-seg --data ../shared/data/cvc-clinicdb
"""

from __future__ import annotations

import argparse

import numpy as np

from lsdseg.checkpoint import load_checkpoint
from lsdseg.cli.train_cmd import load_pairs
from lsdseg.data import load_sample
from lsdseg.segmenter import Segmenter

THRESHOLDS = (0.4, 0.5, 0.6)


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else 2.0 * float((pred & gt).sum()) / float(s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (a run's best/ or last/)")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="1,2,4", help="comma-separated DDIM step counts")
    args = p.parse_args()
    _, val = load_pairs(args.data, None, args.val_fraction, args.seed)
    samples = [(pair, *load_sample(pair)) for pair in val]
    print("checkpoint, steps, dataset: Dice at thresholds", THRESHOLDS)
    for path in args.checkpoints:
        seg = Segmenter(load_checkpoint(path))
        for steps in (int(s) for s in args.steps.split(",")):
            per: dict[str, list[list[float]]] = {}
            for i, (pair, image, mask) in enumerate(samples):
                r = seg(image, hypotheses=8, steps=steps, seed=i, order="rgb")
                src = pair.group.split(":", 1)[0]
                per.setdefault(src, []).append([_dice(r.mean > th, mask) for th in THRESHOLDS])
            for src, rows in sorted(per.items()):
                dice = " ".join(f"{v:.4f}" for v in np.mean(rows, axis=0))
                print(f"{path}, {steps}, {src} ({len(rows)}): {dice}", flush=True)


if __name__ == "__main__":
    main()
