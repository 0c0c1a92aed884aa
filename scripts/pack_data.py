"""Write a downsized copy of training datasets, small enough to travel to a GPU machine.

A GPU machine that has no network gets the data as part of the working tree (64 MiB in all
here). Training resizes every image to S x S anyway, so a copy whose shorter side is S loses
nothing the training sees; validation on the copy is at that reduced size, a guide only: score
the weights that come back on the full data (``lsdseg evaluate --sweep``) before bundling them.

Each dataset keeps its folder name (the group prefixes of ``lsdseg train`` come from it) and its
``sequences.csv``, so the by-group validation split is the same images as on the full data; the
script checks that and refuses to finish otherwise. Images become JPEG (``--quality``), masks
binary PNG.

    python scripts/pack_data.py ../shared/data/kvasir-seg ../shared/data/cvc-clinicdb \\
        --out .cache/packed --short-side 256
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from lsdseg.data import DataError, find_pairs, load_pairs, load_sample


def shrink(image: np.ndarray, mask: np.ndarray, short_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the shorter side is ``short_side`` (never enlarges), keeping the aspect ratio.

    Shapes: image (H, W, 3) uint8 RGB, mask (H, W) bool -> (h, w, 3), (h, w).
    """
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    if scale >= 1:
        return image, mask
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    return small, m


def pack(src: Path, dst: Path, short_side: int, quality: int) -> int:
    """Write ``dst/images/<stem>.jpg`` and ``dst/masks/<stem>.png`` for every labelled pair."""
    _, pairs = find_pairs(src)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    n = 0
    for pair in pairs:
        if pair.mask is None:
            continue
        image, mask = shrink(*load_sample(pair), short_side)
        stem = Path(pair.image).stem
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(dst / "images" / f"{stem}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        cv2.imwrite(str(dst / "masks" / f"{stem}.png"), mask.astype(np.uint8) * 255)
        n += 1
    if (src / "sequences.csv").is_file():
        shutil.copyfile(src / "sequences.csv", dst / "sequences.csv")
    return n


def _split_stems(dirs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    train, val = load_pairs(dirs, None, val_fraction, seed)
    return [Path(p.image).stem for p in train], [Path(p.image).stem for p in val]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+", help="dataset folders")
    p.add_argument("--out", default=".cache/packed", help="parent folder of the copies")
    p.add_argument("--short-side", type=int, default=256, help="the training size S or more")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the images")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as given to lsdseg train")
    p.add_argument("--seed", type=int, default=0, help="as given to lsdseg train")
    args = p.parse_args()
    out = Path(args.out)
    names = [Path(d).resolve().name for d in args.data]
    if len(set(names)) != len(names):
        sys.exit(f"dataset folder names must differ (they prefix the groups): {names}")
    if args.short_side < 1:
        sys.exit(f"--short-side {args.short_side} must be a positive number of pixels")
    copies = []
    for d, name in zip(args.data, names, strict=True):
        dst = out / name
        if dst.exists():
            shutil.rmtree(dst)
        try:
            n = pack(Path(d), dst, args.short_side, args.quality)
        except (DataError, OSError) as e:
            sys.exit(f"{d}: {e}")
        size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) / 2**20
        print(f"{d} -> {dst}: {n} pairs, {size:.1f} MiB")
        copies.append(str(dst))
    if _split_stems(args.data, args.val_fraction, args.seed) != _split_stems(
        copies, args.val_fraction, args.seed
    ):
        sys.exit("the copy splits into other training/validation images than the original")
    print("the copy's training/validation split is the original's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
