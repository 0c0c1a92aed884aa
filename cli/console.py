"""The rich console every command prints through.

Its markup is off: what the commands print (install hints such as ``pip install
"lsdseg[onnx]"``, paths, file names, error text from other libraries) is shown as written,
never read as rich's ``[style]`` tags, which would drop ``[onnx]`` from a hint. Nothing the
commands print uses markup; colour comes from rich's highlighting, which changes no text.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def make_console(
    stderr: bool = False, soft_wrap: bool = False, file: IO[str] | None = None
) -> Console:
    """A rich console with markup off (see the module docstring).

    Args:
        stderr: write to stderr instead of stdout.
        soft_wrap: do not wrap long lines (summary lines stay whole in logs).
        file: write here instead (tests).
    """
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=soft_wrap, file=file, markup=False)
