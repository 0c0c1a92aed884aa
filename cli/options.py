"""argparse types that several commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

MAX_SEED = 2**63 - 1  # seeds travel as int64 (torch generators, the server's parameters)


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
