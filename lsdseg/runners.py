"""How a whole-model backend's runner is built: the registry of factories and the torch runner.

What a backend is (its name, plugin, install hint, what it supports) is :mod:`lsdseg.backends`'
table; what a runner is called with is :class:`lsdseg.backends.Runner`. This module holds the
other half, the same registry pattern as :mod:`lsdseg.ops`: ``torch`` and ``triton`` register
here; ``onnx`` and ``trt`` are registered by ``lsdseg.export``, which :func:`build_runner`
imports by name on first request, so the core never imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lsdseg import backends, ops
from lsdseg.accel import Precision, autocast
from lsdseg.backends import Runner
from lsdseg.model import LatentSegmenter
from lsdseg.plugins import lookup

# A factory builds a runner for a loaded model; ``checkpoint`` is its folder (None if in memory).
RunnerFactory = Callable[[LatentSegmenter, Path | None, torch.device], Runner]
_RUNNERS: dict[str, RunnerFactory] = {}


def register_runner(name: str, factory: RunnerFactory) -> None:
    """Register the runner factory of the whole-model backend ``name``."""
    _RUNNERS[name] = factory


def runner_names() -> list[str]:
    """Every backend name that can be requested (registered, or registered by a plugin)."""
    return sorted(set(_RUNNERS) | set(backends.plugins()))


@dataclass
class TorchRunner:
    """Runs the PyTorch model with the ops of ``ops_backend`` (``torch`` or ``triton``), in
    float32 or, on CUDA, under autocast to ``precision`` (see :mod:`lsdseg.accel`)."""

    model: LatentSegmenter
    ops_backend: str = "torch"
    name: str = "torch"
    precision: Precision = "fp32"  # fp32: no autocast context at all

    @torch.inference_mode()
    def __call__(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float,
        generator: torch.Generator | None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        with ops.use_backend(self.ops_backend), autocast(self.precision):
            return self.model.run(x, noise, steps, eta, generator, start)


register_runner("torch", lambda model, ckpt, device: TorchRunner(model, "torch", "torch"))


def _triton_runner(model: LatentSegmenter, ckpt: Path | None, device: torch.device) -> Runner:
    ops.get_backend("triton")  # fail now, with the fix in the message, not on the first frame
    return TorchRunner(model, "triton", "triton")


register_runner("triton", _triton_runner)


def build_runner(
    name: str,
    model: LatentSegmenter,
    checkpoint: Path | None,
    device: torch.device,
    precision: Precision = "fp32",
) -> Runner:
    """The runner of backend ``name`` for ``model``, importing its plugin first if it has one.

    Args:
        name: a backend name (see :func:`runner_names`); ``auto`` is resolved before this.
        model: the network, in eval mode on ``device``.
        checkpoint: the folder it came from, if any (the export backends export from it).
        device: where it runs.
        precision: ``fp32``, or the autocast type of a :class:`TorchRunner` (checked by
            :func:`lsdseg.accel.check_supported` before this is called).

    Raises:
        RuntimeError: the backend's plugin cannot be imported (the message says how to get it).
        ValueError: an unknown backend (the valid names are listed).
    """
    runner = lookup(name, _RUNNERS, backends.plugins(), "backend")(model, checkpoint, device)
    if precision != "fp32":
        runner = dataclasses.replace(runner, precision=precision)  # a TorchRunner
    return runner
