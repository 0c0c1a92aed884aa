"""lsdseg: latent diffusion segmentation with per-pixel uncertainty.

>>> import lsdseg
>>> seg = lsdseg.load("default")            # bundled weights, torch backend, GPU if any
>>> result = seg(frame_bgr, hypotheses=8)   # mask, mean, std, entropy, mutual_info, ...

The names below are imported on first use (PEP 562), so ``import lsdseg`` alone, as the
command line does before it can handle Ctrl-C, does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lsdseg.threads import apply_defaults
from lsdseg.version import __version__

# before anything imports torch: its OpenMP threads then sleep, not spin, when idle
# (lsdseg/threads.py: fair on a shared CPU; the user's own environment wins)
apply_defaults()

if TYPE_CHECKING:
    from lsdseg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from lsdseg.config import ModelConfig
    from lsdseg.model import LatentSegmenter
    from lsdseg.runners import register_runner, runner_names
    from lsdseg.segmenter import Result, Segmenter, load

# public name -> the module that defines it
_EXPORTS = {
    "CheckpointError": "lsdseg.checkpoint",
    "load_checkpoint": "lsdseg.checkpoint",
    "save_checkpoint": "lsdseg.checkpoint",
    "ModelConfig": "lsdseg.config",
    "LatentSegmenter": "lsdseg.model",
    "Result": "lsdseg.segmenter",
    "Segmenter": "lsdseg.segmenter",
    "load": "lsdseg.segmenter",
    "register_runner": "lsdseg.runners",
    "runner_names": "lsdseg.runners",
}

__all__ = [
    "CheckpointError",
    "LatentSegmenter",
    "ModelConfig",
    "Result",
    "Segmenter",
    "__version__",
    "load",
    "load_checkpoint",
    "register_runner",
    "runner_names",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lsdseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
