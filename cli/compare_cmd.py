"""Two weights on the same inputs: ``lsdseg evaluate --compare`` / ``--sweep`` and
``lsdseg bench --compare``.

``evaluate --compare B`` segments every labelled image with ``--weights`` (A) and B, with the
same ``--seeds`` seeds per image, and prints per dataset both mean Dice values and the 95%
bootstrap interval of the difference B - A (:mod:`lsdseg.compare`), and the same for the
per-image entropy AUROC of the error pixels (the images where both sides have one).
``evaluate --sweep STEPS`` scores mean Dice per dataset at each threshold of
:data:`lsdseg.compare.THRESHOLDS` for each step count, for A (and B): the sweep
``scripts/bundle_weights.py`` picks the bundled defaults by. ``--val-fraction`` restricts
either to the validation split ``lsdseg train`` draws.

``bench --compare B`` times A and B alternated round by round in one process, since benchmarks
run one after the other drift on a shared machine.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsdseg.cli.errors import UserError, output_error
from lsdseg.cli.options import flag_message

if TYPE_CHECKING:
    from rich.console import Console

    from lsdseg.compare import Sample
    from lsdseg.config import SamplerConfig
    from lsdseg.segmenter import Segmenter

SWEEP_STEPS = "1,2,4"  # --sweep alone
SEEDS, RESAMPLES = 3, 10_000  # --seeds, --resamples defaults
# their bounds: each seed segments every image once more; the bootstrap holds resamples x
# images indices (100,000 x 1,000 images: 0.8 GB)
MAX_SEEDS, MAX_RESAMPLES = 1000, 100_000

# options of evaluate that only --compare reads, and their flags
_COMPARE_ONLY = {
    "seeds": "--seeds",
    "compare_steps": "--compare-steps",
    "compare_threshold": "--compare-threshold",
    "resamples": "--resamples",
}


def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    """``evaluate``'s ``--val-fraction``/``--split-seed`` and its comparison options."""
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="score only the validation split that lsdseg train --val-fraction F draws from "
        "these folders (labelled images; by group, each dataset on its own); default: every image",
    )
    p.add_argument(
        "--negatives",
        action="append",
        metavar="DIR",
        help="with --val-fraction: also score the validation runs of this folder of polyp-free "
        "images, split as lsdseg train --negatives splits it (repeatable; plain evaluate scores "
        "a polyp-free folder given as --data whole)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="with --val-fraction: the split's seed, as lsdseg train --seed",
    )
    g = p.add_argument_group("comparing weights")
    g.add_argument(
        "--compare",
        metavar="WEIGHTS",
        help="paired comparison: segment the same labelled images with --weights (A) and these "
        "(B) with the same seeds; prints per dataset both mean Dice values and the 95%% "
        "bootstrap interval of B - A (FOLDER:ema: the EMA of a run's last/)",
    )
    g.add_argument(
        "--sweep",
        nargs="?",
        const=SWEEP_STEPS,
        metavar="STEPS",
        help="mean Dice per dataset at thresholds 0.3-0.6 for each of these comma-separated "
        f"DDIM step counts (the flag alone: {SWEEP_STEPS}), one seed per image; with --compare, "
        "for both weights",
    )
    g.add_argument("--seeds", type=int, help=f"--compare: seeds per image (default {SEEDS})")
    g.add_argument("--compare-steps", type=int, help="--compare: B's steps (default: --steps)")
    g.add_argument(
        "--compare-threshold", type=float, help="--compare: B's threshold (default: --threshold)"
    )
    g.add_argument(
        "--resamples", type=int, help=f"--compare: bootstrap resamples (default {RESAMPLES:,})"
    )


def check_plain_evaluate(args: argparse.Namespace) -> None:
    """A plain ``evaluate`` given an option only ``--compare`` reads: refused, naming it."""
    for field, flag in _COMPARE_ONLY.items():
        if getattr(args, field) is not None:
            raise UserError(f"{flag} is an option of --compare: add --compare WEIGHTS, or drop it")


