"""``lsdseg bench``: latency, fps and peak memory per backend, K and steps on this machine.

The numbers are for one full :class:`~lsdseg.Segmenter` call on one frame at the model's input
size (preprocessing, sampling, aggregation and conversion to numpy included), the call a video
pipeline makes per frame. ``--cuda-graph`` and ``--precision`` add rows with the frame replayed
as one CUDA graph and in half precision (torch and triton on CUDA; see :mod:`lsdseg.accel`); the
graph of each shape is captured in the untimed warm-up calls. The pytest-benchmark suites in
``benchmarks/`` are the regression checks; this command is for a user's own machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lsdseg import backends
from lsdseg.cli import bench_compare
from lsdseg.cli.bench_memory import PeakMemory
from lsdseg.cli.errors import UserError
from lsdseg.cli.options import (
    PRECISIONS,
    SAMPLER_FLAGS,
    graph_backends,
    sampler_config,
    seed_arg,
)
from lsdseg.cli.runs import check_writable
from lsdseg.files import write_text_atomic

if TYPE_CHECKING:
    import torch

    from lsdseg.segmenter import Segmenter

GRAPH_MODES = {"off": [False], "on": [True], "both": [False, True]}  # --cuda-graph: rows


@dataclass(frozen=True)
class Measurement:
    """Latency statistics of one (backend, K, steps) configuration."""

    backend: str
    device: str
    hypotheses: int
    steps: int
    image_size: int
    precision: str  # fp32, or fp16 / bf16 autocast
    cuda_graph: bool  # the frame replayed as one CUDA graph
    calls: int
    mean_ms: float
    median_ms: float
    p95_ms: float
    fps: float  # 1 / mean latency
    peak_memory_mb: float | None  # CUDA: peak allocated; CPU: peak RSS of the process
    memory_kind: str


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure latency, fps and memory per backend, K and steps on this machine",
        description="Time full Segmenter calls (one frame at the model's input size) for each "
        "backend, number of hypotheses K and number of DDIM steps, and print a table. Backends "
        "that cannot run here are listed with the reason. The regression suites with saved "
        "baselines are in benchmarks/ (make bench-check).",
    )
    p.add_argument("--weights", default="default", help="'default', 'untrained' or a folder")
    p.add_argument(
        "--backend",
        help=f"comma-separated backends ({', '.join(backends.names())}, or 'auto': the one "
        "segment, evaluate and serve run by default), 'all' (those usable here; the default) or "
        "'none' (with --server: time only the server)",
    )
    p.add_argument("--hypotheses", help="comma-separated K values (default 1,8)")
    p.add_argument("--steps", help="comma-separated DDIM step counts (default 2,4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--cuda-graph",
        nargs="?",
        const="on",
        default="off",
        choices=tuple(GRAPH_MODES),
        help="time each frame replayed as one CUDA graph (on; the flag alone), eagerly (off), or "
        f"both rows; {graph_backends()} on CUDA",
    )
    p.add_argument(
        "--precision",
        metavar="LIST",
        help="comma-separated precisions of fp32, fp16, bf16; fp16 and bf16 are autocast on "
        f"CUDA, {graph_backends()} (default fp32)",
    )
    p.add_argument("--half", action="store_true", help="shorthand for --precision fp16")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per configuration")
    p.add_argument("--repeats", type=int, help="timed calls per configuration (default 20)")
    p.add_argument(
        "--seed",
        type=seed_arg(),
        default=0,
        help="seed of the synthetic frame and of the initial noise of every call",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    s = p.add_argument_group("server (lsdseg serve)")
    s.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="also time a running `lsdseg serve` (HOST:PORT, http:// or grpc://) with "
        "--clients concurrent clients, one frame per request, beside the local Segmenter",
    )
    s.add_argument(
        "--clients",
        default="1,4,8",
        help="with --server: comma-separated numbers of concurrent clients (default 1,4,8)",
    )
    s.add_argument(
        "--frame-size",
        type=int,
        default=256,
        metavar="N",
        help="with --server: frames are N x N (default 256)",
    )
    bench_compare.add_options(p)
    p.set_defaults(func=run)


def parse_ints(
    text: str, option: str, low: int | None = None, high: int | None = None
) -> list[int]:
    """``"1,8,16"`` -> ``[1, 8, 16]``, each within [low, high] (if given), duplicates dropped."""
    values: list[int] = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise UserError(
                f"{option} {text!r}: expected comma-separated integers, e.g. 1,8"
            ) from None
        if low is not None and high is not None and not low <= value <= high:
            raise UserError(f"{option} {text!r}: {value} must be between {low} and {high}")
        if value not in values:
            values.append(value)
    return values


def parse_settings(text: str, field: str) -> list[int]:
    """``--hypotheses 1,8`` or ``--steps 2,4`` -> the values, each checked by SamplerConfig.

    Raises:
        UserError: ``--steps '0': 0 must be between 1 and 1000``.
    """
    option = SAMPLER_FLAGS[field]
    values = parse_ints(text, option)
    for value in values:
        try:
            sampler_config(**{field: value})
        except UserError as e:
            raise UserError(f"{option} {text!r}: {str(e)[len(option) + 1 :]}") from None
    return values


def parse_precisions(args: argparse.Namespace) -> list[str]:
    """``--precision fp32,fp16`` (or ``--half``) -> ``["fp32", "fp16"]``."""
    if args.half and args.precision not in (None, "fp16"):
        raise UserError(
            f"--half is --precision fp16; give one of --half, --precision {args.precision}"
        )
    values: list[str] = []
    for part in ("fp16" if args.half else args.precision or "fp32").split(","):
        value = part.strip()
        if value not in PRECISIONS:
            raise UserError(
                f"--precision {args.precision!r}: {value!r} is not one of {', '.join(PRECISIONS)}"
            )
        if value not in values:
            values.append(value)
    return values


def plan_rows(
    backends: list[str],
    precisions: list[str],
    graphs: list[bool],
    device: torch.device,
    every: bool,
    skipped: dict[str, str],
    half: bool = False,
) -> list[tuple[str, str, bool]]:
    """The (backend, precision, graph) combinations to time, each checked before any timing.

    With ``every`` (``--backend all``) a backend that cannot take a combination is skipped with
    the reason in ``skipped``; otherwise it is an error, as is a device that cannot (the CPU).
    ``half``: the precision came from ``--half`` (for the messages).
    """
    from lsdseg.accel import check_supported

    rows = []
    for name in backends:
        for precision in precisions:
            for graph in graphs:
                asked = "--half" if half else f"--precision {precision}"
                try:
                    check_supported(device, name, graph, precision, "--cuda-graph", asked)
                except ValueError as e:  # the backend cannot; RuntimeError (the device) goes up
                    if not every:
                        raise UserError(str(e)) from None
                    skipped[row_label(name, precision, graph)] = str(e)
                    continue
                rows.append((name, precision, graph))
    return rows


def row_label(backend: str, precision: str, graph: bool) -> str:
    """``triton fp16 + CUDA graph``; a plain backend name for fp32 without a graph."""
    label = backend if precision == "fp32" else f"{backend} {precision}"
    return label + (" + CUDA graph" if graph else "")


def backend_problem(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can be timed on ``device`` here, else the reason it cannot."""
    if name not in backends.BACKENDS:
        raise UserError(
            f"--backend {name!r}: expected one of {', '.join(backends.choices())} or 'all'"
        )
    return backends.get(name).problem(device, timing=True)


