"""``lsdseg train``: the two training stages on one or more datasets, resumable."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from lsdseg.cli.errors import UserError
from lsdseg.cli.options import add_max_pixels_option, apply_max_pixels, flag_message, seed_arg
from lsdseg.cli.runs import check_apart, check_writable, run_lock


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (autoencoders, then diffusion); re-run to resume",
        description="Train on one or more datasets (Kvasir-SEG, PraNet/CVC, ISIC-2018, generic "
        "layouts are detected). Killing the run and re-running the same command resumes it.",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="DIR",
        help="dataset folder (repeat to mix datasets)",
    )
    p.add_argument(
        "--val-data",
        action="append",
        metavar="DIR",
        help="validation dataset(s); default: a by-group split of each --data",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of each --data held out by group when no --val-data",
    )
    p.add_argument(
        "--project", default="runs/train", help="parent of the run folders (default runs/train)"
    )
    p.add_argument(
        "--name",
        default=None,
        help="run folder under --project: started there, or resumed when it holds a run; "
        "without --name, --out or --resume each run gets a new folder (exp, exp2, ...)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="the run folder itself (instead of --project/--name): started, or resumed",
    )
    p.add_argument(
        "--resume", default=None, metavar="DIR", help="resume the run in DIR (it must hold one)"
    )
    p.add_argument(
        "--stage",
        choices=["all", "autoencoders", "diffusion", "presence"],
        default="all",
        help="stages to run: autoencoders (stage 1: the image and mask autoencoders), "
        "diffusion (stage 2: the denoiser, usually with --init), all (both in turn), or "
        "presence (the head that decides whether a frame holds a polyp, on an --init "
        "checkpoint, everything else frozen)",
    )
    p.add_argument(
        "--negatives",
        action="append",
        metavar="DIR",
        help="a folder of polyp-free images (repeatable; any layout, masks ignored). Images "
        "of a --data folder without a mask, or with an empty one, are polyp-free too",
    )
    p.add_argument(
        "--presence-hidden",
        type=int,
        default=64,
        help="--stage presence: hidden width of the head (default 64)",
    )
    p.add_argument(
        "--presence-views",
        type=int,
        default=1,
        help="--stage presence: views of each training image, the first as it is and the "
        "others augmented (default 1, the fewest false alarms on validation)",
    )
    p.add_argument(
        "--min-sensitivity",
        type=float,
        default=1.0,
        help="--stage presence: the threshold keeps this share of the validation polyp frames "
        "(default 1: all; a polyp frame judged polyp-free loses its whole mask)",
    )
    p.add_argument("--epochs", type=int, default=60, help="diffusion-stage epochs")
    p.add_argument("--ae-epochs", type=int, default=10, help="autoencoder-stage epochs")
    p.add_argument("--batch-size", type=int, default=16, help="images per training step")
    p.add_argument("--lr", type=float, default=5e-4, help="diffusion-stage learning rate")
    p.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help="training image size S (default: the --init checkpoint's, else 256); with --init, "
        "another size fine-tunes the checkpoint at that size",
    )
    p.add_argument("--init", default="", help="start from a checkpoint ('default' or a folder)")
    p.add_argument(
        "--grow",
        default="",
        metavar="JSON",
        help="with --init: architecture changes that start as the identity, e.g. "
        '\'{"image_ae": {"context_depth": 2}}\' (or encoder_depth)',
    )
    p.add_argument(
        "--image-encoder",
        choices=["efficientnet_lite0", "efficientnet_lite2"],
        default=None,
        help="with --init: replace its image encoder by this ImageNet-pretrained one (weights "
        "from the [train] extra), keeping its mask VAE and denoiser; --grow adds other changes",
    )
    p.add_argument(
        "--pyramid-width",
        type=int,
        default=96,
        help="width of the --image-encoder's feature-pyramid decoder (default 96)",
    )
    p.add_argument(
        "--feature-views",
        type=int,
        default=0,
        metavar="N",
        help="pretrained encoders: compute the frozen backbone part once for N augmented views "
        "of each image and train the rest on that cache (epoch e uses view e mod N; default 0: "
        "augment every epoch)",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=1.0,
        help="learning-rate multiplier of the pretrained backbone's trained blocks (default 1)",
    )
    p.add_argument(
        "--train-early-stages",
        action="store_true",
        help="pretrained encoders: fine-tune the stem and blocks up to S/8 too, which otherwise "
        "stay as imported (every step runs the whole backbone; needs --feature-views 0)",
    )
    p.add_argument(
        "--train-sizes",
        type=_sizes,
        default=(),
        metavar="S,S,...",
        help="multi-scale training: each step resizes its batch to one of these sizes, e.g. "
        "224,256,288,320 (validation stays at --imgsz; needs --feature-views 0)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument(
        "--seed",
        type=seed_arg(2**32 - 1),  # training derives per-epoch and per-step seeds from it
        default=0,
        help="seed of the validation split, the initialisation, the data order, the "
        "augmentations and the noise",
    )
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument(
        "--val-steps",
        type=int,
        default=4,
        help="sampling steps of the validation Dice that picks best/ (default 4; use the steps "
        "you will sample with)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=0,
        metavar="MINUTES",
        help="stop, checkpointed, before an epoch would end past this many minutes; re-run the "
        "same command to continue (default: no limit)",
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="resume the run in --out with more --epochs (or --ae-epochs) than it was started "
        "with, a finished run too; the cosine learning-rate schedule stretches to the new "
        "length. Every other setting must be the run's",
    )
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model-config", default="", help="JSON file overriding the architecture")
    add_max_pixels_option(p)
    p.set_defaults(func=run)


def _sizes(text: str) -> tuple[int, ...]:
    """``--train-sizes``: comma-separated positive integers (argparse's type)."""
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: pass comma-separated sizes in pixels, such as 224,256,288,320"
        )
    return sizes


