"""The client of ``lsdseg serve``: a Segmenter look-alike whose inference runs on a server.

:class:`RemoteSegmenter` speaks Triton's HTTP or gRPC protocol (``tritonclient``, the
``[client]`` extra, which works with numpy 2) to any server that serves model ``lsdseg`` with
the protocol of :mod:`lsdseg.cli.server`. Every network call has a deadline: a server that is
gone, refuses, fails or stops answering raises :class:`ServerError` with one line saying which,
never a hang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from lsdseg.cli.server import INPUT, MODEL_NAME, OUTPUTS
from lsdseg.config import SamplerConfig
from lsdseg.segmenter import Order, Result

T = TypeVar("T")
Protocol = Literal["http", "grpc"]
DEFAULT_PORTS: dict[str, int] = {"http": 8000, "grpc": 8001}
INSTALL = 'tritonclient is not installed: pip install "lsdseg[client]"'


class ServerError(RuntimeError):
    """The server could not be reached, failed a request, or did not answer in time."""


@dataclass(frozen=True)
class ServerAddress:
    """Where a server listens and which protocol to speak to it."""

    protocol: Protocol
    host: str
    port: int

    @property
    def url(self) -> str:
        """``host:port``, as tritonclient takes it."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


def parse_server(text: str) -> ServerAddress:
    """``HOST:PORT``, ``http://HOST[:PORT]`` or ``grpc://HOST[:PORT]`` -> a ServerAddress.

    Without a scheme the protocol is HTTP; without a port, Triton's default (8000 HTTP,
    8001 gRPC).

    Raises:
        ValueError: an unknown scheme, or a port that is not a number in 1..65535.
    """
    protocol, sep, rest = text.partition("://")
    if not sep:
        protocol, rest = "http", text
    if protocol not in DEFAULT_PORTS:
        raise ValueError(f"--server {text!r}: the scheme must be http:// or grpc://")
    host, colon, port_text = rest.rstrip("/").rpartition(":")
    if not colon:
        host, port_text = rest.rstrip("/"), str(DEFAULT_PORTS[protocol])
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(
            f"--server {text!r}: expected HOST:PORT, http://HOST:PORT or grpc://HOST:PORT"
        )
    return ServerAddress(protocol, host.strip("[]"), int(port_text))  # type: ignore[arg-type]


