"""Resuming ``lsdseg train`` in a run folder: the run's settings, checked with the options'
names, and where it goes on (see :func:`lsdseg.trainstate.check_resume`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from lsdseg.cli.errors import UserError

if TYPE_CHECKING:
    from lsdseg.config import ModelConfig, TrainConfig

# TrainConfig fields and the run's data -> the option that sets them (for resume messages)
OPTIONS = {
    "stage": "--stage",
    "ae_epochs": "--ae-epochs",
    "epochs": "--epochs",
    "extend": "--extend",
    "batch_size": "--batch-size",
    "diffusion_lr": "--lr",
    "seed": "--seed",
    "val_every": "--val-every",
    "val_steps": "--val-steps",
    "max_steps_per_epoch": "--max-steps-per-epoch",
    "init": "--init",
    "grow": "--grow",
    "image_encoder": "--image-encoder",
    "pyramid_width": "--pyramid-width",
    "feature_views": "--feature-views",
    "backbone_lr_scale": "--backbone-lr-scale",
    "train_early_stages": "--train-early-stages",
    "train_sizes": "--train-sizes",
    "data.data": "--data",
    "data.val_data": "--val-data",
    "data.val_fraction": "--val-fraction",
    "data.negatives": "--negatives",
}


def with_options(message: str) -> str:
    """A core message with each setting it names written as the option that sets it.

    ``stage='diffusion'`` becomes ``--stage diffusion`` and ``batch_size=16`` ``--batch-size 16``;
    a bare name with an underscore (``lower batch_size``) becomes the option alone. Names of other
    things, and one-word names without a value (``init``, ``grow`` in prose), are left as they are.
    """
    names = "|".join(re.escape(k) for k in sorted(OPTIONS, key=len, reverse=True))
    valued = rf"(?<![\w.-])({names})=(?:'([^']*)'|\"([^\"]*)\"|([^\s,;:)]+))"
    message = re.sub(
        valued,
        lambda m: f"{OPTIONS[m[1]]} {next(g for g in m.groups()[1:] if g is not None)}",
        message,
    )
    bare = "|".join(re.escape(k) for k in OPTIONS if "_" in k and "." not in k)
    return re.sub(rf"(?<![\w.-])({bare})(?![\w=])", lambda m: OPTIONS[m[1]], message)


def data_settings(args: argparse.Namespace) -> dict:
    """What the run trains on, as saved in config.json and compared on resume: the dataset
    folders (absolute) and how validation is made."""
    return {
        "data": [str(Path(d).resolve()) for d in args.data],
        "val_data": [str(Path(d).resolve()) for d in args.val_data] if args.val_data else None,
        "val_fraction": None if args.val_data else args.val_fraction,
        "negatives": [str(Path(d).resolve()) for d in args.negatives or []],
    }


def check_resume(
    args: argparse.Namespace, cfg: TrainConfig, model_cfg: ModelConfig, out: Path
) -> str | None:
    """For a run folder with a checkpoint: refuse other settings (each named with its option),
    and say where the run resumes; None when the run is done and has nothing to train.

    Returns:
        The line to print ("resuming from epoch N ..."), or None for a finished run.
    """
    import dataclasses

    from lsdseg.checkpoint import read_config
    from lsdseg.trainstate import resume_loop

    if args.model_config and not cfg.init:  # the run's architecture wins on resume: say so
        saved = dataclasses.replace(read_config(out / "last")[0], latent_scale=1.0)
        if dataclasses.replace(model_cfg, latent_scale=1.0) != saved:
            raise UserError(
                f"--model-config {args.model_config} is not the architecture {out} was started "
                f"with (its last/config.json); drop --model-config to resume, or start a new "
                "run in another folder (--name or --out)"
            )
    try:
        loop = resume_loop(out, cfg, data_settings(args), args.extend, lambda k: OPTIONS.get(k, k))
    except ValueError as e:
        raise UserError(str(e)) from None
    if loop.phase == "done":
        return None
    stage = {"autoencoders": "stage 1 (autoencoders)", "diffusion": "stage 2 (diffusion)"}
    return f"resuming from epoch {loop.epoch} of {stage[loop.phase]} in {out}/last"
