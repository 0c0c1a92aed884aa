"""Bundle a presence head (``lsdseg train --stage presence``) into the default weights.

    python scripts/bundle_presence.py --run runs/train/presence-v1 \\
        --figures runs/presence-figures.md

The run's ``best/`` holds the bundled segmentation weights with the new head and its threshold
(the stage freezes everything else; this script checks that every other tensor equals the
bundled one). The bundle keeps float16 storage, the card gains a section on the head (the
polyp-free data and its terms, the validation figures from the run's ``presence.json``, and
the Markdown of ``--figures`` when given: the evaluate and filter tables measured on it), and
config.json's ``extra`` keeps its validation record beside the head's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lsdseg.checkpoint import load_checkpoint, save_checkpoint
from lsdseg.presence_train import validation_table
from lsdseg.segmenter import bundled_weights

NEGATIVES_TERMS = (
    "Polyp-free frames: `normal-colon`, 3050 close-up crops of normal (paediatric) colon "
    "mucosa from the public GitHub repository ViniciusSimm/Colo-Retal-Induscon2023 (commit "
    "f459d0c6, `datasets/Children_NoPolip/pt2`). No licence or terms are stated there: the head "
    "is for research use only. Polyp-free crops of the Kvasir-SEG and CVC-ClinicDB training "
    "frames (the largest square away from the dilated polyp mask) are negatives too, under "
    "those datasets' terms."
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a lsdseg train --stage presence run folder")
    p.add_argument("--out", default=str(bundled_weights()))
    p.add_argument("--figures", default="", help="Markdown appended to the card's section")
    args = p.parse_args(argv)
    run = Path(args.run)
    try:
        report = json.loads((run / "presence.json").read_text())
        command = (run / "command.txt").read_text().strip()
        model = load_checkpoint(run / "best")
        base = load_checkpoint(args.out)
        base_meta = json.loads((Path(args.out) / "config.json").read_text())
        base_card = (Path(args.out) / "card.md").read_text()
    except (OSError, ValueError) as e:
        print(f"bundle_presence.py: error: {e}", file=sys.stderr)
        return 2
    new, old = model.state_dict(), base.state_dict()
    changed = [k for k, v in old.items() if not torch.equal(new[k].half(), v.half())]
    if changed:
        print(
            f"bundle_presence.py: error: {len(changed)} tensors differ from {args.out} (first: "
            f"{changed[0]}): the run did not start from these weights",
            file=sys.stderr,
        )
        return 2
    figures = Path(args.figures).read_text().strip() if args.figures else ""
    head = {k: v for k, v in new.items() if k.startswith("presence.")}
    section = _section(report, command, figures, head, model.cfg.presence)
    card = _strip_section(base_card) + "\n" + section + "\n"
    card = card.replace("\n\n\n", "\n\n")
    extra = {**base_meta.get("extra", {}), "presence": report}
    save_checkpoint(model, args.out, card, extra=extra, dtype=torch.float16)
    print(f"bundled the presence head (threshold {report['threshold']:.4f}) into {args.out}")
    return 0


def _strip_section(card: str) -> str:
    """The card without an earlier presence section (re-bundling replaces it)."""
    head, sep, tail = card.partition("\n## Knowing when there is no polyp")
    if not sep:
        return card.rstrip() + "\n"
    rest = tail.split("\n## ", 1)
    return head.rstrip() + "\n" + ("\n## " + rest[1] if len(rest) > 1 else "")


def _section(report: dict, command: str, figures: str, head_state: dict, hidden: int) -> str:
    missed = report["missed_polyp_frames"]
    missed_text = (
        "none"
        if not missed
        else "; ".join(
            f"{Path(m['image']).name} (polyp {m['area']:.1%} of the frame, score {m['score']:.3f})"
            for m in missed
        )
    )
    views = report["training_views"]
    n_views = report["settings"]["views"]
    how = "as they are" if n_views == 1 else f"{n_views} views each, augmented after the first"
    params = sum(v.numel() for k, v in head_state.items())
    return (
        "## Knowing when there is no polyp (the presence head)\n\n"
        "A head on the image encoder's pooled features (`lsdseg.presence`) scores the "
        "probability that a frame holds a polyp; below the presence threshold "
        f"({report['threshold']:.4f}) the mask is empty. Only the head was trained; the "
        "segmentation weights above are unchanged. The head has "
        f"{params / 1e3:.1f} k parameters (config.json: `presence` {hidden}, "
        f"`sampler.presence_threshold` {report['threshold']:.4f}).\n\n"
        f"{NEGATIVES_TERMS}\n\n"
        f"- training: {views['polyp']} polyp and {views['polyp_free']} polyp-free frames "
        f"({how}), {report['time_s'] / 60:.1f} min on a CPU; command: `{command}`\n"
        "- validation: the held-out Kvasir-SEG and CVC-ClinicDB frames above, held-out runs "
        "of 50 neighbouring normal-colon frames, and the largest polyp-free crop of each "
        "validation polyp frame; the threshold keeps "
        f"{report['settings']['min_sensitivity']:.0%} of the validation polyp frames\n\n"
        f"{validation_table(report['validation'])}\n\n"
        f"Validation polyp frames the head misses: {missed_text}.\n"
        + (f"\n{figures}\n" if figures else "")
    )


if __name__ == "__main__":
    sys.exit(main())