def frame_split_warnings(datasets: dict[str, dict]) -> list[str]:
    """A warning for each dataset split image by image whose images look like video frames."""
    from lsdseg.splits import VIDEO_SHARE

    return [
        f"{info['root']}: its images look like frames of videos ({info['video_frame_share']:.0%}"
        " more neighbouring images are near-duplicates than distant ones) and it has no "
        "sequences.csv, so the split goes frame by frame: frames of one video land in both "
        "training and validation, and the validation Dice flatters the model. Add a "
        "sequences.csv (columns file, sequence) or pass --val-data"
        for info in datasets.values()
        if info.get("video_frame_share", 0.0) > VIDEO_SHARE
    ]


def _parse_grow(text: str, init: str) -> dict:
    """``--grow`` as a dict of ModelConfig overrides ({} when not given)."""
    if not text:
        return {}
    if not init:
        raise UserError("--grow needs --init: the checkpoint whose architecture it changes")
    try:
        grow = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--grow {text!r} is not JSON ({e})") from None
    if not isinstance(grow, dict) or not grow:
        example = '{"image_ae": {"context_depth": 2}}'
        raise UserError(f"--grow {text!r}: pass a JSON object such as '{example}'")
    return grow


def _image_size(
    imgsz: int | None, default: int, init: str, grow: dict, out: Path
) -> tuple[int, dict]:
    """The size S the run trains at, and ``--grow`` with a change of size added.

    A resumed run keeps the size it was started with. A run from ``--init`` takes the
    checkpoint's size unless ``--imgsz`` asks for another: the model is fully convolutional, so
    it is fine-tuned at the new size (``image_size`` joins the ``--grow`` overrides). Otherwise
    ``--imgsz``, or the model config's size.
    """
    from lsdseg.checkpoint import read_config
    from lsdseg.trainstate import has_state

    if has_state(out / "last"):
        size = read_config(out / "last")[0].image_size
        if imgsz not in (None, size):
            raise UserError(
                f"{out} trains at --imgsz {size}: resume it without --imgsz {imgsz}, or start "
                "a new run in another folder (--name or --out)"
            )
        if init and "image_size" not in grow and size != read_config(init)[0].image_size:
            grow = {**grow, "image_size": size}  # as the run recorded it when it started
        return size, grow
    if not init:
        return default if imgsz is None else imgsz, grow
    size = grow.get("image_size", read_config(init)[0].image_size)
    if imgsz is None or imgsz == size:
        return size, grow
    if "image_size" in grow:
        raise UserError(f"--imgsz {imgsz} and --grow image_size {size} disagree: pass one of them")
    return imgsz, {**grow, "image_size": imgsz}


