"""Where the kernels can run, and the checks every host wrapper shares.

Triton picks compiled or interpreted execution when a ``@triton.jit`` function is *defined*
(``TRITON_INTERPRET=1`` at import time), so whether the kernels run on the CPU is read from the
kernel objects themselves, never from the environment at call time.
"""

from __future__ import annotations

import contextlib
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_HOW_TO_RUN = (
    "run on a machine with a CUDA GPU (and a CUDA build of torch), or set TRITON_INTERPRET=1 "
    "in the environment before lsdseg.kernels is imported to use Triton's slow CPU interpreter "
    "(meant for tests)"
)


def interpreted(kernel: object) -> bool:
    """True when ``kernel`` was defined under Triton's CPU interpreter."""
    return type(kernel).__name__ == "InterpretedFunction"


def unavailable_reason(kernel: object) -> str | None:
    """None when ``kernel`` can run here, else why not and how to fix it."""
    if interpreted(kernel) or torch.cuda.is_available():
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return (
            "TRITON_INTERPRET=1 was set after lsdseg.kernels was imported, so the kernels were "
            "compiled for a GPU and none is visible: set it before the import (e.g. in the shell)"
        )
    return f"no CUDA GPU is visible to torch: {_HOW_TO_RUN}"


def check_device(op: str, kernel: object, **tensors: torch.Tensor | None) -> None:
    """Every tensor on one device, and one the kernels can run on.

    Raises:
        ValueError: the tensors are on different devices.
        RuntimeError: they are on the CPU without the interpreter, or on an unsupported device.
    """
    given = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in given.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in given.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {where}")
    device = devices.pop()
    if device.type == "cuda":
        return
    if device.type == "cpu":
        if interpreted(kernel):
            return
        raise RuntimeError(
            f"{op}: the tensors are on the CPU but the Triton kernels were compiled for a GPU: "
            f"move them with .cuda(), or {_HOW_TO_RUN}"
        )
    raise RuntimeError(f"{op}: tensors on {device} are not supported; use a CUDA device")


def cuda_device_of(t: torch.Tensor) -> contextlib.AbstractContextManager[object]:
    """Make ``t``'s GPU the current one for a launch (Triton launches on the current device)."""
    index = t.device.index
    if t.device.type == "cuda" and index is not None and index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def check_dtype(op: str, name: str, t: torch.Tensor) -> None:
    """``t`` is float32, float16 or bfloat16 (TypeError otherwise)."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} has dtype {t.dtype}; expected torch.float32, torch.float16 or "
            "torch.bfloat16"
        )


def check_no_grad(op: str, **tensors: torch.Tensor | None) -> None:
    """The kernels are forward-only: refuse inputs that autograd would need to track."""
    if not torch.is_grad_enabled():
        return
    needy = [name for name, t in tensors.items() if t is not None and t.requires_grad]
    if needy:
        raise RuntimeError(
            f"{op}: the Triton kernels are forward-only (no backward), but {', '.join(needy)} "
            "require grad: run under torch.no_grad() or torch.inference_mode(), or train with "
            "ops backend 'torch'"
        )


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def check_power_of_2(op: str, name: str, value: int, lowest: int = 1) -> None:
    """A launch override is a power of two >= ``lowest`` (ValueError otherwise)."""
    if value < lowest or value & (value - 1):
        raise ValueError(f"{op}: {name}={value} must be a power of two >= {lowest}")
