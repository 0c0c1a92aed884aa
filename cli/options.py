"""argparse types that several commands share."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from lsdseg import backends
from lsdseg.backends import PRECISIONS
from lsdseg.cli.errors import UserError
from lsdseg.config import MAX_SEED

if TYPE_CHECKING:
    import torch

    from lsdseg.config import SamplerConfig


def _power_text(maximum: int) -> str:
    """``2**63 - 1`` for 2**63 - 1, else the number."""
    bits = (maximum + 1).bit_length() - 1
    return f"2**{bits} - 1" if maximum + 1 == 2**bits else str(maximum)


def seed_arg(maximum: int = MAX_SEED, per_frame: bool = False) -> Callable[[str], int]:
    """The ``type=`` of a ``--seed`` option: an integer in [0, maximum], or -1 with
    ``per_frame`` (a new seed for every frame).

    Raises (when argparse calls it):
        argparse.ArgumentTypeError: not an integer, or out of range; argparse prefixes the
            option's name.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not (-1 if per_frame else 0) <= value <= maximum:
            also = ", or -1 for a new seed per frame" if per_frame else ""
            raise argparse.ArgumentTypeError(
                f"{value} must be between 0 and {_power_text(maximum)}{also}"
            )
        return value

    return parse


def add_backend_option(group: argparse._ActionsContainer, default: str = backends.DEFAULT) -> None:
    """``--backend`` with the choices and help of :data:`lsdseg.backends.BACKENDS`."""
    group.add_argument(
        "--backend", choices=backends.choices(), default=default, help=backends.help_text()
    )


def graph_backends() -> str:
    """``torch and triton backends``: those that take a CUDA graph and autocast."""
    return f"{backends.spoken(backends.able('cuda_graph'))} backends"


def add_speed_options(group: argparse._ActionsContainer, summary: bool = True) -> None:
    """``--cuda-graph``, ``--half`` and ``--precision`` (segment, evaluate, serve); ``summary``:
    the command writes a summary.json that records the precision (serve writes none)."""
    graph = graph_backends()
    group.add_argument(
        "--cuda-graph",
        action="store_true",
        help="replay each frame as one CUDA graph, captured on the first frame of each (batch, "
        f"K, steps, size): far fewer kernel launches; {graph} on CUDA, eta 0",
    )
    group.add_argument(
        "--half",
        action="store_true",
        help=f"fp16 autocast on CUDA, {graph} (shorthand for --precision fp16)",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=f"fp32 (the default), or fp16 / bf16 autocast on CUDA ({graph})"
        + ("; recorded in summary.json" if summary else ""),
    )


def precision_of(args: argparse.Namespace) -> str:
    """The precision ``--half`` / ``--precision`` ask for (fp32 when neither is given).

    Raises:
        UserError: ``--half`` with a ``--precision`` other than fp16.
    """
    if args.half and args.precision not in (None, "fp16"):
        raise UserError(
            f"--half is --precision fp16, but --precision {args.precision} was given too; "
            "give one of them"
        )
    return "fp16" if args.half else args.precision or "fp32"


def half_name(args: argparse.Namespace) -> str:
    """How the user asked for the precision, for messages (``--half``, ``--precision bf16``)."""
    return "--half" if args.half else f"--precision {args.precision}"


def check_speed_options(
    args: argparse.Namespace, device: torch.device, backend: str, eta: float | None
) -> str:
    """Refuse ``--cuda-graph`` / ``--half`` where they cannot run, in one line naming the fix;
    returns the precision.

    Raises:
        UserError: conflicting options, or ``--cuda-graph`` with eta > 0.
        ValueError / RuntimeError: a backend or device they cannot run on.
    """
    from lsdseg.accel import check_supported

    precision = precision_of(args)
    check_supported(device, backend, args.cuda_graph, precision, "--cuda-graph", half_name(args))
    check_graph_eta(args.cuda_graph, eta or 0.0)
    return precision


def check_graph_eta(cuda_graph: bool, eta: float) -> None:
    """``--cuda-graph`` runs eta = 0 only (UserError otherwise, naming the fix)."""
    from lsdseg.accel import graph_eta_refusal

    if cuda_graph and eta > 0:
        raise UserError(graph_eta_refusal(eta, "--cuda-graph", "--eta"))


# SamplerConfig field -> the flag that sets it
SAMPLER_FLAGS = {
    "hypotheses": "--hypotheses",
    "steps": "--steps",
    "eta": "--eta",
    "threshold": "--threshold",
    "presence_threshold": "--presence-threshold",
    "warm_timestep": "--temporal-t",
}


def flag_message(error: Exception, field: str, flag: str | None = None) -> str:
    """``steps=0 must be ...`` -> ``--steps 0 must be ...``: a core message in the CLI's terms."""
    text = str(error)
    flag = flag or SAMPLER_FLAGS.get(field, f"--{field.replace('_', '-')}")
    return f"{flag} {text[len(field) + 1 :]}" if text.startswith(f"{field}=") else f"{flag}: {text}"


def sampler_config(base: SamplerConfig | None = None, **given: float | None) -> SamplerConfig:
    """``base`` (default: ``SamplerConfig()``) with each given setting that is not None replaced;
    :class:`~lsdseg.config.SamplerConfig` checks the ranges.

    Raises:
        UserError: a setting out of range, in one line naming its flag (``--steps 0 must be
            between 1 and 1000``).
    """
    from lsdseg.config import SamplerConfig

    config = SamplerConfig() if base is None else base
    for field, value in given.items():
        if value is None:
            continue
        try:
            config = dataclasses.replace(config, **{field: value})
        except ValueError as e:
            raise UserError(flag_message(e, field)) from None
    return config


def device_option(text: str) -> torch.device:
    """``--device`` resolved (:func:`lsdseg.segmenter.resolve_device`; ``auto`` included).

    Raises:
        UserError: not a device, or CUDA asked for without a GPU, in one line naming the flag.
    """
    from lsdseg.segmenter import resolve_device

    try:
        return resolve_device(text)
    except (ValueError, RuntimeError) as e:
        raise UserError(flag_message(e, "device", "--device")) from None


def add_max_pixels_option(group: argparse._ActionsContainer) -> None:
    """``--max-pixels``: the decompression-bomb limit of the image files a command reads."""
    group.add_argument(
        "--max-pixels",
        type=float,
        metavar="N",
        help="largest image file, in pixels, that is decoded; a file whose header declares "
        "more (or that is larger than such an image can be) is refused before it is read, as "
        "a decompression bomb (default: 89478485, Pillow's limit; 0: no limit)",
    )


def apply_max_pixels(args: argparse.Namespace) -> None:
    """Put ``--max-pixels`` in force (through ``LSDSEG_MAX_IMAGE_PIXELS``, which data-loading
    worker processes inherit too).

    Raises:
        UserError: a negative, NaN or infinite value.
    """
    import math
    import os

    value = getattr(args, "max_pixels", None)
    if value is None:
        return
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--max-pixels {value:g} must be a number of pixels >= 0 (0: no limit)")
    os.environ["LSDSEG_MAX_IMAGE_PIXELS"] = str(int(value))