def run_folder(args: argparse.Namespace) -> tuple[Path, str]:
    """The run's folder and the option that named it.

    ``--resume DIR`` (which must hold a run), ``--out DIR`` or ``--project/--name`` name a
    folder, which is resumed when it holds a run and started otherwise; with none of them a new
    run gets the first free ``exp``, ``exp2``, ... under ``--project`` (as segment and evaluate
    number theirs), so a second run never lands in the first one's folder.

    Raises:
        UserError: two of them at once, ``--resume`` of a folder without a run, or a numbered
            folder under torchrun (each rank would number on its own).
    """
    import os

    from lsdseg.trainstate import has_state

    given = [o for o, v in (("--resume", args.resume), ("--out", args.out), ("--name", args.name))
             if v is not None]  # fmt: skip
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both name the run folder: give one of them")
    if args.resume is not None:
        if not has_state(Path(args.resume) / "last"):
            raise UserError(
                f"--resume {args.resume}: no run to resume there (no last/ with a training "
                "state); give the folder of a run, or start one with --name or --out"
            )
        return Path(args.resume), "--resume"
    if args.out is not None:
        return Path(args.out), "--out"
    if args.name is not None:
        return Path(args.project) / args.name, "--name"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "torchrun: give the run folder with --name or --out, so that every rank writes the "
            "same one (a new numbered folder would be chosen by each rank on its own)"
        )
    n = 1
    while (Path(args.project) / ("exp" if n == 1 else f"exp{n}")).exists():
        n += 1
    return Path(args.project) / ("exp" if n == 1 else f"exp{n}"), "--project"


def run(args: argparse.Namespace) -> int:
    apply_max_pixels(args)
    out, option = run_folder(args)
    check_writable(out, option)  # before the lock creates the folder
    inputs = [Path(d) for d in [*args.data, *(args.val_data or []), *(args.negatives or [])]]
    try:  # a run folder that is, or holds, a dataset: the run's files would land among its own
        check_apart(str(out.parent), out.name, True, inputs)
    except UserError as e:
        raise UserError(str(e).replace("--project/--name", option)) from None
    with run_lock(out, option):  # a second training on one run folder is refused, naming this
        return _train(args, out)


