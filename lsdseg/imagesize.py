"""The input size S a model runs at: an argument of whoever runs it, never ``model.cfg``.

The model is fully convolutional, so one checkpoint runs at any size its down-sampling divides.
:func:`check_image_size` applies that rule (:class:`~lsdseg.config.ModelConfig`'s, the only
place it is written) to a size, :func:`latent_shape` gives the latent grid of a size, and
:func:`resolve_image_size` adds what a backend allows. :class:`lsdseg.segmenter.Segmenter` and
:func:`lsdseg.export.onnx.export_onnx` take ``image_size`` and size their inputs with these.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lsdseg import backends
from lsdseg.config import ModelConfig


def check_image_size(cfg: ModelConfig, size: int) -> int:
    """``size``, checked to be an input size S the model of ``cfg`` can run at: a multiple of
    the latent factor times the UNet's and the encoder's down-sampling. ``cfg`` is unchanged.

    Raises:
        TypeError: not an integer.
        ValueError: ``image_size=S must be a multiple of ...``.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"image_size={size!r} must be an int")
    dataclasses.replace(cfg, image_size=int(size))  # a copy: ModelConfig.__post_init__ checks
    return int(size)


def latent_shape(cfg: ModelConfig, size: int) -> tuple[int, int, int]:
    """The mask latent (c_m, S/f, S/f) of the model of ``cfg`` at input size S = ``size``."""
    n = size // cfg.image_ae.factor
    return (cfg.mask_vae.latent_channels, n, n)


def resolve_image_size(cfg: ModelConfig, size: int | None, backend: str) -> int:
    """The size backend ``backend`` runs the model of ``cfg`` at: ``size``, checked, or the
    checkpoint's ``cfg.image_size`` for None.

    Raises:
        ValueError: a size the model cannot run at, or another size than the checkpoint's on
            a backend that runs an exported graph (fixed at that size) or is not in the table
            of :mod:`lsdseg.backends`; the message starts ``image_size=``.
    """
    if size is None or size == cfg.image_size:
        return cfg.image_size
    size = check_image_size(cfg, size)
    record = backends.BACKENDS.get(backend)  # a runner outside the table: not known to resize
    if record is None or not record.imgsz:
        s, able = cfg.image_size, backends.spoken(backends.able("imgsz"), "or")
        raise ValueError(
            f"image_size={size}: the {backend} backend runs at the checkpoint's size only "
            f"({s}, the size its exported graph is fixed at); run at {s}, or use the {able} "
            "backend"
        )
    return size
