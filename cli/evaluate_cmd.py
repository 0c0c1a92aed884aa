"""``lsdseg evaluate``: metrics of a model on a dataset, at each image's original size."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lsdseg.cli.compare_cmd import add_evaluate_options
from lsdseg.cli.errors import UserError, output_error
from lsdseg.cli.main import EXIT_SIGNAL
from lsdseg.cli.options import (
    add_backend_option,
    add_max_pixels_option,
    add_speed_options,
    apply_max_pixels,
    check_graph_eta,
    check_speed_options,
    precision_of,
    sampler_config,
    seed_arg,
)
from lsdseg.cli.records import csv_text, write_json
from lsdseg.cli.runs import add_run_folder_options, check_apart, check_writable, next_run_dir

if TYPE_CHECKING:
    from rich.console import Console

    from lsdseg.data import Pair
    from lsdseg.segmenter import Result, Segmenter

# the table's rows: summary.json key, the name shown (one name per definition; README)
_METRICS = [
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("hd95", "HD95 px"),
    ("ece_pooled", "ECE pooled"),
    ("ece_image_mean", "ECE image mean"),
    ("uncertainty_auroc", "Uncertainty AUROC"),
    ("mi_auroc", "MI AUROC"),
    ("std_auroc", "Std AUROC"),
    ("unsure_auroc", "Unsure AUROC"),
    ("mean_latency_ms", "Latency ms"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a labelled dataset (Dice, IoU, HD95, ECE, uncertainty AUROC)",
        description="Segment every image of a dataset and score it against its mask at the "
        "image's original resolution. Images without masks are segmented and counted as "
        "unlabelled; unreadable files are named, skipped and counted. A run that scored "
        "nothing or skipped a file exits with status 1 once its results are written. "
        "--compare WEIGHTS compares two weights on the same images and seeds (the 95% bootstrap "
        "interval of the Dice difference per dataset); --sweep scores steps x thresholds.",
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
        "--presence-threshold",
        type=float,
        default=None,
        metavar="P",
        help="a frame holds a polyp when its presence score reaches P (default: checkpoint's; "
        "0 draws a mask on every frame)",
    )
    p.add_argument(
        "--seed",
        type=seed_arg(),
        default=0,
        help="seed of the initial noise; image i uses seed + i",
    )
    add_backend_option(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_speed_options(p)
    p.add_argument(
        "--groups",
        default="",
        help="only evaluate these groups, comma-separated (e.g. CVC sequences 5,20)",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=0,
        metavar="N",
        help="score only the first N images (after --groups and --val-fraction; 0: all), as "
        "segment's --max-frames: a quick look before a long run",
    )
    add_run_folder_options(p, "runs/evaluate")
    add_max_pixels_option(p)
    add_evaluate_options(p)  # --val-fraction, --split-seed, --compare, --sweep
    p.add_argument(
        "--save-vis",
        action="store_true",
        help="write a picture per image to vis/ (the ground-truth and predicted contours on "
        "the image, Dice and IoU, the uncertainty with its scale) and summary.png (Dice "
        "histogram, Dice by polyp size, reliability diagram)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    import lsdseg
    from lsdseg.backends import needs, resolve_backend
    from lsdseg.cli.compare_cmd import check_plain_evaluate, labelled_pairs, run_evaluate
    from lsdseg.cli.console import make_console
    from lsdseg.cli.display import PlainProgress
    from lsdseg.cli.options import device_option
    from lsdseg.cli.pipeline import StopFlag
    from lsdseg.data import find_pairs
    from lsdseg.evaluate import evaluate

    apply_max_pixels(args)
    if args.compare is not None or args.sweep is not None:
        return run_evaluate(args)
    check_plain_evaluate(args)
    if args.max_images < 0:
        raise UserError(f"--max-images {args.max_images} must be >= 0 (0: all images)")
    check_writable(args.project, "--project")  # before the data and the model are loaded
    check_apart(args.project, args.name, args.exist_ok, [Path(d) for d in args.data])
    sampler_config(
        hypotheses=args.hypotheses,
        steps=args.steps,
        eta=args.eta,
        threshold=args.threshold,
        presence_threshold=args.presence_threshold,
    )
    device = device_option(args.device)
    wants = needs(args.eta, False, False, args.cuda_graph, precision_of(args))
    backend = resolve_backend(args.backend, device, wants)
    precision = check_speed_options(args, device, backend, args.eta)
    console = make_console()
    pairs = []
    dataset: dict[int, str] = {}  # id(pair) -> the --data it comes from (per_image.csv)
    for d in args.data if args.val_fraction is None else []:
        layout, found = find_pairs(d)
        console.print(f"{d}: {len(found)} images ({layout} layout)")
        pairs += found
        dataset.update((id(p), d) for p in found)
    for d in (args.negatives or []) if args.val_fraction is None else []:
        layout, found = find_pairs(d)  # polyp-free: any mask there is ignored
        console.print(f"{d}: {len(found)} polyp-free images ({layout} layout)")
        found = [dataclasses.replace(p, mask=None) for p in found]
        pairs += found
        dataset.update((id(p), d) for p in found)
    if args.val_fraction is not None:  # the labelled pairs of the split, --groups applied
        from lsdseg.data import dataset_of

        pairs = labelled_pairs(args, console)
        folders = {Path(d).resolve().name: d for d in args.data}
        dataset.update((id(p), folders.get(dataset_of(p.group), "")) for p in pairs)
    elif args.groups:
        wanted = {g.strip() for g in args.groups.split(",") if g.strip()}
        if not wanted:
            raise UserError(f"--groups {args.groups!r} names no group; give them comma-separated")
        have = {p.group for p in pairs}
        if not wanted <= have:
            raise UserError(
                f"--groups {sorted(wanted - have)} not in the data; groups are {sorted(have)[:20]}"
            )
        pairs = [p for p in pairs if p.group in wanted]
    if args.max_images and len(pairs) > args.max_images:
        console.print(
            f"--max-images {args.max_images}: the first {args.max_images} of {len(pairs)}"
        )
        pairs = pairs[: args.max_images]
    seg = lsdseg.load(args.weights, device, backend, args.cuda_graph, precision)
    check_graph_eta(args.cuda_graph, seg.settings(eta=args.eta).eta)
    warning = trained_on(seg.checkpoint, args.data, pairs)
    if warning:
        print(f"lsdseg evaluate: warning: {warning}", file=sys.stderr)
    out = next_run_dir(args.project, args.name, args.exist_ok)
    vis = Pictures(out) if args.save_vis else None

    # rows are written as they come and a signal stops between images, so an interrupted run
    # keeps every image done, and its summary
    # a terminal gets a live bar; a log (not a terminal) a line every 30 s on stderr
    plain = None if console.is_terminal else PlainProgress("lsdseg evaluate", len(pairs))
    with (
        PerImageWriter(out / "per_image.csv") as per_image,
        Progress(console=console, transient=True, disable=plain is not None) as progress,
        StopFlag() as stop,
    ):
        task = progress.add_task("evaluating", total=len(pairs))

        def advance() -> None:
            progress.advance(task)
            if plain is not None:
                plain.advance()

        rows: list[dict[str, Any]] = []

        def on_row(row: dict[str, Any]) -> None:
            rows.append(row)

        def on_image(pair: Pair, image: np.ndarray, mask: np.ndarray | None, r: Result) -> None:
            row = rows[-1]  # evaluate calls on_row first: rows[-1] is this image's
            per_image.write({**row, "dataset": dataset.get(id(pair), "")})
            if vis is not None:
                vis.add(pair.name, image, mask, r, row, dataset.get(id(pair), ""))
            advance()

        def on_skip(pair: Pair, reason: str) -> None:
            print(f"lsdseg evaluate: warning: skipped {pair.name}: {reason}", file=sys.stderr)
            advance()

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
            on_row=on_row,
            stop=stop.event,
            presence_threshold=args.presence_threshold,
        )
    stopped_by = stop.reason if ev.stopped else None
    summary = {
        **ev.summary,  # the counts and metrics, under the keys the printed table names
        "settings": run_settings(args, seg, str(device)),  # never a metric's key
        "skipped_files": ev.skipped,
        "stopped_by": stopped_by,  # None (every image done), SIGINT, SIGTERM or SIGHUP
        "command": shlex.join(["lsdseg", *sys.argv[1:]]),
    }
    write_json(out / "summary.json", summary)  # a metric without a value (NaN) as null
    polyp, free = ev.summary["polyp_frames"], ev.summary["polyp_free_frames"]
    if vis is not None and polyp:
        groups = f", groups {args.groups}" if args.groups else ""
        partial = ""
        if stopped_by:  # the figure says first that it covers part of the data
            partial = f"PARTIAL, stopped by {stopped_by} after {len(ev.rows)} of {len(pairs)}: "
        vis.write_summary(
            f"{partial}lsdseg evaluate: {', '.join(args.data)}{groups}, weights "
            f"{args.weights}, {polyp} polyp frames"
        )

    skipped = ev.summary["skipped"]
    if polyp:
        _print_metrics(console, ev.summary, args.data)
    if ev.rows:
        console.print(frame_line(ev.summary))
    if vis is not None and ev.rows:
        figure = f", the run's figure in {out / 'summary.png'}" if polyp else ""
        console.print(f"pictures in {out / 'vis'}{figure}")
    stopped = f", stopped by {stopped_by} after {len(ev.rows) + skipped} of {len(pairs)}"
    console.print(
        f"{polyp} polyp frames, {free} polyp-free frames (no mask or an empty one), "
        f"{skipped} skipped{stopped if stopped_by else ''}; results in {out}"
    )
    if stopped_by:
        return EXIT_SIGNAL[stopped_by]
    if not ev.rows:
        raise UserError(f"none of the {len(pairs)} images could be read (named above)")
    if skipped:
        raise UserError(
            f"{skipped} of {len(pairs)} images could not be read and were skipped (named above); "
            f"the results of the other {len(ev.rows)} are in {out}"
        )
    return 0


def frame_line(summary: dict[str, Any]) -> str:
    """The frame-level line: sensitivity on polyp frames, false alarms on polyp-free ones."""

    def pct(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.1%}"

    parts = []
    if summary["polyp_frames"]:
        parts.append(
            f"sensitivity {pct(summary['sensitivity'])} of {summary['polyp_frames']} polyp "
            "frames (a mask drawn)"
        )
    if summary["polyp_free_frames"]:
        parts.append(
            f"false alarms {pct(summary['false_alarm_rate'])} of "
            f"{summary['polyp_free_frames']} polyp-free frames "
            f"({pct(summary['false_alarm_rate_05'])} over 0.5% of the frame)"
        )
    auroc = summary["score_auroc"]
    if auroc == auroc:  # not NaN
        parts.append(f"presence score AUROC {auroc:.3f}")
    return "frames: " + "; ".join(parts)


def trained_on(checkpoint: Path | None, data: list[str], pairs: list[Pair]) -> str | None:
    """One line when some of ``pairs`` are in the training split of the run the weights came
    from (its ``splits.json``): their scores flatter the model; it says how to score only the
    held-out part. None when they are not, or the weights carry no split."""
    from lsdseg.splits import find_splits, training_overlap

    found = find_splits(checkpoint) if checkpoint is not None else None
    if found is None:
        return None
    path, record = found
    overlap = training_overlap(record, data, pairs)
    if not overlap.trained:
        return None
    if overlap.held_out_groups and len(overlap.held_out_groups) <= 20:
        how = f"--groups {','.join(overlap.held_out_groups)}"
    elif record.get("val_fraction") is not None:
        how = f"--val-fraction {record['val_fraction']} --split-seed {record.get('seed', 0)}"
    else:
        how = "the run's validation folders (--val-data when it trained)"
    return (
        f"{overlap.trained} of {overlap.total} images are in the training split of these weights "
        f"({path}): their scores flatter the model; score only the held-out part with {how}"
    )


def run_settings(args: argparse.Namespace, seg: Segmenter, device: str) -> dict[str, Any]:
    """summary.json's ``settings``: what the run ran with, resolved (the device and backend
    that ran, the checkpoint's sampler defaults for the options not given); the metrics stay at
    the top level, so a setting (``precision``: fp32) never shadows a metric (precision)."""
    s = seg.settings(  # as run
        args.hypotheses, args.steps, args.eta, args.threshold, args.presence_threshold
    )
    return {
        "weights": args.weights,
        "backend": seg.backend,
        "device": device,
        "precision": seg.precision,
        "cuda_graph": seg.cuda_graph,
        "hypotheses": s.hypotheses,
        "steps": s.steps,
        "eta": s.eta,
        "threshold": s.threshold,
        "presence_threshold": s.presence_threshold,
        "shift": s.shift,  # the checkpoint's timestep shift (SamplerConfig.shift)
        "seed": args.seed,
        "negatives": args.negatives or None,
        "data": args.data,
        "groups": args.groups or None,  # None: every group
        "val_fraction": args.val_fraction,
        "split_seed": args.split_seed if args.val_fraction is not None else None,
    }


def _cell(value: object) -> object:
    """A per_image.csv cell: floats to 6 significant digits, NaN (no value) empty, text safe
    for a spreadsheet (:func:`~lsdseg.cli.records.csv_text`)."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return csv_text(value)


