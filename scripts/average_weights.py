"""Average the weights of checkpoints of one architecture (a "model soup"), into a new folder.

Weight averaging of fine-tuned relatives (runs that started from the same checkpoint) often
scores above each of them (Wortsman et al., 2022, "Model soups"). Every floating-point tensor is
the mean of the checkpoints' tensors (in float32), other tensors must be equal. The architecture
(every config section but ``sampler``) must match; the first checkpoint's sampler settings are
kept. Score the result with a paired ``lsdseg evaluate --compare`` before bundling it.

    python scripts/average_weights.py --weights default \
        --weights runs/train/v2-ms/best --out runs/soup
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lsdseg.checkpoint import CheckpointError, checkpoint_hash, load_checkpoint, save_checkpoint
from lsdseg.config import to_dict
from lsdseg.model import LatentSegmenter
from lsdseg.segmenter import bundled_weights


def average(models: list[LatentSegmenter]) -> LatentSegmenter:
    """A copy of ``models[0]`` holding the mean of every floating-point tensor of ``models``.

    Raises:
        ValueError: fewer than two models, other architectures, or integer tensors that differ.
    """
    if len(models) < 2:
        raise ValueError("average needs at least two checkpoints")
    arch = [{k: v for k, v in to_dict(m.cfg).items() if k != "sampler"} for m in models]
    for i, a in enumerate(arch[1:], start=2):
        if a != arch[0]:
            diff = sorted(k for k in a if a[k] != arch[0].get(k))
            raise ValueError(f"checkpoint {i} has another architecture ({', '.join(diff)} differ)")
    states = [m.state_dict() for m in models]
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        elif any(not torch.equal(s[key], first) for s in states[1:]):
            raise ValueError(f"{key} holds integers that differ between the checkpoints")
        else:
            out[key] = first
    soup = LatentSegmenter(models[0].cfg)
    soup.load_state_dict(out)
    return soup.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--weights", action="append", required=True, help="'default' or a checkpoint (repeat)"
    )
    p.add_argument("--out", required=True, help="folder to write the averaged checkpoint to")
    args = p.parse_args(argv)
    paths = [str(bundled_weights()) if w == "default" else w for w in args.weights]
    out = Path(args.out)
    if out.resolve() in {Path(w).resolve() for w in paths}:
        print(f"error: --out {out} is one of the --weights; pick a new folder", file=sys.stderr)
        return 2
    try:
        models = [load_checkpoint(w) for w in paths]
        soup = average(models)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sources = [{"weights": w, "hash": checkpoint_hash(w)} for w in paths]
    card = "# lsdseg checkpoint: averaged weights\n\nThe mean of:\n\n" + "".join(
        f"- `{s['weights']}` ({s['hash']})\n" for s in sources
    )
    save_checkpoint(soup, out, card=card, extra={"averaged": sources})
    print(f"wrote {out}: the mean of {len(paths)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
