"""The model behind ``lsdseg serve``: Triton requests in, batched Segmenter calls out.

The protocol (shared with the client in :mod:`lsdseg.cli.remote`):

- input ``frame``: uint8 (1, H, W, 3), one BGR frame of any size per request;
- request parameters, all optional: ``hypotheses``, ``steps``, ``seed`` (integers), ``eta``,
  ``threshold`` and ``presence_threshold`` (numbers, or strings holding numbers); unset ones
  take the checkpoint's defaults, and a missing seed is drawn and returned;
- outputs at the frame's size: ``mask`` bool (1, H, W), ``mean``, ``std``, ``entropy``,
  ``mutual_info`` float32 (1, H, W), ``hypotheses`` float32 (1, K, H, W), ``agreement``,
  ``unsure``, ``score`` (the presence score) and ``threshold`` (the mask's) float32 (1, 1),
  ``present`` bool (1, 1) (the frame-level decision), ``seed`` int64 (1, 1) and
  ``compute_ms`` float32 (1, 1), the time of the Segmenter call that served the request
  (shared by the frames batched into it; a client's latency minus it is the serving
  overhead). Only the outputs a request asks for are sent.

Triton's dynamic batcher hands several requests to one :class:`SegmentModel` call (it only
groups frames of the same size). Requests with the same sampler settings run as one Segmenter
batch with one seed per frame, so each answer is the one the local Segmenter gives for that
frame and seed, up to float rounding in batched convolutions (about 1e-5). Requests with
``eta > 0`` draw per-step noise from one generator per call, so they run one at a time.

A refused request is answered with one line (:func:`client_message`): PyTriton would send the
client the Python traceback of the error, with the server's paths in it, so
:class:`ClientErrors` stands in for the ``traceback`` module of its request handler.

Nothing here imports PyTriton: the batching is tested without a server.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from lsdseg.config import MAX_SEED
from lsdseg.imageio import max_image_pixels

if TYPE_CHECKING:
    from lsdseg.config import SamplerConfig
    from lsdseg.segmenter import Result, Segmenter

log = logging.getLogger(__name__)

MODEL_NAME = "lsdseg"
INPUT = "frame"
# output name -> (dtype, dims after the batch dimension); -1 is any size
OUTPUTS: dict[str, tuple[type, tuple[int, ...]]] = {
    "mask": (np.bool_, (-1, -1)),
    "mean": (np.float32, (-1, -1)),
    "std": (np.float32, (-1, -1)),
    "entropy": (np.float32, (-1, -1)),
    "mutual_info": (np.float32, (-1, -1)),
    "hypotheses": (np.float32, (-1, -1, -1)),
    "agreement": (np.float32, (1,)),
    "unsure": (np.float32, (1,)),
    "score": (np.float32, (1,)),
    "present": (np.bool_, (1,)),
    "threshold": (np.float32, (1,)),
    "seed": (np.int64, (1,)),
    "compute_ms": (np.float32, (1,)),
}
INT_PARAMETERS = ("hypotheses", "steps", "seed")
FLOAT_PARAMETERS = ("eta", "threshold", "presence_threshold")


def client_message(error: BaseException | None) -> str:
    """What a client is told about a failed request: the one-line message of a refusal
    (ValueError: a bad parameter, frame or shape), never a traceback or a path of the server;
    any other error is named by its type only (the server's log has the traceback)."""
    if isinstance(error, ValueError):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return lines[0] if lines else "the request was refused"
    name = type(error).__name__ if error is not None else "unknown"
    return f"internal error of the server ({name}); its log has the details"


class ClientErrors:
    """Stands in for the ``traceback`` module in PyTriton's request handler
    (``pytriton.proxy.inference``), whose formatted tracebacks become the error messages that
    clients receive: they get :func:`client_message`'s one line, and the full traceback goes to
    the server's log (at debug level for refusals, as a warning otherwise)."""

    def format_exception(
        self, exc: object, value: BaseException | None = None, tb: object = None, **_: object
    ) -> list[str]:
        error = value if value is not None else exc if isinstance(exc, BaseException) else None
        self._log(error)
        return [client_message(error)]

    def format_exc(self, *_: object, **__: object) -> str:
        error = sys.exc_info()[1]
        self._log(error)
        return client_message(error)

    def __getattr__(self, name: str) -> object:  # anything else: the real module's
        return getattr(traceback, name)

    @staticmethod
    def _log(error: BaseException | None) -> None:
        if error is None:
            return
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if isinstance(error, ValueError):
            log.debug("refused a request: %s", text)
        else:
            log.warning("a request failed: %s", text)


class RequestLike(Protocol):
    """What the model reads from a request (PyTriton's ``Request`` provides it)."""

    data: dict[str, np.ndarray]
    parameters: dict[str, str | int | bool] | None
    requested_output_names: list[str] | None


@dataclass(frozen=True)
class Job:
    """One parsed request: its frame, its resolved sampler settings and its seed."""

    frame: np.ndarray  # (H, W, 3) uint8 BGR
    settings: SamplerConfig
    seed: int
    outputs: tuple[str, ...]  # the output names to send back


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"parameter {name}={value!r} must be an integer")
    return value