class Pictures:
    """``--save-vis``: a PNG per image in ``vis/`` as it is done, and the run's figure
    ``summary.png`` (see :mod:`lsdseg.cli.evalvis`)."""

    def __init__(self, out: Path) -> None:
        from lsdseg.cli.evalvis import Reliability

        self.out, self.folder = out, out / "vis"
        self.folder.mkdir(exist_ok=True)
        self.reliability = Reliability()
        self.dices: list[float] = []
        self.sizes: list[float] = []  # the ground truth's share of the image
        self.used: set[str] = set()  # file names written, so that no picture replaces another

    def add(
        self,
        name: str,
        image: np.ndarray,
        mask: np.ndarray | None,
        result: Result,
        row: dict[str, Any],
        dataset: str = "",
    ) -> None:
        from lsdseg.cli.evalvis import image_panel
        from lsdseg.cli.writer import write_png

        # the map segment draws by default (its --uncertainty mi), so the two pictures agree
        panel = image_panel(image, mask, result.mask, result.mutual_info, name, row)
        write_png(self.folder / self.file_name(name, dataset), panel)
        if mask is not None and mask.any():  # polyp frames only, as the metrics
            self.reliability.update(result.mean, mask)
            self.dices.append(float(row["dice"]))
            self.sizes.append(float(mask.mean()))

    def file_name(self, name: str, dataset: str = "") -> str:
        """``<name>.png``, unique in vis/: an image whose name another dataset (or the same
        one, as ``a.png`` and ``a.jpg``) already used gets ``<dataset>_<name>.png``, then a
        number."""
        tag = Path(dataset).resolve().name if dataset else ""
        for stem in [name, f"{tag}_{name}"] if tag else [name]:
            if stem not in self.used:
                break
        else:
            n = 2
            while f"{stem}~{n}" in self.used:
                n += 1
            stem = f"{stem}~{n}"
        self.used.add(stem)
        return f"{stem}.png"

    def write_summary(self, title: str) -> None:
        from lsdseg.cli.evalvis import summary_figure
        from lsdseg.cli.writer import write_png

        figure = summary_figure(self.dices, self.sizes, self.reliability, title)
        write_png(self.out / "summary.png", figure)


