"""Peak memory over a block of ``lsdseg bench`` calls: the CUDA allocator's peak, or the
process's peak resident set on Linux (``VmHWM``, reset through ``/proc/self/clear_refs``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class PeakMemory:
    """Peak memory over a block: CUDA allocator peak, or the process's peak RSS on Linux."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "CUDA allocated" if device.type == "cuda" else "process RSS"

    def reset(self) -> None:
        """Start a new peak from now."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        # Linux: writing 5 resets VmHWM, the peak RSS, to the current RSS
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def peak_mb(self) -> float | None:
        """The peak since :meth:`reset` in MB (None where the platform cannot tell)."""
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MB
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        except ImportError:  # Windows
            return None
