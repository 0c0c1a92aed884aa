"""The export cache: graphs (and engines) made on first use, keyed by everything they bake in.

The ``onnx`` and ``trt`` backends export the checkpoint they are given the first time a setting
is used and keep the file here, so later runs start in a second. The folder is ``$LSDSEG_CACHE``
when set, else ``$XDG_CACHE_HOME/lsdseg``, else ``~/.cache/lsdseg``. A file's name holds the
checkpoint's hash, the DDIM steps, the input size, the precision, the lsdseg version and the
graph format, so a changed checkpoint or a new lsdseg never picks up a stale graph. Beside each
graph, ``<graph>.sha256`` records the SHA-256 of the file as it was written; a graph whose
bytes no longer match (edited, swapped, damaged) is exported again, with one notice, before it
runs. Deleting the folder is always safe.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from lsdseg.checkpoint import checkpoint_hash
from lsdseg.files import sha256_file, write_text_atomic
from lsdseg.model import LatentSegmenter
from lsdseg.version import __version__

from .onnx import FORMAT_VERSION, export_onnx, weights_hash

ENV = "LSDSEG_CACHE"
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$LSDSEG_CACHE``, else ``$XDG_CACHE_HOME/lsdseg``, else ``~/.cache/lsdseg``."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lsdseg"


def model_digest(model: LatentSegmenter, checkpoint: Path | None) -> str:
    """The checkpoint folder's hash, or a hash of the weights of a model without a folder."""
    return checkpoint_hash(checkpoint) if checkpoint is not None else weights_hash(model)


def onnx_path(digest: str, steps: int, image_size: int, precision: str) -> Path:
    """Where the cached graph for these settings lives."""
    name = f"{digest}-s{steps}-{image_size}px-{precision}-v{__version__}-f{FORMAT_VERSION}.onnx"
    return cache_dir() / "onnx" / name


def expected_metadata(digest: str, steps: int, image_size: int, precision: str) -> dict[str, str]:
    """The metadata a cached graph for these settings must carry."""
    return {
        "lsdseg_onnx_format": str(FORMAT_VERSION),
        "checkpoint_hash": digest,
        "steps": str(steps),
        "image_size": str(image_size),
        "precision": precision,
    }


def mismatches(meta: dict[str, str], expected: dict[str, str]) -> list[str]:
    """``key: found vs expected`` for every expected entry the metadata does not match."""
    return [
        f"{key}: {meta.get(key, 'missing')} vs {value}"
        for key, value in expected.items()
        if meta.get(key) != value
    ]


def digest_path(graph: Path) -> Path:
    """The file beside ``graph`` that records its SHA-256 (``<graph>.sha256``)."""
    return graph.with_name(graph.name + ".sha256")


def graph_changed(graph: Path) -> str | None:
    """Why the cached ``graph`` is not the file that was written (its recorded digest is
    missing or differs), or None when its bytes are the ones recorded."""
    try:
        recorded = digest_path(graph).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return "has no recorded digest"
    if sha256_file(graph, digits=64) != recorded:
        return "is not the file that was written (its SHA-256 differs from the recorded one)"
    return None


def cached_onnx(
    model: LatentSegmenter,
    checkpoint: Path | None,
    steps: int,
    precision: str = "fp32",
    refresh: bool = False,
) -> Path:
    """The cached graph of ``model`` for ``steps`` and ``precision``, exported if missing.

    Args:
        model: the loaded network (its config's image size is used).
        checkpoint: its folder (hashed for the key), or None for an in-memory model.
        steps: DDIM steps to unroll.
        precision: ``"fp32"`` or ``"fp16"``.
        refresh: export again even when the file exists (a file that failed to load).
    """
    digest = model_digest(model, checkpoint)
    path = onnx_path(digest, steps, model.cfg.image_size, precision)
    changed = None if refresh or not path.is_file() else graph_changed(path)
    if changed:
        log.warning("cached graph %s %s; exporting it again", path, changed)
    elif refresh or not path.is_file():
        log.info(  # information, not a problem: the CLI shows it (cli/main.py's logging)
            "exporting the ONNX graph for %d steps (%s) once; cached at %s",
            steps,
            precision,
            path,
        )
    if refresh or changed or not path.is_file():
        # the first call may come under torch.inference_mode(), in which torch.export's tracing
        # fails ("Inference tensors cannot be saved for backward"): export outside it
        with torch.inference_mode(False):
            export_onnx(
                model,
                path,
                steps=steps,
                half=precision == "fp16",
                eta=0.0,
                checkpoint_digest=digest,
            )
        write_text_atomic(digest_path(path), sha256_file(path, digits=64) + "\n")
    return path
