"""Input resolution at inference, paired: the same weights run at several sizes S on the same
validation images and seeds (``lsdseg evaluate --compare``'s split and seeds: K = 8, 2 steps,
3 seeds per image), each size scored against the first.

The model is fully convolutional, so one checkpoint runs at any size its down-sampling allows
(:func:`lsdseg.imagesize.check_image_size`); weights trained with ``--train-sizes`` have seen
those sizes. Prints the mean Dice per dataset at each size, the paired difference from the
first size and its 95% bootstrap interval over images.

    python scripts/resolution_ablation.py --weights runs/train/v2-ms/best --sizes 256,288,320 \
        --data ../shared/data/kvasir-seg --data ../shared/data/cvc-clinicdb
"""

from __future__ import annotations

import sys

import ablation


def main(argv: list[str] | None = None) -> int:
    p = ablation.parser(__doc__)
    p.add_argument("--sizes", default="256,288,320", help="input sizes, the first the reference")
    args = p.parse_args(argv)
    loaded = ablation.load(args, "resolution_ablation")
    if loaded is None:
        return 2
    pairs, base = loaded

    from lsdseg.compare import compare_datasets, per_image_scores
    from lsdseg.data import dataset_of, load_sample
    from lsdseg.segmenter import Segmenter

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip().isdigit()]
        if len(sizes) != len(args.sizes.split(",")):
            raise ValueError(f"--sizes {args.sizes!r}: give whole numbers, e.g. 256,288,320")
        segs = [Segmenter(base.model, base.device, image_size=size) for size in sizes]
    except ValueError as e:
        print(f"resolution_ablation: error: {e}", file=sys.stderr)
        return 2
    samples = [(pair, *load_sample(pair)) for pair in pairs]
    datasets = [dataset_of(pair.group) for pair in pairs]
    kw = {"hypotheses": 8, "steps": 2, "seeds": args.seeds}
    ref = per_image_scores(segs[0], samples, **kw, auroc=False).dice  # (images,)
    print(f"{args.weights}: K = 8, 2 steps, {args.seeds} seeds per image; against S = {sizes[0]}")
    for size, seg in zip(sizes, segs, strict=True):
        dice = ref if seg is segs[0] else per_image_scores(seg, samples, **kw, auroc=False).dice
        for c in compare_datasets(ref, dice, datasets):
            print(
                f"S = {size}: {c.dataset} {c.mean_b:.4f} ({c.difference:+.4f} "
                f"[{c.low:+.4f}, {c.high:+.4f}]); images below 0.6: {c.below_b}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
