"""The user-facing segmenter: frames in, K hypotheses and uncertainty maps out.

``lsdseg.load(...)`` returns a :class:`Segmenter`. It preprocesses frames (colour order, resize,
normalise), hands them to a *backend runner* that produces per-hypothesis probabilities, and
aggregates and resizes the result back to each frame's size.

Whole-model backends follow the same registry pattern as :mod:`lsdseg.ops`: ``torch`` and
``triton`` live here; ``onnx`` and ``trt`` are registered by ``lsdseg.export``, which is imported
by name on first request so the core never imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lsdseg import backends, ops
from lsdseg.accel import GraphRunner, Precision, autocast, check_supported
from lsdseg.augment import resize_pair
from lsdseg.backends import Runner
from lsdseg.checkpoint import CheckpointError, load_checkpoint
from lsdseg.config import MAX_SEED, ModelConfig, SamplerConfig
from lsdseg.imageio import to_rgb8
from lsdseg.model import LatentSegmenter
from lsdseg.plugins import lookup
from lsdseg.uncertainty import aggregate, agreement, unsure_score

log = logging.getLogger(__name__)


# A factory builds a runner for a loaded model; ``checkpoint`` is its folder (None if in memory).
RunnerFactory = Callable[[LatentSegmenter, Path | None, torch.device], Runner]
_BACKENDS: dict[str, RunnerFactory] = {}


def register_runner(name: str, factory: RunnerFactory) -> None:
    """Register a whole-model backend under ``name``."""
    _BACKENDS[name] = factory


def runner_names() -> list[str]:
    """Every backend name that can be requested."""
    return sorted(set(_BACKENDS) | set(backends.plugins()))


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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with ops.use_backend(self.ops_backend), autocast(self.precision):
            return self.model.hypotheses_and_latents(x, noise, steps, eta, generator, start)


register_runner("torch", lambda model, ckpt, device: TorchRunner(model, "torch", "torch"))


def _triton_runner(model: LatentSegmenter, ckpt: Path | None, device: torch.device) -> Runner:
    ops.get_backend("triton")  # fail now, with the fix in the message, not on the first frame
    return TorchRunner(model, "triton", "triton")


register_runner("triton", _triton_runner)


def _make_runner(
    name: str, model: LatentSegmenter, ckpt: Path | None, device: torch.device
) -> Runner:
    return lookup(name, _BACKENDS, backends.plugins(), "backend")(model, ckpt, device)


@dataclass
class Result:
    """Everything lsdseg says about one frame, at the frame's own size (H, W)."""

    mask: np.ndarray  # (H, W) bool: mean > threshold
    mean: np.ndarray  # (H, W) float32: mean foreground probability (confidence map)
    std: np.ndarray  # (H, W) float32: std of the K probabilities
    entropy: np.ndarray  # (H, W) float32: entropy of the mean, bits
    mutual_info: np.ndarray  # (H, W) float32: mutual information (disagreement), bits
    # (K, H, W) float32: per-hypothesis probabilities; (K, S, S), the model's size, when the
    # call asked for hypotheses_size="model"
    hypotheses: np.ndarray
    agreement: float  # mean pairwise Dice of the K binary masks (at S x S)
    # mean entropy of the mean (bits, 0-1) over the candidate region: mean > 0.1, dilated by
    # a max(3, S // 16) px square (at S x S); 0 when the region is empty (see unsure_score)
    unsure: float
    seed: int  # the seed that reproduces this result
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    latents: torch.Tensor | None = None  # (K, c_m, S/f, S/f) clean latents, for warm starts


Order = Literal["bgr", "rgb"]


