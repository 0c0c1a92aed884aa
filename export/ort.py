"""The ``onnx`` backend: the exported graph run by ONNX Runtime.

``lsdseg.load(..., backend="onnx")`` builds an :class:`OrtRunner`. It exports the checkpoint's
graph on first use (one graph per number of DDIM steps, cached, see :mod:`lsdseg.export.cache`)
and runs it with session options chosen for speed: full graph optimisation (constant folding
of the unrolled timestep embeddings, fusions, NCHWc convolutions), as many intra-op threads as
torch uses (``torch.get_num_threads()``, the physical cores by default; ``LSDSEG_ORT_THREADS``
overrides it), and worker threads that wait passively between ops, like torch's
(:mod:`lsdseg.threads`): on a machine busy with other work spinning costs more than it gives
(latency doubled on a loaded 2-core machine). On an idle machine spinning is faster (an idle
2-core Xeon ran the 4-step graph in 42 ms instead of 50 ms): ``OMP_WAIT_POLICY=ACTIVE`` or
``LSDSEG_ORT_SPINNING=1`` turns it on, and the threads still stop spinning the moment a run
returns (``session.force_spinning_stop``), so they never compete with the torch and numpy work
around the graph.

On a CUDA device it uses the TensorRT or CUDA execution provider of ``onnxruntime-gpu``, and
inputs and outputs stay on the GPU: they are bound to the session as device buffers (IOBinding)
instead of travelling through host numpy arrays every frame. The TensorRT provider gets the
optimisation profile of the ``trt`` backend (B 1..4, K 1..16, optimum B 1, K 8) so it builds
one engine for every (B, K) instead of rebuilding (minutes) at each new shape, and with the FP16
graph (``precision="fp16"``) its FP16 option, so the engine really runs in FP16.

The graph is deterministic DDIM from pure noise: eta > 0 and warm starts (``--temporal``)
need the torch or triton backend, and no latents are returned.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from lsdseg.backends import refuse_call
from lsdseg.model import LatentSegmenter
from lsdseg.threads import ort_spinning

from .cache import cache_dir, cached_onnx, expected_metadata, mismatches, model_digest
from .onnx import PRECISIONS
from .trt import Profile

THREADS_ENV = "LSDSEG_ORT_THREADS"
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
    """``"1"`` when ONNX Runtime's worker threads may spin between ops, else ``"0"``: off
    unless ``OMP_WAIT_POLICY=ACTIVE`` or ``$LSDSEG_ORT_SPINNING=1``
    (:func:`lsdseg.threads.ort_spinning`)."""
    return ort_spinning()


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


def profile_shapes(shapes: dict[str, list[tuple[int, ...]]]) -> dict[str, str]:
    """The TensorRT provider's profile options from ``name -> [min, opt, max]`` shapes
    (:meth:`~lsdseg.export.trt.Profile.shapes`): ``image:1x3x256x256,noise:1x1x4x32x32``."""
    keys = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    return {
        key: ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items())
        for i, key in enumerate(keys)
    }


def providers(
    device: torch.device,
    shapes: dict[str, list[tuple[int, ...]]] | None = None,
    half: bool = False,
) -> list[Any]:
    """Execution providers for ``device``, best first.

    Args:
        device: ``cpu`` or a CUDA device.
        shapes: ``name -> [min, opt, max]`` input shapes for the TensorRT provider's profile.
        half: the graph is the FP16 one: the TensorRT provider builds FP16 engines.

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
        options: dict[str, Any] = {
            "device_id": index,
            "trt_fp16_enable": half,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": engines,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": engines,
        }
        if shapes is not None:
            options.update(profile_shapes(shapes))
        chosen.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise RuntimeError(
            f"device {device} with backend 'onnx' needs onnxruntime-gpu (pip install "
            f"onnxruntime-gpu); this onnxruntime has only {available}"
        )
    return [*chosen, "CPUExecutionProvider"]  # for the few nodes a GPU provider leaves


def run_bound(
    session: Any, x: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the graph on tensors where they are (IOBinding), into new output tensors there.

    ``x`` and ``noise`` must be contiguous float32 on one device; ONNX Runtime reads them in
    place and writes ``hypotheses`` and ``score`` straight into torch tensors on the same
    device, so a CUDA frame never passes through host memory.

    Shapes:
        x: (B, 3, S, S); noise: (B, K, c_m, S/f, S/f) -> (B, K, S, S) and (B,) float32.
    """
    import numpy as np

    device = x.device
    kind, index = device.type, device.index or 0
    b, k, s = noise.shape[0], noise.shape[1], x.shape[-1]
    out = torch.empty((b, k, s, s), dtype=torch.float32, device=device)
    score = torch.empty((b,), dtype=torch.float32, device=device)
    binding = session.io_binding()
    for name, tensor in (("image", x), ("noise", noise)):
        binding.bind_input(name, kind, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
    for name, tensor in (("hypotheses", out), ("score", score)):
        binding.bind_output(name, kind, index, np.float32, tuple(tensor.shape), tensor.data_ptr())
    if kind == "cuda":  # ONNX Runtime reads on its own stream: torch's work must be done
        torch.cuda.current_stream(device).synchronize()
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    return out, score


class OrtRunner:
    """Runs the exported graph with ONNX Runtime (see the module docstring).

    Args:
        model: the loaded network (exported on first use).
        checkpoint: its folder (its hash keys the cache), or None for an in-memory model.
        device: where results go; CUDA selects a GPU execution provider.
        precision: ``"fp32"`` (default) or ``"fp16"`` (FP16 graph, float32 inputs/outputs).
        profile: the (min, opt, max) ranges of B and K for the TensorRT provider.
    """

    name = "onnx"

    def __init__(
        self,
        model: LatentSegmenter,
        checkpoint: Path | None,
        device: torch.device,
        precision: str = "fp32",
        profile: Profile | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} must be one of {PRECISIONS}")
        self.model, self.checkpoint, self.device = model, checkpoint, torch.device(device)
        self.precision = precision
        self.profile = profile or Profile()
        cfg = model.cfg
        meta = {
            "image_size": str(cfg.image_size),
            "latent_channels": str(cfg.mask_vae.latent_channels),
            "latent_factor": str(cfg.image_ae.factor),
        }
        self.providers = providers(self.device, self.profile.shapes(meta), precision == "fp16")
        self.uses_tensorrt = any(
            isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider" for p in self.providers
        )
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
    ) -> tuple[torch.Tensor, None, torch.Tensor]:
        """Normalised images (B, 3, S, S) and noise (B, K, c_m, S/f, S/f) -> (B, K, S, S),
        no latents, and the presence score (B,)."""
        refuse_call(self.name, eta, start is not None)
        b, k = noise.shape[:2]
        if self.uses_tensorrt and not self.profile.admits(b, k):
            raise ValueError(
                f"batch {b} x hypotheses {k} is outside the TensorRT provider's profile (batch "
                f"{self.profile.batch}, hypotheses {self.profile.hypotheses}); pass a wider "
                "profile= to OrtRunner"
            )
        if self.device.type == "cuda":
            x = x.detach().to(self.device, torch.float32).contiguous()
            noise = noise.detach().to(self.device, torch.float32).contiguous()
            p, score = run_bound(self.session(steps), x, noise)
            return p, None, score
        feeds = {
            "image": x.detach().to("cpu", torch.float32).contiguous().numpy(),
            "noise": noise.detach().to("cpu", torch.float32).contiguous().numpy(),
        }
        p, score = self.session(steps).run(["hypotheses", "score"], feeds)
        return torch.from_numpy(p).to(self.device), None, torch.from_numpy(score).to(self.device)
