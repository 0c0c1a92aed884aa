"""Dice of checkpoints on the training validation split, per dataset, steps and threshold.

A quick comparison of training runs at each image's original resolution, before one is
bundled (``scripts/bundle_weights.py`` does the full sweep and the final metrics). It rebuilds
the split of ``lsdseg train`` (by group, ``--val-fraction``, ``--seed``) and draws K = 8
hypotheses with one seed per image.

    python scripts/val_probe.py runs/train/default-v7/best runs/train/default-v8/last:ema \\
        --data ../shared/data/kvasir-seg --data ../shared/data/cvc-clinicdb

``FOLDER:ema`` probes the EMA weights saved in a ``last/`` checkpoint's training state.
"""

from __future__ import annotations

import argparse

from bundle_weights import THRESHOLDS, load_weights, sweep  # what picks the bundled defaults

from lsdseg.data import load_pairs, load_sample
from lsdseg.segmenter import Segmenter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "checkpoints", nargs="+", help="checkpoint folders (a run's best/ or last/, or last/:ema)"
    )
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="1,2,4", help="comma-separated DDIM step counts")
    args = p.parse_args()
    _, val = load_pairs(args.data, None, args.val_fraction, args.seed)
    samples = [(pair, *load_sample(pair)) for pair in val]
    sources = sorted({pair.group.split(":", 1)[0] for pair in val})
    print("checkpoint, steps, dataset: Dice at thresholds", THRESHOLDS)
    for path in args.checkpoints:
        seg = Segmenter(load_weights(path))
        for steps in (int(s) for s in args.steps.split(",")):
            row = sweep(seg, samples, steps, 8)
            for src in sources:
                dice = " ".join(f"{row[f'dice/{src}@{th}']:.4f}" for th in THRESHOLDS)
                print(f"{path}, {steps}, {src}: {dice}", flush=True)


if __name__ == "__main__":
    main()