def _server_message(text: str) -> str:
    """The useful line of a server-side error (PyTriton sends the whole traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("ValueError:", "TypeError:", "RuntimeError:")):
            return line.split(":", 1)[1].strip()
    return lines[-1] if lines else "no message"


class RemoteSegmenter:
    """Sends each frame to a Triton server and returns the server's :class:`Result`.

    Safe to share between threads: each thread gets its own connection.

    Args:
        server: where the server is (see :func:`parse_server`).
        timeout: seconds each network call may take, connecting included.
        outputs: the outputs to ask for (default: all). Maps left out come back as zero-size
            arrays ((K, 0, 0) for ``hypotheses``), so a video pipeline that shows one
            uncertainty map does not ship K full-size maps per frame.
        model: the model name on the server.

    Raises:
        RuntimeError: tritonclient is not installed.
        ValueError: a bad address or output name.
    """

    backend = "server"

    def __init__(
        self,
        server: str | ServerAddress,
        timeout: float = 30.0,
        outputs: Sequence[str] | None = None,
        model: str = MODEL_NAME,
    ) -> None:
        self.address = parse_server(server) if isinstance(server, str) else server
        if timeout <= 0:
            raise ValueError(f"timeout={timeout} must be > 0 seconds")
        self.timeout = timeout
        self.model = model
        self.outputs = tuple(OUTPUTS) if outputs is None else tuple(outputs)
        for name in self.outputs:
            if name not in OUTPUTS:
                raise ValueError(f"unknown output {name!r}; choose from {', '.join(OUTPUTS)}")
        try:
            if self.address.protocol == "http":
                import tritonclient.http as client
            else:
                import tritonclient.grpc as client
        except ImportError:
            raise RuntimeError(INSTALL) from None
        self._lib = client
        self._local = threading.local()  # one connection per thread (the HTTP client's
        # gevent loop belongs to the thread that made it)
        self._deadline = {} if self.address.protocol == "http" else {"client_timeout": timeout}

    @property
    def _client(self) -> Any:
        """This thread's tritonclient InferenceServerClient (made on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            url = self.address.url
            if self.address.protocol == "http":
                t = self.timeout
                client = self._lib.InferenceServerClient(
                    url, connection_timeout=t, network_timeout=t
                )
            else:
                client = self._lib.InferenceServerClient(url)
            self._local.client = client
        return client

    def _call(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run one network call; every failure becomes a one-line :class:`ServerError`."""
        from tritonclient.utils import InferenceServerException

        where = f"the lsdseg server at {self.address}"
        late = f"{where} did not answer {what} within {self.timeout:g} s"
        try:
            return fn(*args, **kwargs, **self._deadline)
        except InferenceServerException as e:
            text, status = e.message() or "", str(e.status() or "")
            if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in text:
                raise ServerError(
                    f"{where} did not answer {what} within {self.timeout:g} s"
                ) from None
            if "UNAVAILABLE" in status:
                raise ServerError(f"cannot reach {where} ({_server_message(text)})") from None
            raise ServerError(f"{where} failed {what}: {_server_message(text)}") from None
        except TimeoutError:
            raise ServerError(late) from None
        except ConnectionRefusedError:
            raise ServerError(
                f"cannot reach {where} (connection refused): is `lsdseg serve` running there?"
            ) from None
        except OSError as e:  # reset, broken pipe, unreachable host, name not found
            raise ServerError(f"lost {where} during {what} ({e.strerror or e})") from None
        except Exception as e:  # geventhttpclient's protocol errors when a server dies mid-answer
            raise ServerError(f"lost {where} during {what} ({type(e).__name__}: {e})") from None

    def check(self) -> None:
        """Make sure the server is up and model ``lsdseg`` is ready.

        Raises:
            ServerError: it is not (the message says which).
        """
        if not self._call("the liveness check", self._client.is_server_live):
            raise ServerError(f"the lsdseg server at {self.address} is not live")
        if not self._call("the readiness check", self._client.is_model_ready, self.model):
            raise ServerError(
                f"the server at {self.address} is up but model {self.model!r} is not ready"
            )

    def __call__(
        self,
        image: np.ndarray,
        hypotheses: int | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        threshold: float | None = None,
        order: Order = "bgr",
        presence_threshold: float | None = None,
    ) -> Result:
        """Segment one frame (H, W, 3) on the server; settings as :class:`lsdseg.Segmenter`.

        Raises:
            ValueError / TypeError: an invalid setting or frame (checked before sending).
            ServerError: the server failed, vanished or did not answer in time.
        """
        from lsdseg.imageio import to_rgb8

        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
        if image.ndim == 4:
            raise ValueError("the server takes one frame per call; call once per frame")
        if order not in ("bgr", "rgb"):
            raise ValueError(f"order={order!r} must be 'bgr' or 'rgb'")
        SamplerConfig(  # the ranges, checked here so a bad value never reaches a shared batch
            steps=1 if steps is None else steps,
            eta=0.0 if eta is None else eta,
            hypotheses=1 if hypotheses is None else hypotheses,
            threshold=0.5 if threshold is None else threshold,
        )
        if seed is not None and not 0 <= seed < 2**63:
            raise ValueError(f"seed={seed} must be between 0 and 2**63 - 1")
        frame = to_rgb8(image, "frame")  # channel order kept
        if order == "rgb":
            frame = frame[..., ::-1]
        frame = np.ascontiguousarray(frame)[None]  # (1, H, W, 3) BGR
        given = {"hypotheses": hypotheses, "steps": steps, "seed": seed, "eta": eta}
        given["threshold"] = threshold
        given["presence_threshold"] = presence_threshold
        params = {k: v for k, v in given.items() if v is not None}

        t0 = time.perf_counter()
        inp = self._lib.InferInput(INPUT, list(frame.shape), "UINT8")
        inp.set_data_from_numpy(frame)
        requested = [self._lib.InferRequestedOutput(n) for n in self.outputs]
        answer = self._call(
            "a frame",
            self._client.infer,
            self.model,
            [inp],
            outputs=requested,
            parameters=params,
        )
        out = {n: answer.as_numpy(n) for n in self.outputs}
        total = (time.perf_counter() - t0) * 1e3
        return self._result(out, hypotheses, seed, total)

    @staticmethod
    def _result(
        out: dict[str, np.ndarray],
        hypotheses: int | None,
        seed: int | None,
        total_ms: float,
    ) -> Result:
        """A Result from the outputs received; maps not asked for are zero-size."""
        empty = np.zeros((0, 0), np.float32)
        maps = {n: out[n][0] for n in out}  # drop the batch dimension
        hyp = maps.get("hypotheses")
        if hyp is None:
            hyp = np.zeros((hypotheses or 0, 0, 0), np.float32)
        mean = maps.get("mean", empty)
        timings = {"total": total_ms}  # the round trip; "server": the server's model call
        if "compute_ms" in maps:
            timings["server"] = float(maps["compute_ms"][0])
        return Result(
            mask=maps["mask"].astype(bool) if "mask" in maps else np.zeros((0, 0), bool),
            mean=mean,
            std=maps.get("std", empty),
            entropy=maps.get("entropy", empty),
            mutual_info=maps.get("mutual_info", empty),
            hypotheses=hyp,
            agreement=float(maps["agreement"][0]) if "agreement" in maps else float("nan"),
            unsure=float(maps["unsure"][0]) if "unsure" in maps else float("nan"),
            score=float(maps["score"][0]) if "score" in maps else float("nan"),
            present=bool(maps["present"][0]) if "present" in maps else True,
            threshold=float(maps["threshold"][0]) if "threshold" in maps else float("nan"),
            seed=int(maps["seed"][0]) if "seed" in maps else (-1 if seed is None else seed),
            timings=timings,
        )

    def close(self) -> None:
        """Close this thread's connection (a later call opens a new one)."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None
