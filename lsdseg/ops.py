"""The seam between the model and fused kernels.

Every GroupNorm(+scale/shift)(+SiLU) and every attention in lsdseg's models calls
:func:`group_norm_silu` or :func:`attention` here. Each op has a torch reference implementation
(the ``"torch"`` backend, always available) and a registry that other packages fill:
``lsdseg.kernels`` registers ``"triton"`` when it is imported.

Backend choice is explicit and scoped: ``with ops.use_backend("triton"): ...``. Asking for a
backend that is missing raises an error that says how to get it; nothing falls back silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lsdseg.plugins import lookup

OP_NAMES = ("group_norm_silu", "attention")


@dataclass(frozen=True)
class OpsBackend:
    """A set of op implementations; ``available()`` returns None or why it cannot run."""

    name: str
    group_norm_silu: Callable[..., torch.Tensor]
    attention: Callable[..., torch.Tensor]
    available: Callable[[], str | None] = lambda: None


# Backends that live in plugin packages: name -> (module to import, how to install it).
_PLUGINS: dict[str, tuple[str, str]] = {
    "triton": ("lsdseg.kernels", 'pip install "lsdseg[triton]" (and run on a CUDA GPU)'),
}
_REGISTRY: dict[str, OpsBackend] = {}
_ACTIVE: contextvars.ContextVar[str] = contextvars.ContextVar("lsdseg_ops_backend", default="torch")


def group_norm_silu_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """GroupNorm with affine, then ``x * (1 + scale) + shift``, then SiLU; statistics in fp32.

    Shapes:
        x: (B, C, H, W); weight, bias: (C,); scale, shift: (B, C), (1, C) (one row for every
        sample) or None. Returns (B, C, H, W) in the dtype of ``x``.
    """
    y = F.group_norm(x.float(), groups, weight.float(), bias.float(), eps)
    if scale is not None:
        y = y * (1 + scale.float()[:, :, None, None])
    if shift is not None:
        y = y + shift.float()[:, :, None, None]
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` with fp32 accumulation.

    Shapes:
        q, k, v: (B, heads, L, d) -> (B, heads, L, d).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhld,bhmd->bhlm", q.float(), k.float()) * scale  # (B, h, L, L)
    out = torch.einsum("bhlm,bhmd->bhld", scores.softmax(dim=-1), v.float())
    return out.to(q.dtype)


def _attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # The fast torch path; exact up to float rounding against attention_reference.
    return F.scaled_dot_product_attention(q, k, v)


def register_backend(backend: OpsBackend) -> None:
    """Add (or replace) a backend in the registry."""
    _REGISTRY[backend.name] = backend


register_backend(OpsBackend("torch", group_norm_silu_reference, _attention_sdpa))


def available_backends() -> list[str]:
    """Names of registered backends plus plugins that could be loaded on request."""
    return sorted(set(_REGISTRY) | set(_PLUGINS))


def get_backend(name: str) -> OpsBackend:
    """Return the backend ``name``, importing its plugin package on first request.

    Raises:
        ValueError: the name is unknown (valid names are listed).
        RuntimeError: the backend exists but cannot run here (the message says how to fix it).
    """
    backend = lookup(name, _REGISTRY, _PLUGINS, "ops backend")
    why = backend.available()
    if why is not None:
        raise RuntimeError(f"ops backend {name!r} cannot run here: {why}")
    return backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[OpsBackend]:
    """Run the enclosed model code with the ops of backend ``name``."""
    backend = get_backend(name)
    token = _ACTIVE.set(name)
    try:
        yield backend
    finally:
        _ACTIVE.reset(token)


def active_backend() -> str:
    """Name of the backend the ops dispatch to in this context."""
    return _ACTIVE.get()


def group_norm_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float = 1e-5,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """Dispatch GroupNorm(+scale/shift)(+SiLU) to the active backend. See the reference."""
    return _REGISTRY[_ACTIVE.get()].group_norm_silu(
        x, weight, bias, groups, eps, scale=scale, shift=shift, silu=silu
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dispatch softmax attention to the active backend. Shapes: (B, heads, L, d) each."""
    return _REGISTRY[_ACTIVE.get()].attention(q, k, v)
