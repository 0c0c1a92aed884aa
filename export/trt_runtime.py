"""The ``trt`` backend: TensorRT engines run with pre-allocated buffers and CUDA graphs.

``lsdseg.load(..., device="cuda", backend="trt")`` builds a :class:`TrtRunner`. On first use of
a number of DDIM steps it exports the graph (cached, see :mod:`lsdseg.export.cache`; the FP16
graph for FP16 engines), builds a strongly typed engine for this GPU with the default profile
(B 1..4, K 1..16) and caches it with its sidecar; an engine whose sidecar names another GPU or
TensorRT is refused, never run.

Each (B, K) shape gets its own execution context, its own input and output buffers (allocated
once with torch on the device) and one CUDA graph captured around ``execute_async_v3``:
TensorRT documents a captured graph as valid only for the shapes and addresses the context had
when it was captured, so a context never changes shape. Every enqueue, capture and replay
happens on one dedicated CUDA stream of the engine (never the legacy default stream, which
cannot be captured and serialises with everything), ordered after the caller's stream for the
inputs and before it for the outputs. A frame costs two copies in, one graph launch and one
copy out. Each context holds its own activation memory, so only the shapes actually used get
one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lsdseg.backends import refuse_call
from lsdseg.model import LatentSegmenter

from .cache import cache_dir, cached_onnx, model_digest
from .onnx import INPUT_NAMES, OUTPUT_NAMES, PRECISIONS
from .trt import (
    EngineMismatch,
    Profile,
    build_engine,
    check_sidecar,
    gpu_info,
    machine_tag,
    read_sidecar,
    require_tensorrt,
)

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16}
    if dtype not in table:
        raise EngineMismatch(f"engine tensor type {dtype} is not float32 or float16")
    return table[dtype]


class _Shape:
    """The execution context, buffers and CUDA graph of one (B, K) shape."""

    def __init__(self, context: Any, buffers: dict[str, torch.Tensor]) -> None:
        self.context = context  # set to these buffers' shapes and addresses, once
        self.buffers = buffers  # name -> device tensor of that shape, fixed addresses
        self.graph: torch.cuda.CUDAGraph | None = None


class Engine:
    """One deserialised engine with its stream and, per (B, K), a context, buffers, a graph."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.trt = trt = require_tensorrt()
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EngineMismatch(f"TensorRT cannot load {path}; rebuild it")
            self.stream = torch.cuda.Stream(device)  # every enqueue, capture and replay
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if sorted(names) != sorted(INPUT_NAMES + OUTPUT_NAMES):
            raise EngineMismatch(f"engine {path} has tensors {names}, not lsdseg's")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.shapes: dict[tuple[int, int], _Shape] = {}

    def _prepare(self, image: tuple[int, ...], noise: tuple[int, ...]) -> _Shape:
        """A new context for this shape, bound to new buffers (shapes and addresses)."""
        b, k, _, _, _ = noise
        s = image[-1]
        sizes = {
            "image": image,
            "noise": noise,
            "mean": (b, s, s),
            "std": (b, s, s),
            "hypotheses": (b, k, s, s),
            "score": (b,),
        }
        buffers = {
            name: torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            for name, shape in sizes.items()
        }
        context = self.engine.create_execution_context()
        if context is None:
            raise RuntimeError(
                f"TensorRT could not create an execution context for batch {b} x hypotheses "
                f"{k} (out of GPU memory?); use fewer distinct (batch, hypotheses) shapes"
            )
        for name in INPUT_NAMES:
            if not context.set_input_shape(name, tuple(buffers[name].shape)):
                raise ValueError(f"{name} {tuple(buffers[name].shape)} is outside the engine")
        for name, tensor in buffers.items():
            context.set_tensor_address(name, tensor.data_ptr())
        return _Shape(context, buffers)

    def _enqueue(self, shape: _Shape) -> None:
        if not shape.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT failed to run the engine (see its log)")

    def __call__(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S), (B, K, c, h, w) on the device -> hypotheses (B, K, S, S) and the
        presence score (B,), float32."""
        key = (noise.shape[0], noise.shape[1])
        with torch.cuda.device(self.device):
            if key not in self.shapes:
                self.shapes[key] = self._prepare(tuple(x.shape), tuple(noise.shape))
            shape = self.shapes[key]
            caller = torch.cuda.current_stream(self.device)
            # copies on the caller's stream (where x and noise were made), then the engine's
            # stream waits for them; the buffers are ours for good, so no record_stream
            shape.buffers["image"].copy_(x)
            shape.buffers["noise"].copy_(noise)
            self.stream.wait_stream(caller)
            with torch.cuda.stream(self.stream):
                if shape.graph is None:
                    # TensorRT's first run after binding does setup work that must not be
                    # captured; its outputs are this call's result (capturing runs nothing)
                    self._enqueue(shape)
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: CUDA calls of other threads (a video writer) do not
                    # invalidate the capture
                    with torch.cuda.graph(
                        graph, stream=self.stream, capture_error_mode="thread_local"
                    ):
                        self._enqueue(shape)
                    shape.graph = graph
                else:
                    shape.graph.replay()
            caller.wait_stream(self.stream)
            # copies, on the caller's stream: the next call of this shape overwrites the buffers
            out = shape.buffers
            return (
                out["hypotheses"].to(torch.float32, copy=True),
                out["score"].to(torch.float32, copy=True),
            )


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
        b, k = self.profile.batch, self.profile.hypotheses
        name = (
            f"{self.digest}-s{steps}-{self.model.cfg.image_size}px-{self.precision}"
            f"-b{b[0]}_{b[1]}_{b[2]}-k{k[0]}_{k[1]}_{k[2]}"
            f"-{machine_tag(self.trt.__version__, self.gpu)}.engine"
        )
        return cache_dir() / "trt" / name

    def engine(self, steps: int) -> Engine:
        """The engine for ``steps`` DDIM steps, built on first use."""
        if steps not in self._engines:
            path = self.engine_path(steps)
            if not path.is_file():
                # the FP16 graph for an FP16 engine: the network is strongly typed
                onnx_path = cached_onnx(self.model, self.checkpoint, steps, self.precision)
                log.warning("building a TensorRT engine once; cached at %s", path)
                build_engine(
                    onnx_path,
                    path,
                    half=self.precision == "fp16",
                    profile=self.profile,
                    timing_cache=cache_dir() / "trt" / "timing.cache",  # keyed by GPU, TensorRT
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
    ) -> tuple[torch.Tensor, None, torch.Tensor]:
        """Normalised images (B, 3, S, S) and noise (B, K, c_m, S/f, S/f) -> (B, K, S, S),
        no latents, and the presence score (B,)."""
        refuse_call("trt", eta, start is not None)
        b, k = noise.shape[:2]
        if not self.profile.admits(b, k):
            raise ValueError(
                f"batch {b} x hypotheses {k} is outside the engine's profile (batch "
                f"{self.profile.batch}, hypotheses {self.profile.hypotheses}); rebuild with "
                "wider --batch-range / --hypotheses-range"
            )
        engine = self.engine(steps)
        p, score = engine(x.to(self.device, torch.float32), noise.to(self.device, torch.float32))
        return p, None, score