def _float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"parameter {name}={value!r} must be a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name}={value!r} must be a number") from None


def parse_request(segmenter: Segmenter, request: RequestLike) -> Job:
    """Check one request and resolve its settings against the checkpoint's defaults.

    Raises:
        ValueError: a wrong frame shape, an unknown parameter or a value out of range.
    """
    import dataclasses
    import difflib

    import torch

    params = dict(request.parameters or {})
    known = INT_PARAMETERS + FLOAT_PARAMETERS
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown parameter {key!r}{hint}; expected {', '.join(known)}")
    ints = {k: _int(k, params[k]) for k in INT_PARAMETERS if k in params}
    floats = {k: _float(k, params[k]) for k in FLOAT_PARAMETERS if k in params}
    seed = ints.pop("seed", None)
    # the checkpoint's defaults with this request's values; SamplerConfig checks the ranges
    settings = dataclasses.replace(segmenter.config.sampler, **ints, **floats)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    elif not 0 <= seed <= MAX_SEED:
        raise ValueError(f"parameter seed={seed} must be between 0 and {MAX_SEED}")
    frame = request.data[INPUT]
    if frame.ndim != 4 or frame.shape[0] != 1 or frame.shape[-1] != 3 or 0 in frame.shape:
        raise ValueError(
            f"input {INPUT!r} has shape {tuple(frame.shape)}; send one frame per request as "
            "(1, H, W, 3) uint8 (the server batches concurrent requests itself)"
        )
    limit = max_image_pixels()
    if limit is not None and frame.shape[1] * frame.shape[2] > limit:
        raise ValueError(
            f"input {INPUT!r} has {frame.shape[1]}x{frame.shape[2]} pixels, above the server's "
            f"limit of {limit} (LSDSEG_MAX_IMAGE_PIXELS); send a smaller frame"
        )
    names = request.requested_output_names or list(OUTPUTS)
    return Job(frame[0], settings, seed, tuple(n for n in OUTPUTS if n in names))


def group_jobs(jobs: Sequence[Job]) -> list[list[int]]:
    """Indices of the jobs that can share one Segmenter call (same settings, eta = 0)."""
    groups: dict[object, list[int]] = {}
    for i, job in enumerate(jobs):
        key = job.settings if job.settings.eta == 0 else (job.settings, i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def response(result: Result, outputs: Sequence[str], compute_ms: float) -> dict[str, np.ndarray]:
    """The requested outputs of one frame, each with a batch dimension of 1."""
    maps = {
        "mask": result.mask,
        "mean": result.mean,
        "std": result.std,
        "entropy": result.entropy,
        "mutual_info": result.mutual_info,
        "hypotheses": result.hypotheses,
        "agreement": np.array([result.agreement]),
        "unsure": np.array([result.unsure]),
        "score": np.array([result.score]),
        "present": np.array([result.present]),
        "threshold": np.array([result.threshold]),
        "seed": np.array([result.seed]),
        "compute_ms": np.array([compute_ms]),
    }
    return {
        n: np.ascontiguousarray(maps[n], dtype=OUTPUTS[n][0])[None] for n in outputs
    }  # (1, ...)


class SegmentModel:
    """One model instance: the inference callable PyTriton binds, over one Segmenter."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.calls = 0  # Segmenter calls made
        self.frames = 0  # frames segmented

    def __call__(self, requests: Sequence[RequestLike]) -> list[dict[str, np.ndarray]]:
        """Segment the frames of a batch of requests; one answer per request, in order.

        Raises:
            ValueError: a request is malformed (Triton fails the whole batch with it).
        """
        jobs = []
        for i, request in enumerate(requests):
            try:
                jobs.append(parse_request(self.segmenter, request))
            except ValueError as e:
                raise ValueError(f"request {i + 1} of {len(requests)}: {e}") from None
        answers: list[dict[str, np.ndarray]] = [{} for _ in jobs]
        groups = group_jobs(jobs)
        for group in groups:
            s = jobs[group[0]].settings
            seeds = [jobs[i].seed for i in group]
            t0 = time.perf_counter()
            results = self.segmenter(
                [jobs[i].frame for i in group],
                hypotheses=s.hypotheses,
                steps=s.steps,
                eta=s.eta,
                threshold=s.threshold,
                presence_threshold=s.presence_threshold,
                seed=seeds if len(group) > 1 else seeds[0],
            )
            ms = (time.perf_counter() - t0) * 1e3
            # a list of frames gives a list of results
            for i, result in zip(group, cast("list[Result]", results), strict=True):
                answers[i] = response(result, jobs[i].outputs, ms)
            self.calls += 1
            self.frames += len(group)
        log.debug("%d requests in %d Segmenter calls", len(jobs), len(groups))
        return answers
