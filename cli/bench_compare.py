"""``lsdseg bench --compare``: latency of two weights alternated round by round in one process.

Benchmarks run one after the other drift on a shared machine (up to 35% between runs on the VMs
here), so the cost of a change is measured by alternating the two models: each round times A
then B (B then A on odd rounds), and the medians over rounds are compared
(:func:`lsdseg.compare.interleaved_ms`). Timed per model: its image encoder (the torch module,
once per frame in every backend) and whole Segmenter calls on one synthetic frame at the larger
of the two input sizes (each Segmenter resizes it to its own).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsdseg.cli.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from lsdseg.segmenter import Segmenter

ROUNDS, REPEATS, HYPOTHESES, STEPS = 30, 5, "8", "1,default"  # the defaults with --compare
ENCODER = "image encoder (torch)"


def add_options(p: argparse.ArgumentParser) -> None:
    """``--compare`` and ``--rounds``."""
    g = p.add_argument_group("comparing two weights (--compare)")
    g.add_argument(
        "--compare",
        metavar="WEIGHTS",
        help="time --weights (A) against these (B), alternated round by round in one process, "
        "on one backend (default torch): image encoder and Segmenter calls, medians of each "
        f"(--hypotheses default {HYPOTHESES}, --steps default {STEPS}: 1 and each checkpoint's "
        f"own, --repeats default {REPEATS} calls per round); FOLDER:ema: the EMA of a run's last/",
    )
    g.add_argument(
        "--rounds", type=int, help=f"with --compare: rounds of A and B (default {ROUNDS})"
    )


def check_not_compare(args: argparse.Namespace) -> None:
    """``--rounds`` without ``--compare``: refused."""
    if args.rounds is not None:
        raise UserError("--rounds is an option of --compare: add --compare WEIGHTS, or drop it")


def _steps(text: str) -> list[int | None]:
    """``1,default`` -> [1, None] (None: each checkpoint's own steps)."""
    from lsdseg.cli.bench_cmd import parse_settings

    parts = [p.strip() for p in text.split(",") if p.strip()]
    values: list[int | None] = [None] if "default" in parts else []
    given = ",".join(p for p in parts if p != "default")
    return (parse_settings(given, "steps") if given else []) + values


def _single(args: argparse.Namespace, device: torch.device) -> tuple[str, str, bool]:
    """The one (backend, precision, graph) --compare times, checked it can run here."""
    from lsdseg.cli.bench_cmd import GRAPH_MODES, parse_precisions, pick_backends, plan_rows

    backend = args.backend or "torch"
    if backend in ("all", "none") or "," in backend:
        raise UserError(
            f"--backend {backend} with --compare: it times one backend; give one name, e.g. "
            "--backend torch or --backend onnx"
        )
    precisions, graphs = parse_precisions(args), GRAPH_MODES[args.cuda_graph]
    if len(precisions) > 1 or len(graphs) > 1:
        raise UserError("--compare times one precision and one --cuda-graph mode: give one each")
    names, _ = pick_backends(backend, device)
    return plan_rows(names, precisions, graphs, device, False, {}, args.half)[0]


def run(args: argparse.Namespace) -> int:
    """Time ``--weights`` against ``--compare``; print the medians (and write ``--json``)."""
    import torch

    from lsdseg.cli.bench_cmd import _write_json, machine_info, parse_settings
    from lsdseg.cli.compare_cmd import load_weights_option, same_weights
    from lsdseg.cli.options import device_option
    from lsdseg.cli.runs import check_writable
    from lsdseg.compare import interleaved_ms

    if args.server:
        raise UserError("--server with --compare: time the server on its own, without --compare")
    rounds = ROUNDS if args.rounds is None else args.rounds
    repeats = REPEATS if args.repeats is None else args.repeats
    for flag, value, low in (("--rounds", rounds, 1), ("--repeats", repeats, 1)):
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    if args.warmup < 0:
        raise UserError(f"--warmup {args.warmup}: must be at least 0")
    if same_weights(args.weights, args.compare):
        raise UserError(
            f"--weights {args.weights} and --compare {args.compare} are the same weights: "
            "give two different checkpoints"
        )
    if args.json:
        check_writable(args.json, "--json", folder=False)
    ks = parse_settings(args.hypotheses or HYPOTHESES, "hypotheses")
    steps = _steps(args.steps or STEPS)
    device = device_option(args.device)
    backend, precision, graph = _single(args, device)
    segs = [
        load_weights_option(spec, flag, device, backend, graph, precision)
        for flag, spec in (("--weights", args.weights), ("--compare", args.compare))
    ]
    calls = _calls(segs, ks, steps, args.seed, device)
    with torch.inference_mode():
        medians = interleaved_ms(calls, rounds, repeats, args.warmup)
    label = backend + ("" if precision == "fp32" else f" {precision}")
    label += " + CUDA graph" if graph else ""
    print(
        f"{torch.get_num_threads()} threads, {rounds} rounds x {repeats} calls, "
        f"Segmenter backend {label} (image encoder: torch), device {device}"
    )
    rows = []
    for name in calls[0]:
        a, b = medians[0][name], medians[1][name]
        rows.append({"call": name, "a_ms": a, "b_ms": b, "b_over_a": b / a if a else None})
        print(
            f"{name}: {a:.1f} ms ({args.weights}) vs {b:.1f} ms ({args.compare}), B/A {b / a:.2f}"
        )
    if None in steps:
        own = ", ".join(f"{n} {s.config.sampler.steps}" for n, s in zip("AB", segs, strict=True))
        print(f"default steps: each checkpoint's own ({own})")
    sizes = " and ".join(str(s.config.image_size) for s in segs)
    size = max(s.config.image_size for s in segs)
    print(f"image sizes S: {sizes}; Segmenter frames: {size}x{size} uint8")
    if args.json:
        payload = {
            "machine": machine_info(device),
            "weights": args.weights,
            "compare": args.compare,
            "backend": backend,
            "precision": precision,
            "cuda_graph": graph,
            "rounds": rounds,
            "repeats": repeats,
            "warmup": args.warmup,
            "results": rows,
        }
        _write_json(Path(args.json), payload)
        print(f"wrote {args.json}")
    return 0


def _calls(
    segs: list[Segmenter],
    ks: list[int],
    steps: list[int | None],
    seed: int,
    device: torch.device,
) -> list[dict[str, Callable[[], Any]]]:
    """Per model, the calls to time by name: the encoder, then each (K, steps) Segmenter call."""
    import numpy as np
    import torch

    size = max(s.config.image_size for s in segs)
    frame = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    gen = torch.Generator().manual_seed(seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    calls = []
    for seg in segs:
        s = seg.config.image_size
        x = torch.randn(1, 3, s, s, generator=gen).to(seg.device)  # (1, 3, S, S)

        def encode(m: Any = seg.model, x: torch.Tensor = x) -> None:
            m.encode_image(x)
            sync()

        own: dict[str, Callable[[], Any]] = {ENCODER: encode}
        for n in steps:
            for k in ks:
                what = f"{n} step{'s' if n != 1 else ''}" if n else "default steps"
                own[f"Segmenter call, K = {k}, {what}"] = lambda g=seg, k=k, n=n: g(
                    frame, hypotheses=k, steps=n, seed=seed
                )
        calls.append(own)
    return calls
