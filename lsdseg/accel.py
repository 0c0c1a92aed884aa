"""Whole-frame CUDA graphs and half precision for the torch and triton backends.

At the model's shapes one denoiser step is ~150 kernels of 2-5 us each, ~650 launches a frame:
on a GPU the launches, not the arithmetic, decide the latency, and the Triton kernels can only
pay inside a graph. :class:`GraphRunner` captures a whole frame (image encoder, every DDIM step,
mask decoder) once per shape and replays it per frame:

- one graph per key (B, K, steps, warm-start timestep, size, dtype, ops backend), at most
  ``max_graphs`` kept (least recently used dropped);
- static input buffers the frame's image and noise are copied into, and static outputs that
  every replay overwrites, so each call returns copies;
- before a capture, warm-up runs on a side stream: lazy inits (cuBLAS, cuDNN) and Triton's JIT
  compiles happen there, never inside a capture;
- deterministic DDIM (eta = 0) only: eta > 0 draws per-step noise on the CPU, which a graph
  would replay as the same numbers every frame. Warm starts (``--temporal``) are graphs of their
  own: their noised latents are drawn outside the graph and copied in like fresh noise.

The graph reads the weights at their addresses: update them in place (``load_state_dict``),
never by moving or replacing the modules. Capturing is an injected function (``capture``), so
the cache, the copies in and out and the refusals are tested on a CPU with a stand-in.

Half precision (``precision="fp16"`` or ``"bf16"``) is autocast on CUDA around the model: the
convolutions and matmuls run in that type, GroupNorm statistics, softmax and the sampler's
arithmetic stay in float32, the weights stay float32. It is refused on the CPU and for the onnx
and trt backends, whose precision is their graph's: nothing changes precision silently.

``torch.compile(mode="reduce-overhead")`` is not offered: it does not compose with the
:mod:`lsdseg.ops` backend choice. Measured with torch 2.13 (``torch._dynamo.explain`` on the
model): Dynamo cannot trace the ``ContextVar.get`` through which every GroupNorm and attention
finds its backend, so the frame breaks into one graph per op call (42 graphs for 2 DDIM steps of
a tiny model), and reduce-overhead would record that many CUDA graphs with Python between them
instead of one; with the triton backend, tracing the kernels under Triton's interpreter fails
outright. Making it compose needs the ops registered as ``torch.library`` custom ops with the
backend chosen outside the compiled region; this module's graph needs neither.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from lsdseg import backends

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS = backends.PRECISIONS
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # probabilities, latents z0, score


class Replayable(Protocol):
    """A captured graph: ``replay()`` reruns its work on the same buffers."""

    def replay(self) -> None: ...


# capture(fn, device) -> (graph, outputs): fn reads the static inputs and returns the outputs;
# after the capture, graph.replay() writes fresh outputs into the same tensors
Capture = Callable[[Callable[[], Outputs], torch.device], tuple[Replayable, Outputs]]


def check_precision(precision: str) -> None:
    """Raises ValueError for a precision that is not one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {', '.join(PRECISIONS)}")


def autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast on CUDA to ``precision``'s type; fp32 is no context at all (nothing changes).

    The weight cache stays on: autocast is entered and left inside one frame (and so inside a
    captured graph), so the cast weights live exactly as long as the frame that uses them.
    """
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=DTYPES[precision])


def check_supported(
    device: torch.device,
    backend: str,
    cuda_graph: bool,
    precision: str,
    graph_name: str = "cuda_graph=True",
    half_name: str | None = None,
) -> None:
    """Refuse, naming the fix, a ``cuda_graph`` or ``precision`` that cannot run here.

    ``graph_name`` and ``half_name`` are how the caller spells the options (the CLI passes
    ``--cuda-graph`` and ``--half``), so the message names what the user typed.

    Raises:
        ValueError: an unknown precision, or a backend whose record (:mod:`lsdseg.backends`)
            supports no CUDA graph or autocast.
        RuntimeError: a device that is not CUDA.
    """
    check_precision(precision)
    half = half_name or f"precision={precision!r}"
    spec = backends.BACKENDS.get(backend)  # a backend outside the table runs no graph either
    graphs = spec is not None and spec.cuda_graph
    able = backends.spoken(backends.able("cuda_graph"))
    if cuda_graph and not graphs:
        also = f"; {spec.own_graph}" if spec and spec.own_graph else ""
        raise ValueError(
            f"{graph_name} is for the {able} backends, not {backend}: use one of "
            f"them, or drop {graph_name}{also}"
        )
    if precision != "fp32" and not graphs:
        own = (spec and spec.own_precision) or f"the {backend} backend has a precision of its own"
        raise ValueError(
            f"{half} is autocast for the {able} backends, not {backend} ({own}): "
            f"use {backends.spoken(backends.able('cuda_graph'), 'or')}, or drop {half}"
        )
    if cuda_graph and device.type != "cuda":
        raise RuntimeError(
            f"{graph_name} needs a CUDA device, not {device}: run on an NVIDIA GPU "
            f"(device cuda), or drop {graph_name}"
        )
    if precision != "fp32" and device.type != "cuda":
        raise RuntimeError(
            f"{half} needs a CUDA device, not {device} (half precision is autocast on CUDA; "
            f"on the CPU lsdseg runs float32 only): run on an NVIDIA GPU (device cuda), or "
            f"drop {half}"
        )


def graph_eta_refusal(
    eta: float, graph_name: str = "cuda_graph=True", eta_name: str = "eta"
) -> str:
    """The message for eta > 0 under a CUDA graph."""
    return (
        f"{graph_name} needs {eta_name}=0 (deterministic DDIM), got {eta}: the per-step noise "
        "of eta > 0 is drawn on the CPU each frame, and a captured graph would replay the same "
        f"numbers every frame; set {eta_name} to 0, or drop {graph_name}"
    )


class _DeviceGraph:
    """A ``torch.cuda.CUDAGraph`` replayed with its device current."""

    def __init__(self, graph: Any, device: torch.device, cuda: Any) -> None:
        self.graph, self.device, self.cuda = graph, device, cuda

    def replay(self) -> None:
        with self.cuda.device(self.device):
            self.graph.replay()  # on the caller's current stream, after its copies in


def capture_cuda_graph(
    fn: Callable[[], Outputs], device: torch.device, warmup: int = 2, cuda: Any = None
) -> tuple[Replayable, Outputs]:
    """Warm ``fn`` up on a side stream, then capture it into a CUDA graph on that stream.

    Args:
        fn: one frame on the static inputs; returns the outputs (allocated in the graph's pool).
        device: the CUDA device.
        warmup: eager runs before the capture (Triton compiles, cuBLAS / cuDNN set-up).
        cuda: ``torch.cuda`` (a stand-in in tests).

    Returns:
        The graph and its static outputs, which hold nothing until the first replay.
    """
    cuda = torch.cuda if cuda is None else cuda
    with cuda.device(device):
        caller = cuda.current_stream(device)
        side = cuda.Stream(device)
        side.wait_stream(caller)  # the static inputs were written on the caller's stream
        with cuda.stream(side):
            for _ in range(warmup):
                fn()
        graph = cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (a video reader or writer) do not
        # invalidate the capture
        with cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            outputs = fn()
        caller.wait_stream(side)
    return _DeviceGraph(graph, device, cuda), outputs


GraphKey = tuple[int, int, int, int | None, tuple[int, int], torch.dtype, str]


@dataclass
class _Captured:
    """One captured frame: its graph, static inputs and static outputs."""

    graph: Replayable
    x: torch.Tensor  # (B, 3, S, S) static input
    noise: torch.Tensor  # (B, K, c_m, S/f, S/f) static input
    p: torch.Tensor  # (B, K, S, S) static output
    z0: torch.Tensor  # (B, K, c_m, S/f, S/f) static output
    score: torch.Tensor  # (B,) static output


class FrameRunner(backends.Runner, Protocol):
    """The runner a graph wraps (:class:`lsdseg.runners.TorchRunner`): a
    :class:`~lsdseg.backends.Runner` that also names its ops backend and precision."""

    ops_backend: str
    precision: str


class GraphRunner:
    """A runner that replays one CUDA graph per frame shape (see the module docstring).

    Args:
        inner: the eager runner whose frame is captured (torch or triton ops, a precision).
        capture: makes the graph (:func:`capture_cuda_graph`; a stand-in in tests).
        max_graphs: graphs kept; the least recently used one is dropped beyond it.

    Raises (when called):
        ValueError: eta > 0.
    """

    def __init__(
        self, inner: FrameRunner, capture: Capture = capture_cuda_graph, max_graphs: int = 32
    ) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs} must be >= 1")
        self.inner, self.capture, self.max_graphs = inner, capture, max_graphs
        self.name = inner.name
        self.graphs: OrderedDict[GraphKey, _Captured] = OrderedDict()
        self.captures = 0  # graphs captured so far, dropped ones included

    def key(self, x: torch.Tensor, noise: torch.Tensor, steps: int, start: int | None) -> GraphKey:
        """(B, K, steps, start, (H, W), dtype, ops backend): what a graph is valid for."""
        b, k = noise.shape[:2]
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return (b, k, steps, start, size, DTYPES[self.inner.precision], self.inner.ops_backend)

    @torch.inference_mode()
    def __call__(
        self,
        x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        eta: float,
        generator: torch.Generator | None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if eta > 0:
            raise ValueError(graph_eta_refusal(eta))
        key = self.key(x, noise, steps, start)
        frame = self.graphs.get(key)
        if frame is None:
            frame = self._capture(key, x, noise, steps, start)
        self.graphs.move_to_end(key)
        frame.x.copy_(x)
        frame.noise.copy_(noise)
        frame.graph.replay()
        # the next replay of this shape overwrites the static outputs: hand out copies
        return frame.p.clone(), frame.z0.clone(), frame.score.clone()

    def _capture(
        self,
        key: GraphKey,
        x: torch.Tensor,
        noise: torch.Tensor,
        steps: int,
        start: int | None,
    ) -> _Captured:
        static_x, static_noise = x.clone(), noise.clone()  # the warm-up runs on real data

        def frame() -> Outputs:
            p, z0, score = self.inner(static_x, static_noise, steps, 0.0, None, start)
            if z0 is None:
                raise TypeError(f"runner {self.inner.name!r} returns no latents to capture")
            return p, z0, score

        log.info("capturing a CUDA graph for (B, K, steps, start, size, dtype, ops) = %s", key)
        graph, (p, z0, score) = self.capture(frame, x.device)
        self.captures += 1
        captured = _Captured(graph, static_x, static_noise, p, z0, score)
        self.graphs[key] = captured
        while len(self.graphs) > self.max_graphs:
            dropped, _ = self.graphs.popitem(last=False)
            log.info("dropped the CUDA graph of %s (more than %d)", dropped, self.max_graphs)
        return captured
