"""The user-facing segmenter: frames in, K hypotheses and uncertainty maps out.

``lsdseg.load(...)`` returns a :class:`Segmenter`. A call runs three steps: :meth:`preprocess`
(colour order, resize to the segmenter's ``image_size``, normalise; :mod:`lsdseg.imageio`),
:meth:`~Segmenter.run` (the initial noise, drawn by :func:`lsdseg.diffusion.draw_noise`, and the
backend's runner, which produces per-hypothesis probabilities) and
:meth:`~Segmenter.postprocess` (aggregate, and resize back to each frame's size).

The input size S is the segmenter's ``image_size`` (default: the checkpoint's), never written
into ``model.cfg``; the latent grid follows from the input (:mod:`lsdseg.imagesize`).

The backends are described by :mod:`lsdseg.backends` and their runners built by
:mod:`lsdseg.runners`; ``register_runner``, ``runner_names`` and ``TorchRunner`` are re-exported
here for the imports that name this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lsdseg import backends, runners
from lsdseg.accel import GraphRunner, Precision, check_supported
from lsdseg.backends import Runner
from lsdseg.checkpoint import CheckpointError, load_checkpoint
from lsdseg.config import MAX_SEED, ModelConfig, SamplerConfig
from lsdseg.diffusion import draw_noise
from lsdseg.imageio import as_frames, frame_to_model, resize_maps
from lsdseg.imagesize import latent_shape, resolve_image_size
from lsdseg.model import LatentSegmenter
from lsdseg.runners import RunnerFactory, TorchRunner, register_runner, runner_names
from lsdseg.uncertainty import aggregate, agreement, unsure_score

__all__ = [
    "Order",
    "Result",
    "RunnerFactory",
    "Segmenter",
    "TorchRunner",
    "bundled_weights",
    "load",
    "register_runner",
    "resolve_device",
    "runner_names",
]

log = logging.getLogger(__name__)


@dataclass
class Result:
    """Everything lsdseg says about one frame, at the frame's own size (H, W)."""

    # (H, W) bool: mean > threshold on a frame judged to hold a polyp (``present``), else empty
    mask: np.ndarray
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
    # the probability that the frame holds a polyp, from the presence head (lsdseg.presence);
    # 1.0 for a checkpoint without one
    score: float = 1.0
    present: bool = True  # score >= the presence threshold: the frame is judged a polyp frame
    threshold: float = 0.5  # the mask's threshold on the mean: mask = mean > threshold if present
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    latents: torch.Tensor | None = None  # (K, c_m, S/f, S/f) clean latents, for warm starts


Order = Literal["bgr", "rgb"]


