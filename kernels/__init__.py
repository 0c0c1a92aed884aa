"""Triton kernels for lsdseg's fused ops, installed as ``lsdseg.kernels``.

Importing this package registers the ``"triton"`` backend of :mod:`lsdseg.ops`:

- :func:`group_norm_silu`: GroupNorm + affine + timestep scale/shift + SiLU in one kernel
  (``group_norm.py``; its split variant for large groups in ``group_norm_split.py``);
- :func:`attention`: flash-attention forward (``attention.py``).

Both run compiled on a CUDA GPU, or on the CPU through Triton's interpreter when
``TRITON_INTERPRET=1`` was in the environment before this package was imported (slow; meant for
tests). Each op's torch reference lives in :mod:`lsdseg.ops`.
"""

from __future__ import annotations

from lsdseg import ops
from lsdseg.kernels._device import unavailable_reason
from lsdseg.kernels.attention import _attention_fwd_kernel, attention
from lsdseg.kernels.group_norm import group_norm_silu

__all__ = ["attention", "available", "group_norm_silu"]


def available() -> str | None:
    """None when the kernels can run in this process, else why not and how to fix it."""
    return unavailable_reason(_attention_fwd_kernel)


ops.register_backend(ops.OpsBackend("triton", group_norm_silu, attention, available))