class Segmenter:
    """Segments frames with a latent diffusion model and reports its uncertainty.

    Args:
        model: the network (in eval mode, on ``device``).
        device: where it runs.
        backend: a whole-model backend name (see :func:`runner_names`), or ``auto``
            (:func:`lsdseg.backends.resolve_backend`).
        checkpoint: the folder the model came from, if any (export backends need it).
        cuda_graph: replay one CUDA graph per frame shape (torch and triton backends on CUDA,
            eta = 0; see :mod:`lsdseg.accel`).
        precision: ``"fp32"``, or ``"fp16"`` / ``"bf16"`` autocast (torch and triton on CUDA).

    Raises:
        ValueError / RuntimeError: a backend, device or option that cannot run here (the
            message names the fix); nothing falls back to another precision or to no graph.
    """

    def __init__(
        self,
        model: LatentSegmenter,
        device: str | torch.device = "cpu",
        backend: str = "torch",
        checkpoint: str | Path | None = None,
        cuda_graph: bool = False,
        precision: Precision = "fp32",
    ) -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        backend = backends.resolve_backend(backend, self.device)
        # before the runner is made: an export backend would export first
        check_supported(self.device, backend, cuda_graph, precision)
        runner = _make_runner(backend, self.model, self.checkpoint, self.device)
        if precision != "fp32":
            runner = dataclasses.replace(runner, precision=precision)  # a TorchRunner
        self.runner: Runner = GraphRunner(runner) if cuda_graph else runner
        self.backend = backend
        self.cuda_graph, self.precision = cuda_graph, precision

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    def settings(
        self,
        hypotheses: int | None = None,
        steps: int | None = None,
        eta: float | None = None,
        threshold: float | None = None,
    ) -> SamplerConfig:
        """The sampler settings a call with these arguments uses: each None is the
        checkpoint's default (``config.sampler``).

        Raises:
            ValueError: a setting out of range.
        """
        d = self.config.sampler
        return SamplerConfig(
            steps=d.steps if steps is None else steps,
            eta=d.eta if eta is None else eta,
            hypotheses=d.hypotheses if hypotheses is None else hypotheses,
            threshold=d.threshold if threshold is None else threshold,
            spacing=d.spacing,
        )

    def check_warm_timestep(self, t: int) -> None:
        """Raises ValueError unless ``t`` is a timestep of this model's schedule, one a
        ``warm_start`` can be noised to."""
        T = self.config.diffusion.timesteps
        if not 0 <= t < T:
            raise ValueError(f"warm_timestep={t} must be between 0 and {T - 1}")

    def preprocess(self, frames: Sequence[np.ndarray], order: Order) -> torch.Tensor:
        """uint8 frames (any size; grey or RGBA converted) -> normalised (B, 3, S, S)."""
        size = self.config.image_size
        batch = []
        for frame in frames:
            rgb = to_rgb8(frame, "frame")
            if order == "bgr":
                rgb = rgb[..., ::-1]
            rgb, _ = resize_pair(np.ascontiguousarray(rgb), None, size)
            batch.append(torch.from_numpy(rgb).permute(2, 0, 1))  # (3, S, S) uint8
        x = torch.stack(batch).to(self.device, torch.float32) / 255.0
        return self.model.normalize(x)

    def __call__(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        hypotheses: int | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | Sequence[int] | None = None,
        threshold: float | None = None,
        order: Order = "bgr",
        warm_start: Result | Sequence[Result] | None = None,
        warm_timestep: int = 499,
        hypotheses_size: Literal["frame", "model"] = "frame",
    ) -> Result | list[Result]:
        """Segment one frame (H, W, 3) or a batch (a list, or an array (B, H, W, 3)).

        Frames are OpenCV-style BGR by default (``order="rgb"`` for RGB). Grey (H, W), RGBA
        and 16-bit frames are converted. Unset settings take the checkpoint's defaults. The same
        seed on the same backend gives the same result; ``seed=None`` draws one (see
        ``Result.seed``). A sequence gives one seed per frame of a batch: frame i then starts
        from the noise a call on that frame alone with ``seed[i]`` draws, so batching frames
        (as a server does) leaves each result as it was, up to float rounding in batched
        convolutions. It needs ``eta == 0`` and no ``warm_start``, whose extra noise comes
        from one generator per call.

        ``warm_start`` (the previous frame's result, one per frame of a batch) starts each
        hypothesis from that result's latents noised to ``warm_timestep`` and runs only the
        DDIM steps at or below it: a correct DDIM trajectory from that timestep, with fewer
        denoiser calls. Its K must equal ``hypotheses``.

        ``hypotheses_size="model"`` leaves ``Result.hypotheses`` at the model's (K, S, S)
        instead of resizing it to the frame's (K, H, W): the K maps are most of a result's
        memory on a large frame (an 8000 x 6000 frame at K = 8: 1.5 GB at the frame's size,
        2 MB at S = 256), and a caller that only shows them as thumbnails needs no more.

        Raises:
            ValueError / TypeError: an invalid setting or frame.
        """
        if order not in ("bgr", "rgb"):
            raise ValueError(f"order={order!r} must be 'bgr' or 'rgb'")
        if hypotheses_size not in ("frame", "model"):
            raise ValueError(f"hypotheses_size={hypotheses_size!r} must be 'frame' or 'model'")
        s = self.settings(hypotheses, steps, eta, threshold)
        frames, single = _frames(image)
        seeds = self._seeds(seed, len(frames), s, warm_start is not None)
        t0 = time.perf_counter()
        x = self.preprocess(frames, order)
        t1 = time.perf_counter()
        latent = (s.hypotheses, *self.model.latent_shape)
        if isinstance(seed, Sequence):  # one generator per frame, used for its noise only
            gen = None
            gens = [torch.Generator().manual_seed(v) for v in seeds]
            noise = torch.cat([torch.randn((1, *latent), generator=g) for g in gens])  # (B, K, ...)
        else:
            gen = torch.Generator().manual_seed(seeds[0])
            noise = torch.randn((len(frames), *latent), generator=gen)
        start = None
        if warm_start is not None:
            noise, start = self._warm(warm_start, len(frames), s, warm_timestep, gen), warm_timestep
        p, z0 = self.runner(x, noise.to(self.device), s.steps, s.eta, gen, start)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        results = [
            self._postprocess(
                p[i].float(), frames[i].shape[:2], s.threshold, seeds[i], hypotheses_size
            )
            for i in range(len(frames))
        ]
        t3 = time.perf_counter()
        per_frame = {
            "preprocess": (t1 - t0) * 1e3 / len(frames),
            "inference": (t2 - t1) * 1e3 / len(frames),
            "postprocess": (t3 - t2) * 1e3 / len(frames),
            "total": (t3 - t0) * 1e3 / len(frames),
        }
        for i, r in enumerate(results):
            r.timings = dict(per_frame)
            r.latents = None if z0 is None else z0[i].detach()
        return results[0] if single else results

    @staticmethod
    def _seeds(seed: int | Sequence[int] | None, n: int, s: SamplerConfig, warm: bool) -> list[int]:
        """The seed of each of ``n`` frames; ``None`` draws one for the whole call."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        if not isinstance(seed, Sequence):
            return [_check_seed(seed, "seed")] * n
        if len(seed) != n:
            raise ValueError(f"seed has {len(seed)} values for {n} frames; pass one per frame")
        if s.eta > 0 or warm:
            raise ValueError(
                "per-frame seeds need eta=0 and no warm_start (their noise comes from one "
                "generator per call); pass one int seed, or call once per frame"
            )
        return [_check_seed(v, f"seed[{i}]") for i, v in enumerate(seed)]

    def _warm(
        self,
        prev: Result | Sequence[Result],
        n: int,
        s: SamplerConfig,
        t: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """The previous results' latents noised to timestep t: (B, K, c_m, S/f, S/f)."""
        prev = [prev] if isinstance(prev, Result) else list(prev)
        self.check_warm_timestep(t)
        if len(prev) != n:
            raise ValueError(f"warm_start has {len(prev)} results for {n} frames; pass one each")
        for r in prev:
            if r.latents is None:
                able = " or ".join(repr(b) for b in backends.able("warm_start"))
                raise ValueError(
                    f"warm_start needs latents, which the {self.backend} backend "
                    f"does not return; use backend={able}"
                )
            if r.latents.shape != (s.hypotheses, *self.model.latent_shape):
                raise ValueError(
                    f"warm_start latents {tuple(r.latents.shape)} do not match hypotheses="
                    f"{s.hypotheses} and this model's latent {self.model.latent_shape}"
                )
        z0 = torch.stack([r.latents for r in prev]).to(self.device)
        return self.model.warm_latents(z0, t, gen)

    @staticmethod
    def _postprocess(
        p: torch.Tensor,
        size: tuple[int, int],
        threshold: float,
        seed: int,
        hypotheses_size: Literal["frame", "model"] = "frame",
    ) -> Result:
        """(K, S, S) probabilities -> a Result at ``size`` (H, W); the K maps stay at S x S
        with ``hypotheses_size="model"``."""
        agg = aggregate(p)
        agree = float(agreement(p > 0.5))
        unsure = float(unsure_score(agg.mean, agg.entropy))
        maps = torch.stack([agg.mean, agg.std, agg.entropy, agg.mutual_info])  # (4, S, S)
        if hypotheses_size == "frame":
            maps = torch.cat([maps, p])  # (4 + K, S, S)
        if tuple(maps.shape[-2:]) != tuple(size):
            maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
        maps = maps.clamp_(0.0, 1.0).cpu().numpy()  # in place: no second frame-sized copy
        hyps = maps[4:] if hypotheses_size == "frame" else p.clamp(0.0, 1.0).cpu().numpy()
        mean = maps[0]
        return Result(
            mask=mean > threshold,
            mean=mean,
            std=maps[1],
            entropy=maps[2],
            mutual_info=maps[3],
            hypotheses=hyps,
            agreement=agree,
            unsure=unsure,
            seed=seed,
        )


