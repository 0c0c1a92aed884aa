"""``lsdseg bench --server``: throughput and latency of a running ``lsdseg serve``.

N client threads, each with its own connection, send one frame per request back to back (what
N video streams do); the server's dynamic batcher may group their frames. Reported per number
of clients: frames per second over all clients, latency per request (mean, median, p95), and
the serving overhead: each request's round trip minus the model call that served it (the
``compute_ms`` output), i.e. encoding, transport, Triton's queue and PyTriton's hand-over. With
one client that is the price of a server over a local Segmenter; with more it also includes
waiting for the batch in front.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import numpy as np

# what a video client asks for (lsdseg segment's defaults), plus the server's model time
OUTPUTS = ("mask", "mean", "entropy", "agreement", "unsure", "seed", "compute_ms")


@dataclass(frozen=True)
class ServerMeasurement:
    """One (clients, K, steps) configuration timed against a server."""

    server: str
    clients: int
    hypotheses: int
    steps: int
    frame_size: int
    frames: int  # timed requests over all clients
    fps: float  # frames per second over all clients (wall time of the timed phase)
    mean_ms: float  # latency per request
    median_ms: float
    p95_ms: float
    overhead_ms: float  # mean of round trip - the server's model call


def measure_server(
    server: str,
    clients: int,
    hypotheses: int,
    steps: int,
    frame_size: int = 256,
    warmup: int = 2,
    repeats: int = 10,
    seed: int = 0,
    timeout: float = 120.0,
) -> ServerMeasurement:
    """Time ``repeats`` requests per client from ``clients`` concurrent clients.

    Raises:
        ServerError: the server is not reachable or fails a request.
    """
    from lsdseg.cli.remote import RemoteSegmenter

    frame = np.random.default_rng(seed).integers(0, 256, (frame_size, frame_size, 3), np.uint8)
    remote = RemoteSegmenter(server, timeout, OUTPUTS)  # one connection per client thread
    remote.check()
    start = threading.Barrier(clients + 1)
    latency: list[float] = []
    overhead: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            for _ in range(warmup):
                remote(frame, hypotheses=hypotheses, steps=steps, seed=seed + i)
            start.wait()
            for _ in range(repeats):
                r = remote(frame, hypotheses=hypotheses, steps=steps, seed=seed + i)
                with lock:
                    latency.append(r.timings["total"])
                    overhead.append(r.timings["total"] - r.timings["server"])
        except BaseException as e:
            errors.append(e)
            start.abort()
        finally:
            remote.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()  # broken when a client fails in its warm-up: its error is raised below
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    ms = np.asarray(latency)
    return ServerMeasurement(
        server=str(remote.address),
        clients=clients,
        hypotheses=hypotheses,
        steps=steps,
        frame_size=frame_size,
        frames=len(ms),
        fps=float(len(ms) / wall),
        mean_ms=float(ms.mean()),
        median_ms=float(np.median(ms)),
        p95_ms=float(np.percentile(ms, 95)),
        overhead_ms=float(np.mean(overhead)),
    )


def print_table(results: list[ServerMeasurement]) -> None:
    """The server measurements as a table, with the speed-up over one client."""
    from rich.table import Table

    from lsdseg.cli.console import make_console

    table = Table(title="lsdseg bench --server: one frame per request, N concurrent clients")
    for column in ("clients", "K", "steps", "frames/s", "x 1 client", "mean ms", "p95 ms"):
        table.add_column(column, justify="right")
    table.add_column("overhead ms", justify="right")
    single = {(r.hypotheses, r.steps): r.fps for r in results if r.clients == 1}
    for r in results:
        base = single.get((r.hypotheses, r.steps))
        table.add_row(
            str(r.clients),
            str(r.hypotheses),
            str(r.steps),
            f"{r.fps:.2f}",
            "-" if base is None else f"{r.fps / base:.2f}",
            f"{r.mean_ms:.1f}",
            f"{r.p95_ms:.1f}",
            f"{r.overhead_ms:.1f}",
        )
    console = make_console()
    console.print(table)
    console.print(
        "overhead: round trip minus the server's model call (encoding, transport, Triton's "
        "queue); with several clients it includes waiting for the batch in front"
    )
