"""The ``onnx`` backend: the exported graph run by ONNX Runtime.

``lsdseg.load(..., backend="onnx")`` builds an :class:`OrtRunner`. It exports the checkpoint's
graph on first use (one graph per number of DDIM steps, cached, see :mod:`lsdseg.export.cache`)
and runs it with session options chosen for speed: full graph optimisation (constant folding
of the unrolled timestep embeddings, fusions, NCHWc convolutions), as many intra-op threads as
torch uses (``torch.get_num_threads()``, the physical cores by default; ``LSDSEG_ORT_THREADS``
overrides it), and worker threads that spin between ops during a run but stop the moment
it returns (``session.force_spinning_stop``), so they never compete with the torch and numpy work
around the graph or with a video pipeline's threads. On an idle 2-core Xeon that made the
4-step graph 42 ms instead of 50 ms without spinning; on a machine busy with other work,
spinning costs more than it gives (latency doubled on a loaded 2-core machine):
``LSDSEG_ORT_SPINNING=0`` turns it off. On a CUDA
device it uses the TensorRT or CUDA execution provider of ``onnxruntime-gpu``.

The graph is deterministic DDIM from pure noise: eta > 0 and warm starts (``--temporal``)
need the torch or triton backend, and no latents are returned.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from lsdseg.model import LatentSegmenter

from .cache import cache_dir, cached_onnx, expected_metadata, mismatches, model_digest
from .onnx import PRECISIONS, check_graph_call

THREADS_ENV = "LSDSEG_ORT_THREADS"
SPINNING_ENV = "LSDSEG_ORT_SPINNING"
log = logging.getLogger(__name__)


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a RuntimeError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeError(
            f'ONNX Runtime is not installed ({e}): pip install "lsdseg[onnx]"'
        ) from None
    return onnxruntime


def intra_op_threads() -> int:
    """``$LSDSEG_ORT_THREADS`` if set, else torch's intra-op thread count."""
    value = os.environ.get(THREADS_ENV)
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{THREADS_ENV}={value!r} must be a positive integer")
        return threads
    return torch.get_num_threads()


def spinning() -> str:
    """``"1"`` when ONNX Runtime's worker threads may spin between ops, else ``"0"``.

    ``$LSDSEG_ORT_SPINNING`` (``0`` or ``1``) decides; unset, spinning is on (see the module
    docstring for when to turn it off).
    """
    value = os.environ.get(SPINNING_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{SPINNING_ENV}={value!r} must be 0 or 1")
    return value


def session_options(threads: int | None = None) -> Any:
    """Session options for low latency (never with profiling on)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or intra_op_threads()
    options.inter_op_num_threads = 1
    options.enable_profiling = False
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning())
    # spin only inside run(): idle workers stop the moment it returns, so they never compete
    # with the torch/numpy work around the graph or with a video pipeline's threads
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # errors only
    return options


def providers(device: torch.device) -> list[Any]:
    """Execution providers for ``device``, best first.

    Raises:
        RuntimeError: a CUDA device, but this onnxruntime has no GPU provider.
    """
    ort = require_onnxruntime()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    index = device.index or 0
    chosen: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        engines = str(cache_dir() / "ort-tensorrt")
        chosen.append(
            (
                "TensorrtExecutionProvider",
                {
                    "device_id": index,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": engines,
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": engines,
                },
            )
        )
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise RuntimeError(
            f"device {device} with backend 'onnx' needs onnxruntime-gpu (pip install "
            f"onnxruntime-gpu); this onnxruntime has only {available}"
        )
    return [*chosen, "CPUExecutionProvider"]  # for the few nodes a GPU provider leaves


class OrtRunner:
    """Runs the exported graph with ONNX Runtime (see the module docstring).

    Args:
        model: the loaded network (exported on first use).
        checkpoint: its folder (its hash keys the cache), or None for an in-memory model.
        device: where results go; CUDA selects a GPU execution provider.
        precision: ``"fp32"`` (default) or ``"fp16"`` (FP16 graph, float32 inputs/outputs).
    """

    name = "onnx"

    def __init__(
        self,
        model: LatentSegmenter,
        checkpoint: Path | None,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
        self.model, self.checkpoint, self.device = model, checkpoint, torch.device(device)
        self.precision = precision
        self.providers = providers(self.device)
        self.digest = model_digest(model, checkpoint)
        self._sessions: dict[int, Any] = {}
        self.session(model.cfg.sampler.steps)  # export and load now: errors surface at load

    def session(self, steps: int) -> Any:
        """The inference session of the graph with ``steps`` DDIM steps (exported if needed)."""
        if steps not in self._sessions:
            self._sessions[steps] = self._open(steps)
        return self._sessions[steps]

    def _open(self, steps: int) -> Any:
        ort = require_onnxruntime()
        size = self.model.cfg.image_size
        expected = expected_metadata(self.digest, steps, size, self.precision)
        for attempt in range(2):
            path = cached_onnx(self.model, self.checkpoint, steps, self.precision, attempt > 0)
            try:
                session = ort.InferenceSession(
                    str(path), session_options(), providers=self.providers
                )
            except Exception as e:  # a damaged cache file: export it again once
                problem = f"cannot be loaded ({e})"
            else:
                meta = session.get_modelmeta().custom_metadata_map
                wrong = mismatches(meta, expected)
                if not wrong:
                    return session
                problem = f"does not match the checkpoint and settings ({'; '.join(wrong)})"
            if attempt == 0:
                log.warning("cached graph %s %s; exporting it again", path, problem)
        raise RuntimeError(f"the exported graph {path} {problem}; delete {path.parent} and retry")

    def __call__(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float,
        generator: torch.Generator | None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised images (B, 3, S, S) and noise (B, K, c_m, S/f, S/f) -> (B, K, S, S)."""
        check_graph_call(self.name, eta, start)
        feeds = {
            "image": x.detach().to("cpu", torch.float32).contiguous().numpy(),
            "noise": noise.detach().to("cpu", torch.float32).contiguous().numpy(),
        }
        (p,) = self.session(steps).run(["hypotheses"], feeds)
        return torch.from_numpy(p).to(self.device), None
