"""``lsdseg train --stage presence``: fit the presence head of a trained checkpoint.

The head decides whether a frame holds a polyp at all (:mod:`lsdseg.presence`). Everything else
stays frozen, so the masks of the frames it lets through are the checkpoint's. The run folder
gets ``best/`` (the checkpoint with its head and the chosen threshold), ``presence.json`` (the
validation figures and every validation polyp frame the head misses, with its size),
``splits.json`` and ``command.txt``. The run takes minutes; re-running starts it again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from lsdseg.cli.errors import UserError


def run_presence(args: argparse.Namespace, console: Any, init: str, out: Path) -> int:
    """Train the presence head of ``init`` on ``args.data`` and ``args.negatives`` into the
    run folder ``out``."""
    import numpy as np
    import torch

    from lsdseg.checkpoint import load_checkpoint, save_checkpoint
    from lsdseg.cli.options import device_option
    from lsdseg.data import load_pairs, load_sample
    from lsdseg.negatives import polyp_free_crop
    from lsdseg.presence_train import (
        PresenceTrainConfig,
        choose_threshold,
        fit_head,
        frame_views,
        pooled_features,
        score_sets,
        summary,
        with_head,
    )
    from lsdseg.splits import split_record, write_splits

    if not init:
        raise UserError(
            "--stage presence fits the presence head of a trained checkpoint: pass --init "
            "default (the bundled weights) or --init FOLDER"
        )
    if args.val_data:
        raise UserError(
            "--stage presence splits each --data and --negatives itself: drop --val-data"
        )
    try:
        cfg = PresenceTrainConfig(
            hidden=args.presence_hidden,
            views=args.presence_views,
            min_sensitivity=args.min_sensitivity,
            seed=args.seed,
        )
    except ValueError as e:
        raise UserError(f"--stage presence: {e}") from None
    device = device_option(args.device)
    started = time.monotonic()
    model = load_checkpoint(init, device)
    datasets: dict[str, dict] = {}
    train, val = load_pairs(
        args.data, None, args.val_fraction, args.seed, datasets, args.negatives or ()
    )
    found = sum(info.get("negatives", 0) for info in datasets.values())
    console.print(
        f"presence: {len(train)} training and {len(val)} validation images, {found} of them "
        "polyp-free (no mask); polyp-free crops of the polyp frames are added"
    )

    def features(pairs: list, kind: str, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels: list[bool] = []

        def images() -> Any:
            for p in pairs:
                # at most twice the model's size on the shorter side before augmenting
                views_of = frame_views(p, views, cfg.seed, kind, 2 * model.cfg.image_size)
                for image, positive in views_of:
                    labels.append(positive)
                    yield image

        with console.status(f"encoding {len(pairs)} images x {views} views ({kind})"):
            f = pooled_features(model, images())
        return f, torch.tensor(labels)

    f_frames, y_frames = features(train, "frame", cfg.views)
    polyp_train = [p for p in train if p.mask is not None]
    f_crops, y_crops = features(polyp_train, "crop", cfg.views)
    feats, labels = torch.cat([f_frames, f_crops]), torch.cat([y_frames, y_crops])
    if bool(labels.all()) or not bool(labels.any()):
        kind = "polyp-free" if bool(labels.all()) else "polyp"
        raise UserError(
            f"the training split holds no {kind} frame: the head learns to tell them apart "
            + (
                "(pass a folder of polyp-free frames with --negatives DIR)"
                if kind == "polyp-free"
                else "(pass a --data folder with polyp masks)"
            )
        )
    console.print(
        f"fitting the head on {int(labels.sum())} polyp and {int((~labels).sum())} polyp-free views"
    )
    head = fit_head(feats, labels, model.image_ae.presence_channels, cfg)

    # validation: unaugmented frames, and the largest polyp-free crop of each polyp frame
    val_sets: dict[str, list] = {"polyp": [], "polyp-free crops": []}
    val_rows: list[dict[str, Any]] = []
    for p in val:
        image, mask = load_sample(p)
        name = p.group.split(":", 1)[0]
        if mask is not None and mask.any():
            val_sets["polyp"].append(image)
            val_rows.append({"image": str(p.image), "area": float(mask.mean())})
            crop = polyp_free_crop(image, mask)
            if crop is not None:
                val_sets["polyp-free crops"].append(crop)
        else:
            val_sets.setdefault(f"polyp-free: {name}", []).append(image)
    if not val_sets["polyp"]:
        raise UserError("the validation split holds no polyp frame: add --data with masks")
    scores = score_sets(head, {k: pooled_features(model, v) for k, v in val_sets.items() if v})
    negative = np.concatenate([v for k, v in scores.items() if k != "polyp"])
    threshold = choose_threshold(scores["polyp"], cfg.min_sensitivity, negative)
    table = summary(scores, threshold)
    missed = [
        {**row, "score": float(s)}
        for row, s in zip(val_rows, scores["polyp"], strict=True)
        if s < threshold
    ]
    new = with_head(model, head, threshold)
    report = {
        "init": init,
        "settings": {**cfg.__dict__},
        "threshold": threshold,
        "validation": table,
        "missed_polyp_frames": missed,
        "training_views": {"polyp": int(labels.sum()), "polyp_free": int((~labels).sum())},
        "time_s": round(time.monotonic() - started, 1),
    }
    card = _card(init, args, threshold, table, missed)
    save_checkpoint(new, out / "best", card=card, extra={"presence": report})
    (out / "presence.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "command.txt").write_text(shlex.join(["lsdseg", *sys.argv[1:]]) + "\n")
    write_splits(
        out / "splits.json", split_record(train, val, datasets, args.seed, args.val_fraction)
    )
    for name, row in table.items():
        what = "sensitivity" if name == "polyp" else "false alarms"
        extra = f", AUROC {row['auroc']:.4f}" if "auroc" in row else ""
        console.print(
            f"  {name}: {int(row['frames'])} frames, {what} {row['judged_polyp']:.1%}{extra}"
        )
    console.print(
        f"done: presence threshold {threshold:.4f} (validation sensitivity >= "
        f"{cfg.min_sensitivity:.0%}); {len(missed)} validation polyp frames missed; "
        f"checkpoint in {out}/best"
    )
    return 0


def _card(init: str, args: argparse.Namespace, threshold: float, table: dict, missed: list) -> str:
    """The model card of the checkpoint with its new head."""
    from lsdseg.presence_train import validation_table

    negatives = ", ".join(args.negatives or []) or "none (crops of the polyp frames only)"
    return (
        "# lsdseg checkpoint with a presence head\n\n"
        f"The segmentation weights are those of `{init}`; only the presence head was trained "
        "(`lsdseg train --stage presence`).\n\n"
        f"- data: {', '.join(args.data)}; polyp-free folders: {negatives}\n"
        f"- presence threshold {threshold:.4f}, chosen on validation\n\n"
        f"{validation_table(table)}\n\n"
        f"Validation polyp frames the head misses: {len(missed)}.\n"
    )
