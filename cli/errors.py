"""The error type of the command line: what the user got wrong, said in one line."""


class UserError(Exception):
    """An error caused by the user's input, reported as one line and a non-zero exit."""


class OutputError(UserError):
    """An output file that could not be written (a full disk, a removed folder), named."""


def output_error(path: object, error: BaseException) -> OutputError:
    """The one-line error for ``path`` that failed with ``error``; when the disk of ``path``
    has under 1 MB left, it says so (numpy and OpenCV report a full disk without an errno)."""
    import shutil
    from pathlib import Path

    try:
        free = shutil.disk_usage(Path(str(path)).parent).free
    except OSError:
        free = None
    if free is not None and free < 1_000_000:
        return OutputError(
            f"cannot write {path}: no space left on its disk ({free / 1e6:.1f} MB free)"
        )
    return OutputError(f"cannot write {path}: {getattr(error, 'strerror', None) or error}")
