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
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from lsdseg import backends
from lsdseg.cli.errors import UserError
from lsdseg.cli.main import STOP_SIGNALS
from lsdseg.cli.options import (
    add_backend_option,
    add_speed_options,
    check_graph_eta,
    check_speed_options,
)
from lsdseg.cli.segment_cmd import speed_label

if TYPE_CHECKING:
    from types import FrameType

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
    add_speed_options(p)
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


# a process of its own that stops the servers of a `lsdseg serve` that was killed (SIGKILL
# leaves no chance to stop them, and tritonserver's death signal does not reliably end it)
_WATCHDOG = """
import os, signal, sys, time
parent, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
def named(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"tritonserver" in f.read()
    except OSError:
        return False
while os.getppid() == parent and any(alive(p) for p in pids):
    time.sleep(0.5)
left = [p for p in pids if alive(p) and named(p)]
for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
    for p in left:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    end = time.monotonic() + wait
    while time.monotonic() < end and any(alive(p) for p in left):
        time.sleep(0.2)
"""


# PyTriton's model (run by Triton's Python backend, from a copy of pytriton/proxy/model.py)
# raises the error of a request as an exception: Triton answers HTTP 500 with its traceback.
# Answered as an error response instead: HTTP 400 for a refusal, 500 for an internal error,
# the one line of cli.server.client_message either way.
_IF_ERROR = (
    b"                if triton_responses_or_error is not None and "
    b"isinstance(triton_responses_or_error, Exception):\n"
)
_RAISES = _IF_ERROR + b"                    raise triton_responses_or_error\n"
# an error before the request reached lsdseg (PyTriton could not read its tensors)
_EXCEPT = (
    b"        except Exception:\n"
    b"            msg = traceback.format_exc()\n"
    b'            raise pb_utils.TritonModelException(f"Model execute error: {msg}") from None'
)
_EXCEPT_ANSWERS = (
    b"        except Exception as e:\n"
    b"            LOGGER.debug(traceback.format_exc())\n"
    b"            message = (str(e).strip().splitlines() or [type(e).__name__])[0]\n"
    b"            error = pb_utils.TritonError(f'the request cannot be read: {message}', "
    b"pb_utils.TritonError.INVALID_ARG)\n"
    b"            return [pb_utils.InferenceResponse(error=error) for _ in triton_requests]"
)
_ANSWERS = _IF_ERROR + (
    b"                    message = str(triton_responses_or_error)\n"
    b"                    code = (pb_utils.TritonError.INTERNAL if message.startswith("
    b"'internal error') else pb_utils.TritonError.INVALID_ARG)\n"
    b"                    return [pb_utils.InferenceResponse(error=pb_utils.TritonError("
    b"message, code)) for _ in triton_requests]\n"
)


def answer_errors_in_one_line() -> bool:
    """Make the refusals of ``lsdseg serve`` HTTP 400 (gRPC INVALID_ARGUMENT) answers of one
    line: :class:`~lsdseg.cli.server.ClientErrors` formats them, and the model file PyTriton
    deploys answers them instead of raising. False when this PyTriton's model file differs
    from the one this was written for (0.7): refusals then stay HTTP 500, still one line."""
    import pytriton.proxy.inference as handler
    from pytriton.models.model import Model

    from lsdseg.cli.server import ClientErrors

    handler.traceback = ClientErrors()
    source = (Path(handler.__file__).parent / "model.py").read_bytes()
    if _RAISES not in source or _EXCEPT not in source:
        return False
    patched = source.replace(_RAISES, _ANSWERS).replace(_EXCEPT, _EXCEPT_ANSWERS)
    files = Model.get_proxy_model_files
    generate = Model.generate_model

    def get_proxy_model_files(self: Model) -> dict[str, bytes]:
        found = files(self)
        return {k: patched if k.endswith("/model.py") else v for k, v in found.items()}

    def generate_model(self: Model, model_repository: Path) -> None:
        generate(self, model_repository)
        for path in Path(model_repository).glob("*/*/model.py"):
            path.write_bytes(patched)

    Model.get_proxy_model_files = get_proxy_model_files  # type: ignore[method-assign]
    Model.generate_model = generate_model  # type: ignore[method-assign]
    return True


def child_pids(name: str) -> list[int]:
    """The PIDs of this process's children whose command is ``name`` (from /proc)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        fields = text[text.rfind(")") + 2 :].split()
        if comm == name and len(fields) > 1 and int(fields[1]) == me:
            found.append(int(stat.parent.name))
    return found


def watch_children(name: str) -> subprocess.Popen | None:
    """Tie the life of this process's ``name`` children to this process: a watchdog of its
    own session stops them (SIGTERM, then SIGKILL after 10 s) once this process is gone, however
    it ended (a SIGKILL too). None when there are no such children (or no /proc)."""
    pids = child_pids(name)
    if not pids:
        return None
    cmd = [sys.executable, "-c", _WATCHDOG, str(os.getpid()), *map(str, pids)]
    return subprocess.Popen(
        cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )


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


def run(args: argparse.Namespace) -> int:
    from lsdseg.cli.options import device_option
    from lsdseg.segmenter import load

    check_options(args)
    device = device_option(args.device)
    backend = backends.resolve_backend(args.backend, device)
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

    if not answer_errors_in_one_line():
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
    config = TritonConfig(
        log_file=log_file,
        http_address=args.host,
        http_port=args.http_port,
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        metrics_address=args.host,
        metrics_port=args.metrics_port,
    )
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
            watch_children("tritonserver")
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
