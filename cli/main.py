"""``lsdseg``: the command-line entry point.

Every sub-command turns the errors a user can cause (missing files, bad options, bad data, a
checkpoint that does not match) into one line on stderr and a non-zero exit, never a traceback.
Set ``LSDSEG_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from collections.abc import Sequence

from lsdseg.cli.errors import UserError
from lsdseg.version import __version__

EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" suggestions for misspelt options and choices."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = ""
        if "unrecognized arguments:" in message:
            bad = message.split("unrecognized arguments:")[1].split()
            options = _all_options(self)
            for b in bad:
                close = difflib.get_close_matches(b.split("=")[0], options, n=1)
                if close:
                    hint = f" (did you mean {close[0]}?)"
                    break
        elif "invalid choice:" in message:
            bad = message.split("invalid choice:")[1].split("'")[1]
            choices = [str(c) for a in self._actions for c in (a.choices or []) if a.choices]
            close = difflib.get_close_matches(bad, choices, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{hint}\n")


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Option strings of a parser and of all its sub-command parsers."""
    options = []
    for action in parser._actions:
        options += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options += _all_options(sub)
    return options


def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command registered."""
    from lsdseg.cli import bench_cmd, evaluate_cmd, export_cmd, segment_cmd, serve_cmd, train_cmd

    parser = _Parser(
        prog="lsdseg",
        description="Latent diffusion segmentation with uncertainty (K masks per frame).",
    )
    parser.add_argument("--version", action="version", version=f"lsdseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in (segment_cmd, train_cmd, evaluate_cmd, export_cmd, bench_cmd, serve_cmd):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from lsdseg.checkpoint import CheckpointError
    from lsdseg.data import DataError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lsdseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (
        UserError,
        DataError,
        CheckpointError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
        OSError,
    ) as e:
        if os.environ.get("LSDSEG_DEBUG"):
            raise
        print(f"lsdseg {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
