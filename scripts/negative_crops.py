"""Write the largest polyp-free crop of each polyp frame as an image: polyp-free frames of the
same cameras, for ``lsdseg evaluate`` to count false alarms on.

    python scripts/negative_crops.py --data Kvasir-SEG/ --val-fraction 0.1 --out crops/kvasir
    lsdseg evaluate --data crops/kvasir

With ``--val-fraction`` only the validation split that ``lsdseg train --val-fraction F
--seed S`` holds out is cut (``--split-seed``), so the crops are of frames no training saw;
without it, every frame. A frame whose polyp leaves no square of at least 30% of its shorter
side (:func:`lsdseg.negatives.polyp_free_crop`) gives none. Crops are written losslessly (PNG)
at their own size; evaluate resizes them as any frame.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import cv2

from lsdseg.data import DataError, dataset_of, find_pairs, load_pairs, load_sample
from lsdseg.negatives import polyp_free_crop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, metavar="DIR")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder the crops are written to")
    args = p.parse_args(argv)
    try:
        if args.val_fraction is None:  # every frame; groups prefixed as load_pairs does
            pairs = [
                dataclasses.replace(q, group=f"{Path(d).resolve().name}:{q.group}")
                for d in args.data
                for q in find_pairs(d)[1]
                if q.mask is not None
            ]
        elif 0 < args.val_fraction < 1:
            pairs = load_pairs(args.data, None, args.val_fraction, args.split_seed)[1]
        else:
            raise ValueError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"negative_crops.py: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for pair in pairs:
        image, mask = load_sample(pair)
        if mask is None or not mask.any():
            continue
        crop = polyp_free_crop(image, mask)
        if crop is None:
            continue
        name = f"{dataset_of(pair.group)}_{pair.name}.png"  # names are unique per dataset
        if not cv2.imwrite(str(out / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
            print(f"negative_crops.py: error: cannot write {out / name}", file=sys.stderr)
            return 1
        written += 1
    print(f"{written} polyp-free crops of {len(pairs)} frames written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