def labelled_pairs(args: argparse.Namespace, console: Console) -> list:
    """The labelled pairs of ``--data`` (or their ``--val-fraction`` split), groups prefixed
    with their dataset, filtered by ``--groups``.

    Raises:
        UserError: a bad ``--val-fraction``, no image left, or unknown ``--groups``.
        DataError: a folder without image/mask pairs.
    """
    from lsdseg.data import dataset_of, find_pairs, load_pairs

    for d in args.data:
        layout, found = find_pairs(d)
        if not any(p.mask is not None for p in found):
            raise UserError(
                f"--data {d}: no labelled images among its {len(found)} ({layout} layout): "
                "--compare, --sweep and --val-fraction score against masks (images/ + masks/)"
            )
    if args.val_fraction is None:
        _, pairs = load_pairs([], args.data, 0.0, 0)  # every labelled pair of every folder
        what = "labelled images"
    else:
        if not 0 < args.val_fraction < 1:
            raise UserError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
        negatives = [] if args.compare or args.sweep else args.negatives or []
        _, pairs = load_pairs(args.data, None, args.val_fraction, args.split_seed, None, negatives)
        what = f"validation images (--val-fraction {args.val_fraction}, seed {args.split_seed})"
    if args.compare or args.sweep:  # Dice is paired: the images with a mask only
        pairs = [p for p in pairs if p.mask is not None]
    if args.groups:
        wanted = {g.strip() for g in args.groups.split(",") if g.strip()}
        if not wanted:
            raise UserError(f"--groups {args.groups!r} names no group; give them comma-separated")
        have = {p.group.split(":", 1)[1] for p in pairs} | {p.group for p in pairs}
        if not wanted <= have:
            raise UserError(
                f"--groups {sorted(wanted - have)} not in the data; groups are {sorted(have)[:20]}"
            )
        pairs = [p for p in pairs if p.group in wanted or p.group.split(":", 1)[1] in wanted]
    if not pairs:
        raise UserError(
            f"no {what.split(' (')[0]} in {', '.join(args.data)}: a split needs at least two "
            "groups per dataset (lower --val-fraction, or drop it to score every image)"
        )
    counts: dict[str, int] = {}
    for p in pairs:
        counts[dataset_of(p.group)] = counts.get(dataset_of(p.group), 0) + 1
    console.print(f"{len(pairs)} {what}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return pairs


def _spec_key(spec: str) -> tuple[str, bool]:
    """What a weights spec points at: the resolved folder and whether it is its EMA."""
    from lsdseg.compare import EMA_SUFFIX
    from lsdseg.segmenter import bundled_weights

    folder = spec.removesuffix(EMA_SUFFIX)
    path = bundled_weights() if folder == "default" else Path(folder)
    return (folder if folder == "untrained" else str(path.resolve())), spec.endswith(EMA_SUFFIX)


def load_weights_option(
    spec: str, flag: str, device: Any, backend: str, cuda_graph: bool, precision: str
) -> Segmenter:
    """A Segmenter for ``--weights`` or ``--compare`` (``FOLDER:ema`` too); a failure to load
    is one line naming the flag.

    Raises:
        UserError: not a checkpoint, no EMA, or ``:ema`` with an export backend.
    """
    from lsdseg.checkpoint import CheckpointError
    from lsdseg.compare import load_segmenter

    try:
        return load_segmenter(spec, device, backend, cuda_graph, precision)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise UserError(f"{flag} {spec}: {e}") from None


def same_weights(a: str, b: str) -> bool:
    """Whether two weights specs name the same weights (``default`` is the bundled folder)."""
    return _spec_key(a) == _spec_key(b)


def _check_evaluate(args: argparse.Namespace) -> None:
    """The option combinations --compare and --sweep refuse, before anything is loaded."""
    if args.save_vis:
        raise UserError("--save-vis draws one model's pictures: drop it with --compare / --sweep")
    if args.compare is None:
        for field, flag in _COMPARE_ONLY.items():
            if getattr(args, field) is not None:
                raise UserError(f"{flag} is an option of --compare, not of --sweep alone")
    if args.sweep is not None:
        for flag, value in (("--steps", args.steps), ("--threshold", args.threshold)):
            if value is not None:
                raise UserError(
                    f"{flag} with --sweep: the sweep scores every step count of --sweep STEPS at "
                    "thresholds 0.3-0.6; drop it"
                )
        for field in ("compare_steps", "compare_threshold", "seeds", "resamples"):
            if getattr(args, field) is not None:
                raise UserError(f"{_COMPARE_ONLY[field]} is for --compare without --sweep")
    if args.seeds is not None and not 1 <= args.seeds <= MAX_SEEDS:
        raise UserError(f"--seeds {args.seeds} must be between 1 and {MAX_SEEDS}")
    if args.resamples is not None and not 1 <= args.resamples <= MAX_RESAMPLES:
        raise UserError(f"--resamples {args.resamples} must be between 1 and {MAX_RESAMPLES:,}")
    if args.compare is not None and same_weights(args.weights, args.compare):
        same = args.compare_steps in (None, args.steps) and args.compare_threshold in (
            None,
            args.threshold,
        )
        if same or args.sweep is not None:
            raise UserError(
                f"--weights {args.weights} and --compare {args.compare} are the same weights: "
                "compare two checkpoints, or these at other settings (--compare-steps, "
                "--compare-threshold)"
            )


def _sweep_steps(text: str) -> list[int]:
    """``--sweep 1,2,4`` -> [1, 2, 4], each a valid step count."""
    from lsdseg.cli.bench_cmd import parse_ints
    from lsdseg.config import SamplerConfig

    values = parse_ints(text, "--sweep")
    for v in values:
        try:
            SamplerConfig(steps=v)
        except ValueError as e:
            raise UserError(flag_message(e, "steps", f"--sweep {text}:")) from None
    return values


def run_evaluate(args: argparse.Namespace) -> int:
    """``lsdseg evaluate --compare`` / ``--sweep``: writes compare.json and per_image.csv, or
    sweep.json, into the run folder."""
    from lsdseg.backends import needs, resolve_backend
    from lsdseg.cli.console import make_console
    from lsdseg.cli.options import (
        check_speed_options,
        device_option,
        precision_of,
        sampler_config,
    )
    from lsdseg.cli.records import write_json
    from lsdseg.cli.runs import check_apart, check_writable, next_run_dir
    from lsdseg.compare import EMA_SUFFIX
    from lsdseg.data import load_sample

    _check_evaluate(args)
    check_writable(args.project, "--project")
    check_apart(args.project, args.name, args.exist_ok, [Path(d) for d in args.data])
    sampler_config(
        hypotheses=args.hypotheses, steps=args.steps, eta=args.eta, threshold=args.threshold
    )
    sampler_config(steps=args.compare_steps, threshold=args.compare_threshold)
    sweep_steps = _sweep_steps(args.sweep) if args.sweep is not None else []
    device = device_option(args.device)
    # the EMA of a last/ checkpoint runs only on a backend that runs the model in memory
    ema = any(str(s).endswith(EMA_SUFFIX) for s in (args.weights, args.compare) if s)
    wants = needs(args.eta, False, False, args.cuda_graph or ema, precision_of(args))
    args.backend = resolve_backend(args.backend, device, wants)
    precision = check_speed_options(args, device, args.backend, args.eta)
    console = make_console(soft_wrap=True)
    specs = [("--weights", args.weights)] + ([("--compare", args.compare)] if args.compare else [])
    segs = [  # before the data
        load_weights_option(spec, flag, device, args.backend, args.cuda_graph, precision)
        for flag, spec in specs
    ]
    pairs = labelled_pairs(args, console)
    samples = [(p, *load_sample(p)) for p in pairs]
    out = next_run_dir(args.project, args.name, args.exist_ok)
    record: dict[str, Any] = {
        "data": args.data,
        "val_fraction": args.val_fraction,
        "split_seed": args.split_seed if args.val_fraction is not None else None,
        "backend": args.backend,
        "device": str(device),
        "seed": args.seed,
        "command": shlex.join(["lsdseg", *sys.argv[1:]]),
    }
    if args.sweep is not None:
        record["rows"] = _sweep(console, args, [s for _, s in specs], segs, samples, sweep_steps)
        write_json(out / "sweep.json", record)
    else:
        record.update(_compare(console, args, segs, samples, out))
        write_json(out / "compare.json", record)
    console.print(f"results in {out}")
    return 0


def _sweep(
    console: Console,
    args: argparse.Namespace,
    specs: list[str],
    segs: list[Segmenter],
    samples: list[Sample],
    steps: list[int],
) -> list[dict[str, Any]]:
    """Print and return the sweep rows of every weights and step count."""
    from lsdseg.compare import THRESHOLDS, sweep
    from lsdseg.data import dataset_of

    datasets = sorted({dataset_of(p.group) for p, _, _ in samples})
    console.print(
        "weights, steps, K, dataset: Dice at thresholds " + ", ".join(map(str, THRESHOLDS))
    )
    rows = []
    for spec, seg in zip(specs, segs, strict=True):
        k = seg.settings(args.hypotheses).hypotheses
        for n in steps:
            row = {"weights": spec, **sweep(seg, samples, n, k, args.seed)}
            rows.append(row)
            for src in datasets:
                dice = " ".join(f"{row[f'dice/{src}@{th}']:.4f}" for th in THRESHOLDS)
                console.print(f"{spec}, {n}, {k}, {src}: {dice}")
    return rows


def _settings_text(s: SamplerConfig) -> str:
    """``K = 8, 2 step(s) @0.5`` (``, shift 2.0`` when the timesteps are shifted)."""
    shift = "" if s.shift == 1.0 else f", shift {s.shift}"
    return f"K = {s.hypotheses}, {s.steps} step(s) @{s.threshold}{shift}"


def _compare(
    console: Console,
    args: argparse.Namespace,
    segs: list[Segmenter],
    samples: list[Sample],
    out: Path,
) -> dict[str, Any]:
    """Print the paired comparison, write per_image.csv; returns what compare.json adds."""
    from dataclasses import asdict

    from lsdseg.cli.records import csv_text
    from lsdseg.compare import compare_datasets, per_image_scores
    from lsdseg.data import dataset_of

    seeds = SEEDS if args.seeds is None else args.seeds
    a_steps = args.steps
    b_steps = a_steps if args.compare_steps is None else args.compare_steps
    b_threshold = args.threshold if args.compare_threshold is None else args.compare_threshold
    a = segs[0].settings(args.hypotheses, a_steps, args.eta, args.threshold)
    b = segs[1].settings(args.hypotheses, b_steps, args.eta, b_threshold)
    sides = (a, b)
    console.print(
        f"A {args.weights}: {_settings_text(a)}; B {args.compare}: {_settings_text(b)}; "
        f"{seeds} seeds per image"
    )
    scores = [
        per_image_scores(seg, samples, s.steps, s.threshold, seeds, s.hypotheses, args.seed, s.eta)
        for seg, s in zip(segs, sides, strict=True)
    ]
    datasets = [dataset_of(p.group) for p, _, _ in samples]
    resamples = RESAMPLES if args.resamples is None else args.resamples
    results = compare_datasets(scores[0].dice, scores[1].dice, datasets, resamples)
    aurocs = compare_datasets(
        scores[0].entropy_auroc, scores[1].entropy_auroc, datasets, resamples, "entropy AUROC"
    )
    for r in results + aurocs:
        console.print(r.line())
    path = out / "per_image.csv"
    columns = ["dice_a", "dice_b", "entropy_auroc_a", "entropy_auroc_b"]
    a_s, b_s = scores
    values = zip(a_s.dice, b_s.dice, a_s.entropy_auroc, b_s.entropy_auroc, strict=True)
    try:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["name", "dataset", "group", *columns])
            for (p, _, _), name, row in zip(samples, datasets, values, strict=True):
                text = [csv_text(t) for t in (p.name, name, p.group)]
                w.writerow([*text, *(f"{v:.6g}" for v in row)])
    except OSError as e:
        raise output_error(path, e) from None
    settings = ("hypotheses", "steps", "eta", "threshold", "shift")
    return {
        "a": {"weights": args.weights, **{k: getattr(a, k) for k in settings}},
        "b": {"weights": args.compare, **{k: getattr(b, k) for k in settings}},
        "seeds": seeds,
        "resamples": resamples,
        "datasets": [asdict(r) for r in results],
        "entropy_auroc": [asdict(r) for r in aurocs],
    }
