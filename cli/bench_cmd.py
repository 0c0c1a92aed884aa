"""``lsdseg bench``: measure latency, fps and memory per backend, K and steps on this machine."""

from __future__ import annotations

import argparse

from lsdseg.cli.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure latency, fps and memory per backend, K and steps on this machine",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UserError("latency benchmark is not implemented yet in this lsdseg release")
