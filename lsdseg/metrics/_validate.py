"""Input checks and shared constants of the metrics."""

from __future__ import annotations

import torch
from torch import Tensor

_MASKS = "(N, H, W) or (H, W)"
_SETS = "(N, K, H, W) or (K, H, W)"
_CHUNK = 1 << 22  # elements per temporary block (32 MiB of float64)


# --------------------------------------------------------------------------- validation
def _batched(x: object, name: str, ndim: int, layout: str) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
    if x.ndim == ndim - 1:
        x = x.unsqueeze(0)
    elif x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {x.ndim}-D shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not have a zero-sized dimension, got {tuple(x.shape)}")
    return x


def _binary(x: object, name: str, ndim: int = 3, layout: str = _MASKS) -> Tensor:
    x = _batched(x, name, ndim, layout)
    if x.dtype == torch.bool:
        return x
    bad = (x != 0) & (x != 1)
    if bad.any():
        raise ValueError(
            f"{name} must be a binary mask with values in {{0, 1}}, found {x[bad][0].item()!r}; "
            "threshold probabilities first (e.g. prob > 0.5)"
        )
    return x != 0


def _real(x: object, name: str) -> Tensor:
    x = _batched(x, name, 3, _MASKS).double()
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; clean or mask it before computing metrics")
    return x


def _same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")


def _pair(pred: object, target: object) -> tuple[Tensor, Tensor]:
    p, t = _binary(pred, "pred"), _binary(target, "target")
    _same_shape(p, t, "pred", "target")
    return p, t
