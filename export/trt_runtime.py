"""The ``trt`` backend: TensorRT engines run with pre-allocated buffers and CUDA graphs.

``lsdseg.load(..., device="cuda", backend="trt")`` builds a :class:`TrtRunner`. On first use of
a number of DDIM steps it exports the graph (cached, see :mod:`lsdseg.export.cache`), builds an
FP16 engine for this GPU with the default profile (B 1..4, K 1..16) and caches it with its
sidecar; an engine whose sidecar names another GPU or TensorRT is refused, never run.

Each (B, K) shape gets its own input and output buffers, allocated once with torch on the
device, and one CUDA graph captured around ``execute_async_v3``, so a frame costs two copies in
and one graph launch. One execution context serves all shapes; TensorRT ties a captured graph to
the shapes the context had when it was captured, so switching to another shape first runs the
engine once without the graph (that run is the call's result) before replaying its graph.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lsdseg.model import LatentSegmenter

from .cache import cache_dir, cached_onnx, model_digest
from .onnx import INPUT_NAMES, OUTPUT_NAMES, PRECISIONS, check_graph_call
from .trt import (
    EngineMismatch,
    Profile,
    build_engine,
    check_sidecar,
    gpu_info,
    read_sidecar,
    require_tensorrt,
    version3,
)

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if dtype not in table:
        raise EngineMismatch(f"engine tensor type {dtype} is not float32 or float16")
    return table[dtype]


class _Shape:
    """Buffers and the CUDA graph of one (B, K) shape."""

    def __init__(self, buffers: dict[str, torch.Tensor]) -> None:
        self.buffers = buffers  # name -> device tensor of that shape, fixed addresses
        self.graph: torch.cuda.CUDAGraph | None = None


class Engine:
    """One deserialised engine with its execution context and per-shape buffers and graphs."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.trt = trt = require_tensorrt()
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EngineMismatch(f"TensorRT cannot load {path}; rebuild it")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted(INPUT_NAMES + OUTPUT_NAMES):
            raise EngineMismatch(f"engine {path} has tensors {names}, not lsdseg's")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.shapes: dict[tuple[int, int], _Shape] = {}
        self.active: tuple[int, int] | None = None

    def _allocate(self, image: tuple[int, ...], noise: tuple[int, ...]) -> _Shape:
        b, k, _, _, _ = noise
        s = image[-1]
        sizes = {
            "image": image,
            "noise": noise,
            "mean": (b, s, s),
            "std": (b, s, s),
            "hypotheses": (b, k, s, s),
        }
        return _Shape(
            {
                name: torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                for name, shape in sizes.items()
            }
        )

    def _bind(self, shape: _Shape) -> None:
        """Point the context at this shape's buffers (its input shapes and addresses)."""
        for name in INPUT_NAMES:
            if not self.context.set_input_shape(name, tuple(shape.buffers[name].shape)):
                raise ValueError(f"{name} {tuple(shape.buffers[name].shape)} is outside the engine")
        for name, tensor in shape.buffers.items():
            self.context.set_tensor_address(name, tensor.data_ptr())

    def _enqueue(self) -> None:
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise RuntimeError("TensorRT failed to run the engine (see its log)")

    def __call__(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S), (B, K, c, h, w) on the device -> hypotheses (B, K, S, S) float32."""
        key = (noise.shape[0], noise.shape[1])
        with torch.cuda.device(self.device):
            if key not in self.shapes:
                self.shapes[key] = self._allocate(tuple(x.shape), tuple(noise.shape))
            shape = self.shapes[key]
            shape.buffers["image"].copy_(x)
            shape.buffers["noise"].copy_(noise)
            if self.active != key or shape.graph is None:
                # a new shape for the context: run once without a graph (this call's
                # result), then capture this shape's graph if it has none yet
                self._bind(shape)
                self._enqueue()
                self.active = key
                if shape.graph is None:
                    result = shape.buffers["hypotheses"].float().clone()
                    shape.graph = torch.cuda.CUDAGraph()
                    torch.cuda.current_stream(self.device).synchronize()
                    # thread_local: CUDA calls of other threads (a video writer) do not
                    # invalidate the capture
                    with torch.cuda.graph(shape.graph, capture_error_mode="thread_local"):
                        self._enqueue()
                    return result
            else:
                shape.graph.replay()
            return shape.buffers["hypotheses"].float().clone()


class TrtRunner:
    """Runs TensorRT engines of the exported graph (see the module docstring).

    Args:
        model: the loaded network (exported and built on first use of a number of steps).
        checkpoint: its folder (its hash keys the cache), or None for an in-memory model.
        device: a CUDA device.
        precision: ``"fp16"`` (default) or ``"fp32"`` engines.
        profile: the (min, opt, max) ranges of B and K the engines accept.
    """

    name = "trt"

    def __init__(
        self,
        model: LatentSegmenter,
        checkpoint: Path | None,
        device: torch.device,
        precision: str = "fp16",
        profile: Profile | None = None,
    ) -> None:
        self.trt = require_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise RuntimeError(
                f"the trt backend needs a CUDA device, not {self.device}: pass device='cuda'"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
        self.model, self.checkpoint, self.precision = model, checkpoint, precision
        self.profile = profile or Profile()
        self.gpu = gpu_info(self.device.index or 0)
        self.digest = model_digest(model, checkpoint)
        self._engines: dict[int, Engine] = {}
        self.engine(model.cfg.sampler.steps)  # build or load now: errors surface at load

    def engine_path(self, steps: int) -> Path:
        """Where the cached engine for ``steps`` lives (keyed by GPU and TensorRT too)."""
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu["gpu"].lower())
        b, k = self.profile.batch, self.profile.hypotheses
        name = (
            f"{self.digest}-s{steps}-{self.model.cfg.image_size}px-{self.precision}"
            f"-b{b[0]}_{b[1]}_{b[2]}-k{k[0]}_{k[1]}_{k[2]}"
            f"-trt{version3(self.trt.__version__)}-{gpu}.engine"
        )
        return cache_dir() / "trt" / name

    def engine(self, steps: int) -> Engine:
        """The engine for ``steps`` DDIM steps, built on first use."""
        if steps not in self._engines:
            path = self.engine_path(steps)
            if not path.is_file():
                onnx_path = cached_onnx(self.model, self.checkpoint, steps, "fp32")
                log.warning("building a TensorRT engine once; cached at %s", path)
                build_engine(
                    onnx_path,
                    path,
                    half=self.precision == "fp16",
                    profile=self.profile,
                    timing_cache=cache_dir() / "trt" / "timing.cache",
                    device=self.device.index or 0,
                )
            check_sidecar(read_sidecar(path), path, self.trt.__version__, self.gpu)
            self._engines[steps] = Engine(path, self.device)
        return self._engines[steps]

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
        check_graph_call("trt", eta, start)
        b, k = noise.shape[:2]
        if not self.profile.admits(b, k):
            raise ValueError(
                f"batch {b} x hypotheses {k} is outside the engine's profile (batch "
                f"{self.profile.batch}, hypotheses {self.profile.hypotheses}); rebuild with "
                "wider --batch-range / --hypotheses-range"
            )
        engine = self.engine(steps)
        p = engine(x.to(self.device, torch.float32), noise.to(self.device, torch.float32))
        return p, None