def pick_backends(text: str, device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Backends to time, and those skipped with their reasons (only for ``all``)."""
    if text == "all":
        problems = {name: backend_problem(name, device) for name in backends.names()}
        usable = [name for name, why in problems.items() if why is None]
        return usable, {name: why for name, why in problems.items() if why is not None}
    names = [n.strip() for n in text.split(",") if n.strip()]
    names = [backends.resolve_backend(n, device) if n == backends.AUTO else n for n in names]
    names = list(dict.fromkeys(names))  # auto may name one given too
    for name in names:
        why = backend_problem(name, device)
        if why is not None:
            raise UserError(f"--backend {name}: cannot run here: {why}")
    return names, {}


def measure(
    seg: Segmenter,
    hypotheses: int,
    steps: int,
    warmup: int = 3,
    repeats: int = 20,
    seed: int = 0,
) -> Measurement:
    """Time ``repeats`` calls of ``seg`` on one frame at the model's input size.

    Every call returns numpy arrays, so CUDA work has finished when the timer stops.
    """
    size = seg.config.image_size
    frame = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    memory = PeakMemory(seg.device)
    for _ in range(warmup):
        seg(frame, hypotheses=hypotheses, steps=steps, seed=seed)
    memory.reset()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        seg(frame, hypotheses=hypotheses, steps=steps, seed=seed)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000
    return Measurement(
        backend=seg.backend,
        device=str(seg.device),
        hypotheses=hypotheses,
        steps=steps,
        image_size=size,
        precision=seg.precision,
        cuda_graph=seg.cuda_graph,
        calls=repeats,
        mean_ms=float(ms.mean()),
        median_ms=float(np.median(ms)),
        p95_ms=float(np.percentile(ms, 95)),
        fps=float(1000.0 / ms.mean()),
        peak_memory_mb=memory.peak_mb(),
        memory_kind=memory.kind,
    )


def machine_info(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on."""
    import torch

    from lsdseg.version import __version__

    info: dict[str, object] = {
        "lsdseg": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _table(results: Sequence[Measurement], skipped: dict[str, str], auto: str) -> None:
    from rich.table import Table

    from lsdseg.cli.console import make_console

    # one device per run: named below the table, which keeps to 80 columns
    table = Table(title="lsdseg bench: one Segmenter call per frame")
    left = ("backend", "precision", "graph")
    for column in (*left, "K", "steps", "mean ms", "p95 ms", "fps", "peak MB"):
        table.add_column(column, justify="left" if column in left else "right")
    for r in results:
        peak = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        table.add_row(
            r.backend,
            r.precision,
            "CUDA" if r.cuda_graph else "-",
            str(r.hypotheses),
            str(r.steps),
            f"{r.mean_ms:.1f}",
            f"{r.p95_ms:.1f}",
            f"{r.fps:.1f}",
            peak,
        )
    console = make_console()
    console.print(table)
    if results:
        console.print(
            f"device {results[0].device}; peak MB: {results[0].memory_kind} during the timed calls"
        )
    if any(r.cuda_graph for r in results):
        console.print("graph CUDA: each frame replayed as one CUDA graph")
    for name, why in skipped.items():
        console.print(f"skipped {name}: {why}")
    console.print(f"--backend auto (segment, evaluate and serve's default) runs {auto} here")


def _write_json(path: Path, payload: dict[str, object]) -> None:
    if path.is_dir():
        raise UserError(f"--json {path}: is a folder; give a file name such as bench.json")
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _payload(
    args: argparse.Namespace,
    device: torch.device,
    results: Sequence[Measurement],
    skipped: dict[str, str],
    served: Sequence[Any],
) -> dict[str, object]:
    """What --json holds."""
    return {
        "machine": machine_info(device),
        "weights": args.weights,
        "results": [asdict(r) for r in results],
        "skipped": skipped,
        "server": [asdict(r) for r in served],
    }


def run(args: argparse.Namespace) -> int:
    import lsdseg
    from lsdseg.cli.options import device_option

    if args.compare is not None:
        return bench_compare.run(args)
    bench_compare.check_not_compare(args)
    args.backend = args.backend or "all"
    args.repeats = 20 if args.repeats is None else args.repeats
    for option, value in (("--warmup", args.warmup), ("--repeats", args.repeats)):
        if value < (0 if option == "--warmup" else 1):
            raise UserError(
                f"{option} {value}: must be at least {0 if option == '--warmup' else 1}"
            )
    if args.json:  # before anything is timed
        check_writable(args.json, "--json", folder=False)
    ks = parse_settings(args.hypotheses or "1,8", "hypotheses")
    steps = parse_settings(args.steps or "2,4", "steps")
    clients = parse_ints(args.clients, "--clients", 1, 256)
    if args.server:
        from lsdseg.cli.remote import parse_server

        parse_server(args.server)  # a bad address fails before anything is timed
        if not 16 <= args.frame_size <= 4096:
            raise UserError(f"--frame-size {args.frame_size} must be between 16 and 4096")
    elif args.backend == "none":
        raise UserError("--backend none times nothing without --server")
    precisions = parse_precisions(args)
    graphs = GRAPH_MODES[args.cuda_graph]
    device = device_option(args.device)
    chosen, skipped = ([], {}) if args.backend == "none" else pick_backends(args.backend, device)
    every = args.backend == "all"
    rows = plan_rows(chosen, precisions, graphs, device, every, skipped, args.half)

    results: list[Measurement] = []
    for name, precision, graph in rows:
        try:
            seg = lsdseg.load(args.weights, device, name, cuda_graph=graph, precision=precision)
        except (ImportError, RuntimeError, ValueError) as e:
            if args.backend != "all" or name == "torch":
                raise
            skipped[row_label(name, precision, graph)] = str(e)  # e.g. a plugin's import
            continue
        for n in steps:
            for k in ks:
                results.append(measure(seg, k, n, args.warmup, args.repeats, args.seed))
                if args.json:  # as it goes: a run cut short keeps the rows it timed
                    _write_json(Path(args.json), _payload(args, device, results, skipped, []))
    if results or skipped:
        _table(results, skipped, backends.resolve_backend(backends.AUTO, device))
    served = []
    if args.server:
        from lsdseg.cli.bench_server import measure_server, print_table

        for n in steps:
            for k in ks:
                for c in clients:
                    served.append(
                        measure_server(
                            args.server,
                            c,
                            k,
                            n,
                            args.frame_size,
                            args.warmup,
                            args.repeats,
                            args.seed,
                        )
                    )
        print_table(served)
    if args.json:
        _write_json(Path(args.json), _payload(args, device, results, skipped, served))
        print(f"wrote {args.json}")
    return 0
