"""``lsdseg evaluate``: metrics of a model on a dataset, at each image's original size."""

from __future__ import annotations

import argparse
import csv
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
    sampler_config,
    seed_arg,
)
from lsdseg.cli.records import csv_text, write_json
from lsdseg.cli.runs import add_run_folder_options, check_apart, check_writable, next_run_dir

if TYPE_CHECKING:
    from rich.console import Console

    from lsdseg.data import Pair
    from lsdseg.segmenter import Result

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
        "--seed",
        type=seed_arg(),
        default=0,
        help="seed of the initial noise; image i uses seed + i",
    )
    add_backend_option(p, default="torch")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_speed_options(p)
    p.add_argument(
        "--groups",
        default="",
        help="only evaluate these groups, comma-separated (e.g. CVC sequences 5,20)",
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
    from lsdseg.backends import resolve_backend
    from lsdseg.cli.compare_cmd import check_plain_evaluate, labelled_pairs, run_evaluate
    from lsdseg.cli.console import make_console
    from lsdseg.cli.options import device_option
    from lsdseg.cli.pipeline import StopFlag
    from lsdseg.data import find_pairs
    from lsdseg.evaluate import evaluate

    apply_max_pixels(args)
    if args.compare is not None or args.sweep is not None:
        return run_evaluate(args)
    check_plain_evaluate(args)
    check_writable(args.project, "--project")  # before the data and the model are loaded
    check_apart(args.project, args.name, args.exist_ok, [Path(d) for d in args.data])
    sampler_config(
        hypotheses=args.hypotheses, steps=args.steps, eta=args.eta, threshold=args.threshold
    )
    device = device_option(args.device)
    backend = resolve_backend(args.backend, device)
    precision = check_speed_options(args, device, backend, args.eta)
    console = make_console()
    pairs = []
    dataset: dict[int, str] = {}  # id(pair) -> the --data it comes from (per_image.csv)
    for d in args.data if args.val_fraction is None else []:
        layout, found = find_pairs(d)
        console.print(f"{d}: {len(found)} images ({layout} layout)")
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
    seg = lsdseg.load(args.weights, device, backend, args.cuda_graph, precision)
    check_graph_eta(args.cuda_graph, seg.settings(eta=args.eta).eta)
    out = next_run_dir(args.project, args.name, args.exist_ok)
    vis = Pictures(out) if args.save_vis else None

    # rows are written as they come and a signal stops between images, so an interrupted run
    # keeps every image done, and its summary
    with (
        PerImageWriter(out / "per_image.csv") as per_image,
        Progress(console=console, transient=True) as progress,
        StopFlag() as stop,
    ):
        task = progress.add_task("evaluating", total=len(pairs))

        rows: list[dict[str, Any]] = []

        def on_row(row: dict[str, Any]) -> None:
            rows.append(row)

        def on_image(pair: Pair, image: np.ndarray, mask: np.ndarray | None, r: Result) -> None:
            row = rows[-1]  # evaluate calls on_row first: rows[-1] is this image's
            per_image.write({**row, "dataset": dataset.get(id(pair), "")})
            if vis is not None:
                vis.add(pair.name, image, mask, r, row, dataset.get(id(pair), ""))
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
            on_row=on_row,
            stop=stop.event,
        )
    stopped_by = stop.reason if ev.stopped else None
    s = seg.settings(args.hypotheses, args.steps, args.eta, args.threshold)  # as run
    summary = {
        **ev.summary,
        "weights": args.weights,
        "backend": seg.backend,
        "device": args.device,
        "precision": seg.precision,
        "cuda_graph": seg.cuda_graph,
        "hypotheses": s.hypotheses,
        "steps": s.steps,
        "eta": s.eta,
        "threshold": s.threshold,
        "shift": s.shift,  # the checkpoint's timestep shift (SamplerConfig.shift)
        "data": args.data,
        "val_fraction": args.val_fraction,
        "skipped_files": ev.skipped,
        "stopped_by": stopped_by,  # None (every image done), SIGINT, SIGTERM or SIGHUP
        "command": shlex.join(["lsdseg", *sys.argv[1:]]),
    }
    write_json(out / "summary.json", summary)  # a metric without a value (NaN) as null
    if vis is not None and ev.summary["labelled"]:
        groups = f", groups {args.groups}" if args.groups else ""
        vis.write_summary(
            f"lsdseg evaluate: {', '.join(args.data)}{groups}, weights {args.weights}, "
            f"{ev.summary['labelled']} labelled images"
        )

    labelled, skipped = ev.summary["labelled"], ev.summary["skipped"]
    if ev.rows and not labelled:
        console.print(
            f"no image has a mask: predictions of {len(ev.rows)} images written (per_image.csv"
            f"{', vis/' if vis else ''}), nothing scored"
        )
    elif labelled:
        _print_metrics(console, ev.summary, args.data)
    if vis is not None and labelled:
        console.print(f"pictures in {out / 'vis'}, the run's figure in {out / 'summary.png'}")
    stopped = f", stopped by {stopped_by} after {len(ev.rows) + skipped} of {len(pairs)}"
    console.print(
        f"{labelled} labelled, {ev.summary['unlabelled']} unlabelled, {skipped} skipped"
        f"{stopped if stopped_by else ''}; results in {out}"
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
    if not labelled:
        raise UserError(
            "nothing was scored: no image has a mask; give a labelled dataset (images/ + "
            "masks/), or use lsdseg segment for predictions"
        )
    return 0


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

        panel = image_panel(image, mask, result.mask, result.entropy, name, row)
        write_png(self.folder / self.file_name(name, dataset), panel)
        if mask is not None:
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
        f"means over the {summary['labelled']} labelled images (latency: all "
        f"{summary['images']}); ECE pooled bins all their pixels together (15 bins), ECE "
        "image mean averages per_image.csv's ece"
    )
    auroc = summary["unsure_auroc"]
    console.print(
        f"unsure score: AUROC {auroc:.3f} for the {summary['low_dice_images']} images "
        "below Dice 0.5"
        if auroc == auroc  # not NaN
        else f"unsure score: no AUROC ({summary['low_dice_images']} of "
        f"{summary['labelled']} images below Dice 0.5: it needs both kinds)"
    )
