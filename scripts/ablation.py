"""What the paired ablation scripts share (``postprocess_ablation.py``, ``uncertainty_ablation.py``,
``resolution_ablation.py``): their options, the validation split and weights they load, and the
cells they print, one per dataset: the mean, its difference from the reference on the same
images and the 95% bootstrap interval of that difference.

They use ``lsdseg evaluate --compare``'s split (``--val-fraction``, split seed 0) and seeds
(image i draws ``i * SEED_STRIDE + s`` for ``s < --seeds``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lsdseg.data import Pair
    from lsdseg.segmenter import Segmenter


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every ablation takes: --weights, --data (repeat), --val-fraction, --seeds."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--weights", default="default")
    p.add_argument("--data", action="append", required=True, help="a dataset folder (repeat)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=3)
    return p


def load(args: argparse.Namespace, script: str) -> tuple[list[Pair], Segmenter] | None:
    """The validation pairs of ``args.data`` and the segmenter of ``args.weights`` on the CPU,
    or None after one ``<script>: error: ...`` line on stderr (the caller exits with 2)."""
    from lsdseg.checkpoint import CheckpointError
    from lsdseg.compare import load_segmenter
    from lsdseg.data import load_pairs
    from lsdseg.imageio import DataError

    try:
        _, pairs = load_pairs(args.data, None, args.val_fraction, 0)
        return pairs, load_segmenter(args.weights, "cpu")
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        return None


def paired_cells(values: np.ndarray, reference: np.ndarray, datasets: np.ndarray) -> str:
    """``"<dataset> <mean> (<difference> [<low>, <high>])"`` for each dataset, sorted, joined.

    Shapes:
        values, reference, datasets: (images,), one entry per image, the same images.
    """
    from lsdseg.compare import bootstrap

    cells = []
    for d in sorted(set(datasets)):
        sel = datasets == d
        diff = values[sel] - reference[sel]
        lo, hi = bootstrap(diff)
        cells.append(f"{d} {values[sel].mean():.4f} ({diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}])")
    return "  ".join(cells)
