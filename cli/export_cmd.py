"""``lsdseg export``: export a checkpoint to ONNX, TensorRT engines or a Triton model repository."""

from __future__ import annotations

import argparse

from lsdseg.cli.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, TensorRT engines or a Triton model repository",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UserError("ONNX / TensorRT export is not implemented yet in this lsdseg release")