def _train(args: argparse.Namespace, out: Path) -> int:
    import time

    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from lsdseg.augment import AugmentConfig
    from lsdseg.card import training_card
    from lsdseg.cli.console import make_console
    from lsdseg.cli.options import device_option
    from lsdseg.cli.resume import check_resume, data_settings, with_options
    from lsdseg.config import ModelConfig, TrainConfig, load_json
    from lsdseg.data import load_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.segmenter import bundled_weights
    from lsdseg.splits import split_record, write_splits
    from lsdseg.train import Trainer, TrainingDiverged

    started = time.monotonic()  # --time-limit counts from here, loading and caching included
    console = make_console(stderr=True)
    device = device_option(args.device)
    model_cfg = load_json(ModelConfig, args.model_config) if args.model_config else ModelConfig()
    init = str(bundled_weights()) if args.init == "default" else args.init
    if args.stage == "presence":
        from lsdseg.cli.train_presence import run_presence

        if not 0 < args.val_fraction < 1:
            raise UserError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
        return run_presence(args, console, init, out)
    size, grow = _image_size(
        args.imgsz, model_cfg.image_size, init, _parse_grow(args.grow, init), out
    )
    try:
        model_cfg = dataclasses.replace(model_cfg, image_size=size)
    except ValueError as e:  # the size's checks (a multiple of ..., at most ...)
        if args.imgsz is None:
            raise
        raise UserError(flag_message(e, "image_size", "--imgsz")) from None
    try:
        cfg = TrainConfig(
            stage=args.stage,
            ae_epochs=args.ae_epochs,
            epochs=args.epochs,
            batch_size=args.batch_size,
            diffusion_lr=args.lr,
            seed=args.seed,
            val_every=args.val_every,
            val_steps=args.val_steps,
            num_workers=args.workers,
            max_steps_per_epoch=args.max_steps_per_epoch,
            init=init,
            grow=grow,
            image_encoder=args.image_encoder or "",
            pyramid_width=args.pyramid_width,
            feature_views=args.feature_views,
            backbone_lr_scale=args.backbone_lr_scale,
            train_early_stages=args.train_early_stages,
            train_sizes=args.train_sizes,
        )
    except ValueError as e:  # the core names its settings; the user typed options
        raise UserError(with_options(str(e))) from None
    if args.time_limit < 0:
        raise UserError(f"--time-limit {args.time_limit} must be >= 0 minutes (0: no limit)")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction} must be between 0 and 1")
    from lsdseg.checkpoint import recover_checkpoint
    from lsdseg.trainstate import has_state

    for name in ("last", "best"):  # a kill inside a checkpoint's save: the newest complete one
        said = recover_checkpoint(out / name)
        if said:
            console.print(f"lsdseg train: {said}")
    resuming = has_state(out / "last")
    if resuming:
        line = check_resume(args, cfg, model_cfg, out)
        if line is None:
            console.print(
                f"{out} is done: nothing to train (pass --extend with more --epochs to train "
                "it further; without --name, --out or --resume a new run gets a new folder)"
            )
            return 0
        console.print(line)
    datasets: dict[str, dict] = {}
    train_pairs, val_pairs = load_pairs(
        args.data, args.val_data, args.val_fraction, args.seed, datasets, args.negatives or ()
    )
    for warning in frame_split_warnings(datasets):
        console.print(f"lsdseg train: warning: {warning}")
    if len(train_pairs) < args.batch_size:
        raise UserError(
            f"{len(train_pairs)} training pairs are fewer than --batch-size {args.batch_size}: "
            "lower --batch-size or add data"
        )
    negatives = sum(info.get("negatives", 0) for info in datasets.values())
    console.print(
        f"train: {len(train_pairs)} pairs, validation: {len(val_pairs)} pairs "
        f"({negatives} polyp-free images without a mask among them), device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    train_set = SegmentationDataset(train_pairs, size, AugmentConfig(), seed=args.seed)
    val_set = SegmentationDataset(val_pairs, size) if val_pairs else None
    data_desc = ", ".join(args.data)
    # made (not started) before the trainer, which takes its handler; shown while training
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("", total=1, info="")

    def on_event(e: dict) -> None:
        if e["kind"] == "phase":
            progress.reset(task, total=e["steps"], description=f"{e['phase']}")
        elif e["kind"] == "cache":
            progress.console.print(
                f"caching frozen backbone features: {e['views']} views x {e['items']} images"
            )
        elif e["kind"] == "step":
            progress.update(
                task,
                completed=e["i"],
                description=f"{e['phase']} epoch {e['epoch'] + 1}",
                info=f"loss {e['loss']:.4f}",
            )
        elif e["kind"] == "epoch":
            vals = {k: v for k, v in e.items() if k.startswith("val_")}
            val = " ".join(f"{k[4:]} {v:.3f}" for k, v in vals.items())
            progress.console.print(
                f"{e['phase']} epoch {e['epoch']}: loss {e.get('loss', float('nan')):.4f} "
                f"{val} ({e['time_s']:.0f} s)"
            )

    # built before the slow preload, so a checkpoint that cannot be loaded or grown fails at once
    try:
        trainer = Trainer(
            model_cfg,
            cfg,
            train_set,
            val_set,
            out,
            device,
            on_event=on_event,
            card=lambda m, lp: training_card(m, lp, data_desc, str(device)),
            data=data_settings(args),
            extend=args.extend,
        )
    except ValueError as e:  # the core names its settings; the user typed options
        raise UserError(with_options(str(e))) from None
    with console.status("decoding and caching images"):
        train_set.preload()
        if val_set is not None:
            val_set.preload()
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["lsdseg", *sys.argv[1:]])
    if resuming:  # command.txt keeps the command that started the run; resumes are listed
        with open(out / "resumes.txt", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {command}\n")
    else:
        (out / "command.txt").write_text(command + "\n")
    record = split_record(
        train_pairs,
        val_pairs,
        datasets,
        args.seed,
        None if args.val_data else args.val_fraction,
    )
    saved = out / "splits.json"
    if not resuming or not saved.exists():
        write_splits(saved, record)
    elif json.loads(saved.read_text()) != record:  # the folders' files changed since
        console.print(
            f"lsdseg train: warning: the split differs from the run's {saved} (images added, "
            "removed or renamed since it started); the run goes on with the split of now"
        )
    with progress:
        budget_s = args.time_limit * 60 - (time.monotonic() - started)
        try:
            loop = trainer.run(time_limit_s=max(budget_s, 1e-6) if args.time_limit else 0.0)
        except (ValueError, TrainingDiverged) as e:  # a resume whose state does not fit, say
            raise UserError(with_options(str(e))) from None
    if loop.phase != "done":
        console.print(
            f"stopped at --time-limit {args.time_limit:g} min with {loop.phase} at epoch "
            f"{loop.epoch}; re-run the same command to continue from {out}/last"
        )
        return 0
    folders = f"{out}/best and {out}/last" if (out / "best").exists() else f"{out}/last"
    console.print(f"done: {loop.best_text()}; checkpoints in {folders}")
    return 0
