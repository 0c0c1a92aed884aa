"""``lsdseg serve``: serve the model on Triton Inference Server through PyTriton.

PyTriton ships the ``tritonserver`` binary and runs our inference callable
(:class:`lsdseg.cli.server.SegmentModel`) in this process behind Triton's Python backend: Triton
does the HTTP / gRPC endpoints, health, readiness, metrics and dynamic batching. PyTriton needs
numpy<2, so it lives in its own environment (``make install-serve``; see docs/serving.md).

Triton's Python-backend stub loads ``libpython`` dynamically and may pick the system's copy
instead of this interpreter's (a different patch release fails with ``'_thread.RLock' object
has no attribute '_recursion_count'``): the server inherits this process's environment, so
:func:`use_own_libpython` puts this interpreter's library folder first on ``LD_LIBRARY_PATH``
before the server starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from lsdseg import backends
from lsdseg.cli import serve_guard
from lsdseg.cli.errors import UserError
from lsdseg.cli.main import STOP_SIGNALS
from lsdseg.cli.options import (
    add_backend_option,
    add_speed_options,
    check_graph_eta,
    check_speed_options,
    precision_of,
)
from lsdseg.cli.segment_cmd import speed_label

if TYPE_CHECKING:
    from types import FrameType

    import torch
    from pytriton.triton import Triton

    from lsdseg.cli.server import SegmentModel

INSTALL = (
    'pip install "lsdseg[serve]" -c constraints/serve.txt in a venv of its own '
    "(PyTriton needs numpy<2): make install-serve"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model on Triton Inference Server (PyTriton): HTTP, gRPC, metrics",
        description="Start Triton Inference Server (through PyTriton) serving model 'lsdseg': one "
        "uint8 BGR frame (1, H, W, 3) per request plus optional parameters hypotheses, steps, "
        "seed, eta, threshold; outputs mask, mean, std, entropy, mutual_info, hypotheses, "
        "agreement, unsure, seed and compute_ms at the frame's size. Concurrent requests are "
        "batched dynamically. Clients: lsdseg segment SOURCE --server HOST:PORT, or any Triton "
        "client. Ctrl-C stops.",
    )
    p.add_argument("--weights", default="default", help="'default', 'untrained' or a folder")
    add_backend_option(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_speed_options(p, summary=False)  # serve writes no summary.json
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)",
    )
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)"
    )
    p.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="model instances, each with its own copy of the model (default 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="T",
        help="torch CPU threads, shared by the instances (default 0: torch's choice, one per "
        "core); on a CPU, --instances 2 --threads 1 can serve more frames per second than one "
        "instance on every core",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        metavar="B",
        help="most frames the dynamic batcher hands to one call (default 8)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=0,
        metavar="U",
        help="microseconds a request may wait for others to batch with (default 0: requests "
        "that queue while the model is busy are batched anyway; a few hundred can pay on a GPU)",
    )
    p.set_defaults(func=run)


def check_options(args: argparse.Namespace) -> None:
    """Range checks that need no model, so a typo fails before anything loads."""
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port}
    ports["--metrics-port"] = args.metrics_port
    for option, port in ports.items():
        if not 1 <= port <= 65535:
            raise UserError(f"{option} {port} must be between 1 and 65535")
    if len(set(ports.values())) < len(ports):
        raise UserError(f"the ports must differ: {ports}")
    if args.instances < 1:
        raise UserError(f"--instances {args.instances} must be >= 1")
    if args.threads < 0:
        raise UserError(f"--threads {args.threads} must be >= 1, or 0 for torch's default")
    if not 1 <= args.max_batch <= 1024:
        raise UserError(f"--max-batch {args.max_batch} must be between 1 and 1024")
    if args.max_queue_delay_us < 0:
        raise UserError(f"--max-queue-delay-us {args.max_queue_delay_us} must be >= 0")


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Fail early, naming the option, when a port is taken (tritonserver would just exit)."""
    for option, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise UserError(
                    f"{option} {port}: cannot listen on {host}:{port} ({e.strerror}); "
                    "is another server running? pick a free port"
                ) from None


