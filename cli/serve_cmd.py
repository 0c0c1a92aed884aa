"""``lsdseg serve``: serve the model on Triton Inference Server (PyTriton)."""

from __future__ import annotations

import argparse

from lsdseg.cli.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the model on Triton Inference Server (PyTriton) (not implemented yet)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UserError("Triton Inference Server serving is not implemented yet in this lsdseg release")
