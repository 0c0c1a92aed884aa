"""lsdseg: latent diffusion segmentation with per-pixel uncertainty.

>>> import lsdseg
>>> seg = lsdseg.load("default")            # bundled weights, torch backend, GPU if any
>>> result = seg(frame_bgr, hypotheses=8)   # mask, mean, std, entropy, mutual_info, ...
"""

from lsdseg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lsdseg.config import ModelConfig
from lsdseg.model import LatentSegmenter
from lsdseg.segmenter import Result, Segmenter, load, register_runner, runner_names
from lsdseg.version import __version__

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