def _check_seed(seed: object, name: str) -> int:
    """``seed`` as an int, checked to be one a generator takes.

    Raises:
        TypeError: not an integer.
        ValueError: outside [0, 2**63 - 1] (-1 included: ``None`` draws a new seed).
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"{name}={seed!r} must be an int (or None to draw one)")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"{name}={seed} must be between 0 and 2**63 - 1; seed=None draws a new one each call"
        )
    return int(seed)


_FRAME = "a numpy array (H, W, 3) uint8 BGR or (H, W) grey"
_EXPECTED = f"{_FRAME}, or a batch of them (a list, or (B, H, W, 3))"


def _not_a_frame(value: object, what: str, expected: str) -> TypeError:
    """The error for a ``value`` that is no image array, saying what it was and what to do."""
    if value is None:
        got, fix = "None", "; cv2.imread returns None for a missing or unreadable file"
    elif isinstance(value, (str, Path)):
        got = f"the {type(value).__name__} {str(value)!r}"
        fix = "; read the file first (cv2.imread)"
    else:
        got, fix = f"a {type(value).__name__}", ""
    return TypeError(f"{what} is {got}; expected {expected}{fix}")


def _frames(image: object) -> tuple[list[np.ndarray], bool]:
    """The frames of a call (a list of arrays) and whether a single frame was passed.

    Raises:
        TypeError: ``image`` (or a frame of a batch) is not a numpy array.
        ValueError: an empty batch, or an array with no frame layout.
    """
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4)):
            return [image], True
        if image.ndim == 3:  # (64, 64, 5): 5 channels, or 64 grey frames? neither is guessed
            raise ValueError(
                f"image has shape {image.shape}: {image.shape[-1]} channels is not an image "
                f"(1-4 channels: grey, grey + alpha, BGR, BGRA); pass grey frames as a list "
                f"of (H, W) arrays; expected {_EXPECTED}"
            )
        if image.ndim != 4:
            raise ValueError(f"image has shape {image.shape}; expected {_EXPECTED}")
        frames = list(image)
    elif isinstance(image, Sequence) and not isinstance(image, (str, bytes)):
        frames = list(image)
    else:
        raise _not_a_frame(image, "image", _EXPECTED)
    if not frames:
        raise ValueError("image is an empty batch; pass at least one frame")
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray):
            raise _not_a_frame(f, f"frame {i} of the batch", _FRAME)
    return frames, False


def bundled_weights() -> Path:
    """Folder of the default checkpoint shipped inside the package."""
    return Path(str(resources.files("lsdseg") / "weights" / "default"))


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error with a fix."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device={device!r} is not a device; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} asked for CUDA, but this torch ({torch.__version__}) sees no GPU: "
            "run on the CPU (device 'cpu'), or install a CUDA build of torch (see the README)"
        )
    return dev


def load(
    name_or_path: str | Path = "default",
    device: str | torch.device = "auto",
    backend: str = "torch",
    cuda_graph: bool = False,
    precision: Precision = "fp32",
) -> Segmenter:
    """Load a segmenter.

    Args:
        name_or_path: ``"default"`` (the bundled weights), ``"untrained"`` (randomly initialised
            default architecture, for tests and demos only), or a checkpoint folder.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the default: CUDA when torch
            sees a GPU, else the CPU), as the CLI's ``--device``.
        backend: a name of :data:`lsdseg.backends.BACKENDS` (``torch``, ``triton``, ``onnx``,
            ``trt``) or ``auto`` (triton on CUDA when Triton is installed, else torch).
        cuda_graph: replay one CUDA graph per frame shape (torch and triton on CUDA, eta = 0).
        precision: ``"fp32"`` (default), or ``"fp16"`` / ``"bf16"`` autocast on CUDA (torch
            and triton).

    Raises:
        CheckpointError: the checkpoint is missing or does not match its config.
        ValueError / RuntimeError: an unknown backend or device, or one that cannot run here.
    """
    dev = resolve_device(device)
    if str(name_or_path) == "untrained":
        log.warning("lsdseg: using an UNTRAINED model (random weights): its masks mean nothing")
        torch.manual_seed(0)
        model = LatentSegmenter(ModelConfig()).to(dev)
        return Segmenter(model, dev, backend, None, cuda_graph, precision)
    path = bundled_weights() if str(name_or_path) == "default" else Path(name_or_path)
    if str(name_or_path) == "default" and not (path / "model.safetensors").is_file():
        raise CheckpointError(
            "this lsdseg has no bundled default weights; pass a checkpoint folder, or "
            "'untrained' to try the pipeline with random weights"
        )
    return Segmenter(load_checkpoint(path, dev), dev, backend, path, cuda_graph, precision)
