"""Rebuild the bundled demo clip ``assets/demo/cvc_seq5.mp4`` from CVC-ClinicDB.

CVC-ClinicDB frames come from 29 short colonoscopy sequences; ``sequences.csv`` maps each frame
to its sequence. Sequence 5 (25 frames, 384x288) is held out from the training of the default
weights, so it is a fair demo. Frames are written in order, one video frame per source frame,
with OpenCV's mp4v codec (the pip build has no H.264 encoder).

    python scripts/make_demo_clip.py ../shared/data/cvc-clinicdb

Terms: CVC-ClinicDB is for research and educational use only; commercial use is forbidden
(Bernal et al., CMIG 43, 2015). See assets/demo/README.md.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import cv2

MAX_BYTES = 3 * 1024 * 1024  # the clip ships inside the repository


def sequence_frames(root: Path, sequence: int) -> list[Path]:
    """Image files of one sequence, in frame order (``images/N.png``, numeric N)."""
    table = root / "sequences.csv"
    if not table.is_file():
        raise SystemExit(
            f"{table} not found: pass the CVC-ClinicDB folder (with images/ and sequences.csv)"
        )
    with open(table, newline="") as f:
        names = [row["file"] for row in csv.DictReader(f) if int(row["sequence"]) == sequence]
    if not names:
        raise SystemExit(f"{table}: no frames of sequence {sequence}")
    names.sort(key=lambda n: int(re.sub(r"\D", "", n) or 0))
    return [root / "images" / n for n in names]


def write_clip(frames: list[Path], out: Path, fps: float) -> int:
    """Write the frames as an mp4v video; returns the number of frames written."""
    first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise SystemExit(f"cannot read {frames[0]}")
    h, w = first.shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {out}")
    try:
        for path in frames:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None or image.shape[:2] != (h, w):
                raise SystemExit(f"{path}: unreadable, or not {w}x{h} like the first frame")
            writer.write(image)
    finally:
        writer.release()
    return len(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cvc", type=Path, help="CVC-ClinicDB folder (images/, sequences.csv)")
    parser.add_argument("--sequence", type=int, default=5, help="sequence number (default 5)")
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second (default 5)")
    parser.add_argument("--out", type=Path, default=Path("assets/demo/cvc_seq5.mp4"))
    args = parser.parse_args(argv)
    n = write_clip(sequence_frames(args.cvc, args.sequence), args.out, args.fps)
    size = args.out.stat().st_size
    print(f"{args.out}: {n} frames at {args.fps:g} fps, {size / 1024:.0f} KiB")
    if size > MAX_BYTES:
        print(
            f"warning: {args.out} is over 3 MB; the README promises a small clip", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
