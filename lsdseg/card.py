"""Model cards written beside every checkpoint."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from lsdseg.config import to_dict
from lsdseg.model import LatentSegmenter
from lsdseg.trainstate import LoopState
from lsdseg.version import __version__


def cpu_name() -> str:
    """The CPU's model name, e.g. ``AMD EPYC 7763 64-Core Processor``.

    From ``/proc/cpuinfo`` on Linux (where ``platform.processor()`` is empty), else
    ``platform.processor()``, else the architecture (``x86_64``).
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def training_card(model: LatentSegmenter, loop: LoopState, data: str, device: str) -> str:
    """A card describing a checkpoint written during training (data, settings, metrics)."""
    last = loop.history[-1] if loop.history else {}
    vals = {k: v for k, v in last.items() if k.startswith("val_")}
    n_params = sum(p.numel() for p in model.parameters())
    cpu = cpu_name()
    return "\n".join(
        [
            "# lsdseg checkpoint",
            "",
            f"- lsdseg {__version__}, torch {torch.__version__}",
            f"- training data: {data}",
            f"- phase {loop.phase}, epoch {loop.epoch}, step {loop.step}, "
            f"training time {loop.elapsed_s / 60:.1f} min on {device} ({cpu})",
            f"- parameters: {n_params / 1e6:.2f} M",
            f"- latest validation: {json.dumps(vals)}",
            f"- {loop.best_text()}",
            "",
            "## Architecture",
            "```json",
            json.dumps(to_dict(model.cfg), indent=2),
            "```",
            "",
        ]
    )
