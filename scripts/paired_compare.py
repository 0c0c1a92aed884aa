"""Is checkpoint B better than A on validation, or is the difference noise? A paired bootstrap.

Both checkpoints segment every validation image with the same seeds (several per image), so
the per-image Dice difference cancels what the image itself contributes. Resampling images
with replacement gives a 95% interval for the mean difference per dataset. An interval that
contains 0 means the validation split cannot tell the two apart.

    python scripts/paired_compare.py lsdseg/weights/default runs/train/default-v14/best \\
        --data ../shared/data/kvasir-seg --data ../shared/data/cvc-clinicdb

Defaults: K = 8, 1 step, threshold 0.6, seeds 0-2, 10,000 resamples; `--steps 2` for the bundled
sampler (2 steps since run 14). `--b-steps` / `--b-threshold` sample B at its own defaults.
"""

from __future__ import annotations

import argparse

import numpy as np
from bundle_weights import _dice, load_weights

from lsdseg.data import load_pairs, load_sample
from lsdseg.segmenter import Segmenter


def per_image_dice(
    seg: Segmenter, samples: list, steps: int, threshold: float, seeds: int
) -> np.ndarray:
    """(images,) Dice averaged over ``seeds`` seeds per image (seed = image index * 1000 + s)."""
    out = np.zeros(len(samples))
    for i, (_, image, mask) in enumerate(samples):
        for s in range(seeds):
            r = seg(image, hypotheses=8, steps=steps, seed=i * 1000 + s, order="rgb")
            out[i] += _dice(r.mean > threshold, mask) / seeds
    return out


def bootstrap(diff: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``diff`` over images resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="baseline checkpoint folder (or last/:ema)")
    p.add_argument("b", help="candidate checkpoint folder (or last/:ema)")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="the split's seed, as in lsdseg train")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per image")
    p.add_argument("--b-steps", type=int, default=None, help="B's steps (default: --steps)")
    p.add_argument(
        "--b-threshold", type=float, default=None, help="B's threshold (default: --threshold)"
    )
    args = p.parse_args()
    b_steps = args.steps if args.b_steps is None else args.b_steps
    b_threshold = args.threshold if args.b_threshold is None else args.b_threshold
    _, val = load_pairs(args.data, None, args.val_fraction, args.seed)
    samples = [(pair, *load_sample(pair)) for pair in val]
    dice = {}
    settings = {args.a: (args.steps, args.threshold), args.b: (b_steps, b_threshold)}
    for name, (steps, threshold) in settings.items():
        seg = Segmenter(load_weights(name))
        dice[name] = per_image_dice(seg, samples, steps, threshold, args.seeds)
    sources = [pair.group.split(":", 1)[0] for pair, _, _ in samples]
    print(
        f"A: {args.steps} step(s) @{args.threshold}; B: {b_steps} step(s) @{b_threshold}; "
        f"K = 8, {args.seeds} seeds per image"
    )
    for src in sorted(set(sources)):
        idx = np.array([s == src for s in sources])
        a, b = dice[args.a][idx], dice[args.b][idx]
        lo, hi = bootstrap(b - a)
        print(
            f"{src} ({idx.sum()} images): {a.mean():.4f} -> {b.mean():.4f}, "
            f"difference {b.mean() - a.mean():+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}]; "
            f"images below 0.6: {(a < 0.6).sum()} -> {(b < 0.6).sum()}"
        )


if __name__ == "__main__":
    main()