def use_own_libpython() -> str | None:
    """Put this interpreter's libpython folder first on LD_LIBRARY_PATH; returns the folder.

    The server and Triton's Python-backend stub inherit ``os.environ``, so this must run
    before the server starts.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not Path(libdir).is_dir():
        return None
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *(p for p in parts if p != libdir)])
    return libdir


def explain_start_failure(error: BaseException, libdir: str | None) -> str:
    """One line saying why the server did not come up, and what to do."""
    text = str(error)
    version = ".".join(map(str, sys.version_info[:3]))
    if "_recursion_count" in text or "libpython" in text:
        return (
            "Triton's Python-backend stub loaded a libpython that is not this interpreter's "
            f"(Python {version}; lsdseg serve put {libdir or 'no library folder'} first on "
            "LD_LIBRARY_PATH). Use a Python built with a shared library (pyenv: "
            "PYTHON_CONFIGURE_OPTS=--enable-shared) or put the folder of its "
            f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so first on LD_LIBRARY_PATH"
        )
    if "AF_UNIX path too long" in text:
        return (
            "PyTriton's workspace path is too long for a Unix socket: set PYTRITON_HOME to a "
            "short folder (e.g. PYTRITON_HOME=/tmp/pytriton)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    cause = [line for line in lines[1:] if re.match(r"^\w+(Error|Exception): ", line)]
    why = f" ({cause[-1][:200]})" if cause else ""
    return f"Triton Inference Server did not start: {first[:200]}{why}"


def _bind(triton: Triton, models: list[SegmentModel], max_batch: int, delay_us: int) -> None:
    """Declare model 'lsdseg' with its tensors, batching and one callable per instance."""
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    from lsdseg.cli.server import INPUT, MODEL_NAME, OUTPUTS

    triton.bind(
        model_name=MODEL_NAME,
        infer_func=list(models) if len(models) > 1 else models[0],
        inputs=[Tensor(name=INPUT, dtype=np.uint8, shape=(-1, -1, 3))],
        outputs=[Tensor(name=n, dtype=dt, shape=dims) for n, (dt, dims) in OUTPUTS.items()],
        config=ModelConfig(
            max_batch_size=max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us),
        ),
    )


def server_options(
    args: argparse.Namespace, device: torch.device, log_file: Path | None
) -> dict[str, object]:
    """The TritonConfig of ``lsdseg serve``: its addresses and ports, the server log, and no
    GPU metrics on a CPU device (their NVML start-up printed "Error: Failed to initialize
    NVML" on machines without an NVIDIA driver, before a server that then worked)."""
    options: dict[str, object] = {
        "log_file": log_file,
        "http_address": args.host,
        "http_port": args.http_port,
        "grpc_address": args.host,
        "grpc_port": args.grpc_port,
        "metrics_address": args.host,
        "metrics_port": args.metrics_port,
    }
    if device.type != "cuda":
        options["allow_gpu_metrics"] = False
    return options


def run(args: argparse.Namespace) -> int:
    from lsdseg.cli.options import device_option
    from lsdseg.segmenter import load

    check_options(args)
    device = device_option(args.device)
    wants = backends.needs(0.0, False, False, args.cuda_graph, precision_of(args))
    backend = backends.resolve_backend(args.backend, device, wants)
    precision = check_speed_options(args, device, backend, None)  # before PyTriton is needed
    if importlib.util.find_spec("pytriton") is None:
        raise UserError(f"PyTriton is not installed: {INSTALL}")
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port}
    ports["--metrics-port"] = args.metrics_port
    check_ports_free(args.host, ports)
    libdir = use_own_libpython()

    import numpy as np
    import torch
    from pytriton.triton import Triton, TritonConfig

    from lsdseg.cli.server import SegmentModel

    if not serve_guard.answer_errors_in_one_line():
        logging.getLogger(__name__).info("this PyTriton's refusals are HTTP 500s (one line)")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = []
    for _ in range(args.instances):
        seg = load(args.weights, device, backend, args.cuda_graph, precision)
        # requests may still ask for eta > 0: the graph refuses them one by one
        check_graph_eta(args.cuda_graph, seg.config.sampler.eta)
        blank = np.zeros((64, 64, 3), np.uint8)
        seg(blank, seed=0)  # lazy inits before the first request
        if args.cuda_graph:  # each batch size the batcher can form, at the default settings
            for b in range(2, min(args.max_batch, seg.runner.max_graphs) + 1):
                seg([blank] * b, seed=[0] * b)
        models.append(SegmentModel(seg))
    # the server's own log goes to a file unless -v (then to stdout, as tritonserver does)
    log_file = None if args.verbose else Path(tempfile.mkdtemp(prefix="lsdseg-serve-")) / "log"
    config = TritonConfig(**server_options(args, device, log_file))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    where = f"; server log: {log_file}" if log_file else ""  # kept when something fails
    old = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    triton = Triton(config=config)
    try:
        try:
            _bind(triton, models, args.max_batch, args.max_queue_delay_us)
            triton.run()
            serve_guard.watch_children("tritonserver")
        except Exception as e:
            if os.environ.get("LSDSEG_DEBUG"):
                raise
            raise RuntimeError(explain_start_failure(e, libdir) + where) from None
        host = "127.0.0.1" if args.host == "0.0.0.0" else args.host
        print(
            f"lsdseg serve: model 'lsdseg' ready ({args.weights}, backend {backend}"
            f"{speed_label(models[0].segmenter)}, {device}, "
            f"{args.instances} instance(s), {torch.get_num_threads()} CPU thread(s), "
            f"max batch {args.max_batch}): "
            f"HTTP {host}:{args.http_port}, gRPC {host}:{args.grpc_port}, "
            f"metrics http://{host}:{args.metrics_port}/metrics; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(1.0):
            if not triton.is_alive():
                raise RuntimeError(f"Triton Inference Server stopped unexpectedly{where}")
    finally:
        triton.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if log_file is not None:
        shutil.rmtree(log_file.parent, ignore_errors=True)
    frames = sum(m.frames for m in models)
    calls = sum(m.calls for m in models)
    print(f"lsdseg serve: stopped; {frames} frames in {calls} batched calls", file=sys.stderr)
    return 0
