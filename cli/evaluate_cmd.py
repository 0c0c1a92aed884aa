"""``lsdseg evaluate``: metrics of a model on a dataset, at each image's original size."""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from typing import TYPE_CHECKING

import numpy as np

from lsdseg.cli.errors import UserError
from lsdseg.cli.runs import add_run_folder_options, next_run_dir

if TYPE_CHECKING:
    from lsdseg.data import Pair
    from lsdseg.segmenter import Result

_COLUMNS = [
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("hd95", "HD95 px"),
    ("ece_pooled", "ECE"),
    ("uncertainty_auroc", "Unc. AUROC"),
    ("mean_latency_ms", "Latency ms"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a labelled dataset (Dice, IoU, HD95, ECE, uncertainty AUROC)",
        description="Segment every image of a dataset and score it against its mask at the "
        "image's original resolution. Images without masks are segmented and counted as "
        "unlabelled; unreadable files are skipped with a warning and counted.",
    )
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="DIR",
        help="dataset folder (repeat for several)",
    )
    p.add_argument("--weights", default="default", help="'default' or a checkpoint folder")
    p.add_argument("--hypotheses", type=int, default=None, help="K (default: checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: checkpoint's)")
    p.add_argument(
        "--eta", type=float, default=None, help="DDIM eta in [0, 1] (default: checkpoint's)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="mask = mean > threshold (default: checkpoint's)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initial noise; image i uses seed + i"
    )
    p.add_argument("--backend", default="torch", help="torch, triton, onnx or trt")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--groups",
        default="",
        help="only evaluate these groups, comma-separated (e.g. CVC sequences 5,20)",
    )
    add_run_folder_options(p, "runs/evaluate")
    p.add_argument(
        "--save-vis",
        action="store_true",
        help="write image | ground truth | mean | uncertainty side by side",
    )
    p.set_defaults(func=run)


def _visual(
    image: np.ndarray, mask: np.ndarray | None, mean: np.ndarray, entropy: np.ndarray
) -> np.ndarray:
    """image | ground truth | mean probability | entropy (TURBO), as one BGR picture."""
    import cv2

    h, w = image.shape[:2]
    gt = np.zeros((h, w), np.uint8) if mask is None else mask.astype(np.uint8) * 255
    panels = [
        image[..., ::-1],
        cv2.cvtColor(gt, cv2.COLOR_GRAY2BGR),
        cv2.applyColorMap((mean * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS),
        cv2.applyColorMap((entropy * 255).astype(np.uint8), cv2.COLORMAP_TURBO),
    ]
    return np.concatenate(panels, axis=1)


def run(args: argparse.Namespace) -> int:
    import cv2
    from rich.progress import Progress
    from rich.table import Table

    import lsdseg
    from lsdseg.cli.console import make_console
    from lsdseg.data import find_pairs
    from lsdseg.evaluate import evaluate

    console = make_console()
    pairs = []
    for d in args.data:
        layout, found = find_pairs(d)
        console.print(f"{d}: {len(found)} images ({layout} layout)")
        pairs += found
    if args.groups:
        wanted = {g.strip() for g in args.groups.split(",") if g.strip()}
        have = {p.group for p in pairs}
        if not wanted <= have:
            raise UserError(
                f"--groups {sorted(wanted - have)} not in the data; groups are {sorted(have)[:20]}"
            )
        pairs = [p for p in pairs if p.group in wanted]
    seg = lsdseg.load(args.weights, device=args.device, backend=args.backend)
    out = next_run_dir(args.project, args.name, args.exist_ok)
    if args.save_vis:
        (out / "vis").mkdir(exist_ok=True)

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(pairs))

        def on_image(pair: Pair, image: np.ndarray, mask: np.ndarray | None, r: Result) -> None:
            if args.save_vis:
                cv2.imwrite(
                    str(out / "vis" / f"{pair.name}.jpg"), _visual(image, mask, r.mean, r.entropy)
                )
            progress.advance(task)

        def on_skip(pair: Pair, reason: str) -> None:
            print(f"lsdseg evaluate: warning: skipped {pair.name}: {reason}", file=sys.stderr)
            progress.advance(task)

        ev = evaluate(
            seg,
            pairs,
            args.hypotheses,
            args.steps,
            args.eta,
            args.seed,
            args.threshold,
            on_image,
            on_skip,
        )
    if ev.rows:
        keys: list[str] = []
        for r in ev.rows:
            keys += [k for k in r if k not in keys]
        with open(out / "per_image.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(ev.rows)
    s = seg.settings(args.hypotheses, args.steps, args.eta, args.threshold)  # as run
    summary = {
        **ev.summary,
        "weights": args.weights,
        "backend": args.backend,
        "device": args.device,
        "hypotheses": s.hypotheses,
        "steps": s.steps,
        "eta": s.eta,
        "threshold": s.threshold,
        "data": args.data,
        "skipped_files": ev.skipped,
        "command": shlex.join(["lsdseg", *sys.argv[1:]]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    if not ev.summary["labelled"]:
        console.print("no image has a mask: predictions written, no metrics (they need masks)")
    table = Table(title=f"lsdseg evaluate: {', '.join(args.data)}")
    for _, name in _COLUMNS:
        table.add_column(name, justify="right")
    table.add_row(*(f"{ev.summary.get(k, float('nan')):.4g}" for k, _ in _COLUMNS))
    console.print(table)
    if ev.summary["labelled"]:
        auroc = ev.summary["unsure_auroc"]
        console.print(
            f"unsure score: AUROC {auroc:.3f} for the {ev.summary['low_dice_images']} images "
            "below Dice 0.5"
            if auroc == auroc  # not NaN
            else f"unsure score: no AUROC ({ev.summary['low_dice_images']} of "
            f"{ev.summary['labelled']} images below Dice 0.5: it needs both kinds)"
        )
    console.print(
        f"{ev.summary['labelled']} labelled, {ev.summary['unlabelled']} unlabelled, "
        f"{ev.summary['skipped']} skipped; results in {out}"
    )
    if not ev.rows:
        raise UserError("no image could be read: see the warnings above")
    return 0