class PerImageWriter:
    """per_image.csv, one row per image read, flushed as each comes (a context manager).

    Columns: :data:`lsdseg.evaluate.COLUMNS` with ``dataset`` after ``name``; an unlabelled
    image leaves the metrics empty.
    """

    def __init__(self, path: Path) -> None:
        from lsdseg.evaluate import COLUMNS

        self.path = path
        self._file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        # dataset: the --data folder of the image, so rows of two datasets with the same file
        # names are told apart
        columns = [COLUMNS[0], "dataset", *COLUMNS[1:]]
        self._csv = csv.DictWriter(self._file, fieldnames=columns, restval="")
        self._csv.writeheader()
        self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        try:
            self._csv.writerow({k: _cell(v) for k, v in row.items()})
            self._file.flush()
        except OSError as e:  # a full disk: the file named, not a bare [Errno 28]
            raise output_error(self.path, e) from None

    def __enter__(self) -> PerImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _print_metrics(console: Console, summary: dict[str, Any], data: list[str]) -> None:
    """The metrics table and the unsure-score line."""
    from rich.table import Table

    table = Table(title=f"lsdseg evaluate: {', '.join(data)}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("summary.json")
    for key, name in _METRICS:
        value = summary.get(key, math.nan)
        table.add_row(name, "-" if math.isnan(value) else f"{value:.4g}", key)
    console.print(table)
    console.print(
        f"means over the {summary['polyp_frames']} polyp frames (latency: all "
        f"{summary['images']}); ECE pooled bins all their pixels together (15 bins), ECE "
        "image mean averages per_image.csv's ece"
    )
    auroc = summary["unsure_auroc"]
    console.print(
        f"unsure score: AUROC {auroc:.3f} for the {summary['low_dice_images']} images "
        "below Dice 0.5"
        if auroc == auroc  # not NaN
        else f"unsure score: no AUROC ({summary['low_dice_images']} of "
        f"{summary['polyp_frames']} images below Dice 0.5: it needs both kinds)"
    )