class Segmenter:
    """Segments frames with a latent diffusion model and reports its uncertainty.

    Args:
        model: the network (in eval mode, on ``device``).
        device: where it runs.
        backend: a whole-model backend name (:func:`lsdseg.runners.runner_names`), or
            ``auto`` (:func:`lsdseg.backends.resolve_backend`).
        checkpoint: the folder the model came from, if any (export backends need it).
        cuda_graph: replay one CUDA graph per frame shape (torch and triton backends on CUDA,
            eta = 0; see :mod:`lsdseg.accel`).
        precision: ``"fp32"``, or ``"fp16"`` / ``"bf16"`` autocast (torch and triton on CUDA).
        image_size: the input size S frames are resized to (default: the checkpoint's
            ``model.cfg.image_size``); another size runs the same weights at that size
            (:func:`lsdseg.imagesize.check_image_size`), on the backends that can (``imgsz`` in
            :data:`lsdseg.backends.BACKENDS`). ``model.cfg`` is left as it is.

    Raises:
        ValueError / RuntimeError: a backend, device or option that cannot run here (the
            message names the fix); nothing falls back to another precision or to no graph.
            A bad ``image_size`` is a ValueError whose message starts ``image_size=``.
    """

    def __init__(
        self,
        model: LatentSegmenter,
        device: str | torch.device = "cpu",
        backend: str = "torch",
        checkpoint: str | Path | None = None,
        cuda_graph: bool = False,
        precision: Precision = "fp32",
        image_size: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.device = torch.device(device)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        bigger = image_size is not None and image_size != model.cfg.image_size
        wants = backends.needs(0.0, False, bigger, cuda_graph, precision)
        asked, backend = backend, backends.resolve_backend(backend, self.device, wants)
        if asked != backend:
            log.info("backend %s runs %s on %s", asked, backend, self.device)
        # before the runner is made: an export backend would export first
        self.image_size = resolve_image_size(model.cfg, image_size, backend)
        check_supported(self.device, backend, cuda_graph, precision)
        runner = runners.build_runner(backend, self.model, self.checkpoint, self.device, precision)
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
        presence_threshold: float | None = None,
    ) -> SamplerConfig:
        """The sampler settings a call with these arguments uses: each None is the
        checkpoint's default (``config.sampler``).

        Raises:
            TypeError: hypotheses or steps not an int, eta or threshold not a number (a bool,
                a string or a float step count is none of them).
            ValueError: a setting out of range.
        """
        d = self.config.sampler
        for name, value in (("hypotheses", hypotheses), ("steps", steps)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | np.integer)
            ):
                raise TypeError(f"{name}={value!r} must be an int")
        for name, value in (("eta", eta), ("threshold", threshold)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float | np.number)
            ):
                raise TypeError(f"{name}={value!r} must be a number")
        hypotheses = None if hypotheses is None else int(hypotheses)
        steps = None if steps is None else int(steps)
        eta = None if eta is None else float(eta)
        threshold = None if threshold is None else float(threshold)
        return SamplerConfig(
            steps=d.steps if steps is None else steps,
            eta=d.eta if eta is None else eta,
            hypotheses=d.hypotheses if hypotheses is None else hypotheses,
            threshold=d.threshold if threshold is None else threshold,
            spacing=d.spacing,
            shift=d.shift,
            presence_threshold=(
                d.presence_threshold if presence_threshold is None else presence_threshold
            ),
        )

    def check_warm_timestep(self, t: int) -> None:
        """Raises ValueError unless ``t`` is a timestep of this model's schedule, one a
        ``warm_start`` can be noised to."""
        T = self.config.diffusion.timesteps
        if not 0 <= t < T:
            raise ValueError(f"warm_timestep={t} must be between 0 and {T - 1}")

    def preprocess(self, frames: Sequence[np.ndarray], order: Order) -> torch.Tensor:
        """uint8 frames (any size; grey or RGBA converted) -> normalised (B, 3, S, S), at
        S = ``image_size``."""
        size = self.image_size
        # (3, S, S) uint8 views of each frame at the model's size, then one (B, 3, S, S) copy
        batch = [torch.from_numpy(frame_to_model(f, size, order)).permute(2, 0, 1) for f in frames]
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
        presence_threshold: float | None = None,
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

        ``presence_threshold`` (default: the checkpoint's) decides whether a frame holds a
        polyp: a frame whose ``Result.score`` is below it gets an empty ``Result.mask``, while
        its mean, std and uncertainty maps stay as sampled, so a weak suspicion stays visible.

        Raises:
            ValueError / TypeError: an invalid setting or frame.
        """
        _check_choice("order", order, ("bgr", "rgb"))
        _check_choice("hypotheses_size", hypotheses_size, ("frame", "model"))
        s = self.settings(hypotheses, steps, eta, threshold, presence_threshold)
        frames, single = as_frames(image)
        seeds = self._seeds(seed, len(frames), s, warm_start is not None)
        t0 = time.perf_counter()
        x = self.preprocess(frames, order)
        t1 = time.perf_counter()
        per_frame = isinstance(seed, Sequence)
        p, z0, score = self.run(x, s, seeds, per_frame, warm_start, warm_timestep)
        t2 = time.perf_counter()
        results = [
            self.postprocess(
                p[i].float(),
                f.shape[:2],
                s.threshold,
                seeds[i],
                hypotheses_size,
                float(score[i]),
                s.presence_threshold,
            )
            for i, f in enumerate(frames)
        ]
        timings = _timings((t0, t1, t2, time.perf_counter()), len(frames))
        for i, r in enumerate(results):
            r.timings = dict(timings)
            r.latents = None if z0 is None else z0[i].detach()
        return results[0] if single else results

    def run(
        self,
        x: torch.Tensor,
        s: SamplerConfig,
        seeds: Sequence[int],
        per_frame: bool = False,
        warm_start: Result | Sequence[Result] | None = None,
        warm_timestep: int = 499,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Draw the initial noise and run the backend on a batch from :meth:`preprocess`.

        Args:
            s: the sampler settings (:meth:`settings`).
            seeds: one per frame. With ``per_frame`` each frame's generator draws its noise;
                else one generator, seeded ``seeds[0]``, draws the batch's noise and every
                later draw of the call (warm-start and eta > 0 noise).
            warm_start, warm_timestep: as :meth:`__call__`'s.

        Shapes:
            x: (B, 3, S, S) -> probabilities (B, K, S, S), clean latents
            (B, K, c_m, S/f, S/f) or None when the backend returns none, and the presence
            score (B,).

        Raises:
            ValueError: a warm start that does not fit.
        """
        latent = latent_shape(self.config, x.shape[-1])  # (c_m, S/f, S/f), from x's S
        shape = (len(seeds), s.hypotheses, *latent)  # (B, K, c_m, S/f, S/f)
        if per_frame:
            gen = None
            noise = draw_noise(shape, [torch.Generator().manual_seed(v) for v in seeds], "cpu")
        else:
            gen = torch.Generator().manual_seed(seeds[0])
            noise = draw_noise(shape, gen, "cpu")
        start = None
        if warm_start is not None:  # its noise is the generator's next draw after ``noise``
            noise = self._warm(warm_start, shape, warm_timestep, gen)
            start = warm_timestep
        p, z0, score = self.runner(x, noise.to(self.device), s.steps, s.eta, gen, start)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the caller's timings hold the work
        return p, z0, score.float().cpu()

    @staticmethod
    def _seeds(seed: int | Sequence[int] | None, n: int, s: SamplerConfig, warm: bool) -> list[int]:
        """The seed of each of ``n`` frames; ``None`` draws one for the whole call."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        if not isinstance(seed, Sequence) or isinstance(seed, str | bytes):
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
        shape: tuple[int, ...],
        t: int,
        gen: torch.Generator | None,
    ) -> torch.Tensor:
        """The previous results' latents noised to timestep t: ``shape``, the call's
        (B, K, c_m, S/f, S/f)."""
        if isinstance(prev, Result):
            prev = [prev]
        elif isinstance(prev, Sequence) and not isinstance(prev, str | bytes):
            prev = list(prev)
        else:
            prev = [prev]
        for r in prev:
            if not isinstance(r, Result):
                raise TypeError(
                    f"warm_start={r!r:.60} must be the Result of the previous call (one per "
                    "frame of a batch), or None"
                )
        self.check_warm_timestep(t)
        n, k, latent = shape[0], shape[1], tuple(shape[2:])
        if len(prev) != n:
            raise ValueError(f"warm_start has {len(prev)} results for {n} frames; pass one each")
        for r in prev:
            if r.latents is None:
                able = " or ".join(repr(b) for b in backends.able("warm_start"))
                raise ValueError(
                    f"warm_start needs latents, which the {self.backend} backend "
                    f"does not return; use backend={able}"
                )
            if r.latents.shape != (k, *latent):
                raise ValueError(
                    f"warm_start latents {tuple(r.latents.shape)} do not match hypotheses="
                    f"{k} and this model's latent {latent} at image_size={self.image_size}"
                )
        z0 = torch.stack([r.latents for r in prev]).to(self.device)
        return self.model.warm_latents(z0, t, gen)

    @staticmethod
    def postprocess(
        p: torch.Tensor,
        size: tuple[int, int],
        threshold: float,
        seed: int,
        hypotheses_size: Literal["frame", "model"] = "frame",
        score: float = 1.0,
        presence_threshold: float = 0.0,
    ) -> Result:
        """One frame's (K, S, S) probabilities and presence score -> its Result at ``size``
        (H, W); the K maps stay at S x S with ``hypotheses_size="model"``. The mask is empty
        when ``score`` is below ``presence_threshold``.

        The mean, std, entropy and mutual information (and the K maps) are resized together,
        as one (4 + K, S, S) stack, and clamped in place: no second frame-sized copy.
        """
        agg = aggregate(p)
        agree = float(agreement(p > 0.5))
        unsure = float(unsure_score(agg.mean, agg.entropy))
        maps = torch.stack([agg.mean, agg.std, agg.entropy, agg.mutual_info])  # (4, S, S)
        if hypotheses_size == "frame":
            maps = torch.cat([maps, p])  # (4 + K, S, S)
        maps = resize_maps(maps, size).clamp_(0.0, 1.0).cpu().numpy()
        hyps = maps[4:] if hypotheses_size == "frame" else p.clamp(0.0, 1.0).cpu().numpy()
        mean = maps[0]
        present = score >= presence_threshold
        return Result(
            mask=(mean > threshold) if present else np.zeros(mean.shape, bool),
            mean=mean,
            std=maps[1],
            entropy=maps[2],
            mutual_info=maps[3],
            hypotheses=hyps,
            agreement=agree,
            unsure=unsure,
            seed=seed,
            score=score,
            present=present,
            threshold=threshold,
        )


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raises ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be {' or '.join(repr(a) for a in allowed)}")


def _timings(t: tuple[float, float, float, float], n: int) -> dict[str, float]:
    """Milliseconds per frame of each stage of a call on ``n`` frames, from the clock read
    before preprocessing and after preprocessing, inference and postprocessing (``t``)."""
    ms = 1e3 / n
    return {
        "preprocess": (t[1] - t[0]) * ms,
        "inference": (t[2] - t[1]) * ms,
        "postprocess": (t[3] - t[2]) * ms,
        "total": (t[3] - t[0]) * ms,
    }


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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"device={device!r}: there is one CPU device; use cpu")
    if dev.type == "cpu":
        return torch.device("cpu")  # cpu:0 is the CPU, but safetensors refuses the index
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: lsdseg runs on cpu or cuda (cuda:N), or auto")
    return dev


def load(
    name_or_path: str | Path = "default",
    device: str | torch.device = "auto",
    backend: str = "torch",
    cuda_graph: bool = False,
    precision: Precision = "fp32",
    image_size: int | None = None,
) -> Segmenter:
    """Load a segmenter.

    Args:
        name_or_path: ``"default"`` (the bundled weights), ``"untrained"`` (randomly initialised
            default architecture, for tests and demos only), or a checkpoint folder.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the default: CUDA when torch
            sees a GPU, else the CPU), as the CLI's ``--device``.
        backend: a name of :data:`lsdseg.backends.BACKENDS` (``torch``, ``triton``, ``onnx``,
            ``trt``) or ``auto`` (the fastest installed one for the device that can do what was
            asked: :func:`lsdseg.backends.resolve_backend`).
        cuda_graph: replay one CUDA graph per frame shape (torch and triton on CUDA, eta = 0).
        precision: ``"fp32"`` (default), or ``"fp16"`` / ``"bf16"`` autocast on CUDA (torch
            and triton).
        image_size: the input size S (default: the checkpoint's; see :class:`Segmenter`).

    Raises:
        CheckpointError: the checkpoint is missing or does not match its config.
        ValueError / RuntimeError: an unknown backend or device, or one that cannot run here;
            an input size the model or backend cannot run at (the message starts
            ``image_size=``).
    """
    dev = resolve_device(device)
    if str(name_or_path) == "untrained":
        log.warning("lsdseg: using an UNTRAINED model (random weights): its masks mean nothing")
        torch.manual_seed(0)
        model = LatentSegmenter(ModelConfig()).to(dev)
        return Segmenter(model, dev, backend, None, cuda_graph, precision, image_size)
    path = bundled_weights() if str(name_or_path) == "default" else Path(name_or_path)
    if str(name_or_path) == "default" and not (path / "model.safetensors").is_file():
        raise CheckpointError(
            "this lsdseg has no bundled default weights; pass a checkpoint folder, or "
            "'untrained' to try the pipeline with random weights"
        )
    model = load_checkpoint(path, dev)
    cfg = model.cfg
    log.info(
        "loaded %s: %d px, K=%d, %d steps, threshold %g, on %s",
        path,
        cfg.image_size,
        cfg.sampler.hypotheses,
        cfg.sampler.steps,
        cfg.sampler.threshold,
        dev,
    )
    return Segmenter(model, dev, backend, path, cuda_graph, precision, image_size)
