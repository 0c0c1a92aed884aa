"""``lsdseg export``: export a checkpoint to ONNX or TensorRT engines.

    lsdseg export --onnx [--weights default|PATH] [--steps N] [--imgsz S] [--half] [--out DIR]
    lsdseg export --trt [--half] [--workspace GB] [--hypotheses-range 1,8,16]
                        [--batch-range 1,1,4] [--trtexec [--run]]
    lsdseg export --triton-repo DIR [--onnx|--trt] [--triton-max-batch B] [--triton-instances N]

Files go to ``--out`` (default ``lsdseg-export``), named ``<checkpoint>-s<steps>-<S>px-<precision>``
with ``.onnx``, ``.engine`` and ``.engine.json`` (the engine's sidecar). Every file is written
under a temporary name and renamed into place, so a failure never leaves a partial file.
``--triton-repo DIR`` also lays the ONNX graph (default) or the engine out as a model
repository for the stock Triton server (:mod:`lsdseg.export.triton_repo`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lsdseg.cli.errors import UserError
from lsdseg.cli.main import suggest
from lsdseg.cli.options import sampler_config
from lsdseg.cli.runs import check_writable

FORMATS = ("onnx", "trt")
# names other tools give these formats (Ultralytics' engine, the runtimes' own names)
FORMAT_ALIASES = {"engine": "trt", "tensorrt": "trt", "plan": "trt", "onnxruntime": "onnx"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, TensorRT engines or a Triton model repository",
        description="Export one ONNX graph with the DDIM steps unrolled (inputs image, noise; "
        "outputs mean, std, hypotheses, score; batch and K dynamic), and build TensorRT engines "
        "from it.",
    )
    what = p.add_argument_group("what to export")
    what.add_argument("--onnx", action="store_true", help="the ONNX graph")
    what.add_argument(
        "--trt", action="store_true", help="a TensorRT engine (built from the fp32 ONNX graph)"
    )
    what.add_argument(
        "--format",
        action="append",
        default=[],
        metavar="NAME",
        help=f"the same by name ({', '.join(FORMATS)}); repeatable",
    )
    m = p.add_argument_group("model")
    m.add_argument("--weights", default="default", help="'default', 'untrained' or a folder")
    m.add_argument("--steps", type=int, help="DDIM steps to unroll (default: the checkpoint's)")
    m.add_argument("--imgsz", type=int, help="input size S (default: the checkpoint's)")
    m.add_argument(
        "--eta",
        type=float,
        help="must be 0: the graph is deterministic DDIM (eta > 0 needs per-step noise)",
    )
    m.add_argument(
        "--half",
        action="store_true",
        help="FP16: an FP16 ONNX graph (float32 inputs/outputs); with --trt, an FP16 engine",
    )
    p.add_argument(
        "--out",
        default="lsdseg-export",
        metavar="DIR",
        help="output folder (default lsdseg-export)",
    )
    t = p.add_argument_group("TensorRT")
    t.add_argument(
        "--workspace",
        type=float,
        default=4.0,
        metavar="GB",
        help="builder workspace memory, GiB (default 4)",
    )
    t.add_argument(
        "--hypotheses-range",
        default="1,8,16",
        metavar="MIN,OPT,MAX",
        help="K range of the optimisation profile (default 1,8,16)",
    )
    t.add_argument(
        "--batch-range",
        default="1,1,4",
        metavar="MIN,OPT,MAX",
        help="batch range of the optimisation profile (default 1,1,4)",
    )
    t.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:N or auto: the GPU engines are built on (TensorRT needs CUDA)",
    )
    t.add_argument(
        "--timing-cache",
        metavar="PATH",
        help="timing cache file reused across builds (default: in the lsdseg cache folder; "
        "with --trtexec, timing.cache in --out)",
    )
    t.add_argument(
        "--trtexec",
        action="store_true",
        help="print the equivalent trtexec command (for building on a Jetson) instead",
    )
    t.add_argument("--run", action="store_true", help="with --trtexec: also run it")
    r = p.add_argument_group("Triton model repository (for the stock Triton server)")
    r.add_argument(
        "--triton-repo",
        metavar="DIR",
        help="also write DIR/lsdseg/config.pbtxt and DIR/lsdseg/1/model.onnx (default, "
        "onnxruntime_onnx) or, with --trt, model.plan (tensorrt_plan)",
    )
    r.add_argument(
        "--triton-max-batch",
        type=int,
        metavar="B",
        help="max_batch_size with dynamic batching (default 8; with --trt, the top of "
        "--batch-range)",
    )
    r.add_argument(
        "--triton-instances", type=int, default=1, metavar="N", help="model instances (default 1)"
    )
    r.add_argument(
        "--triton-kind",
        choices=("gpu", "cpu"),
        default="gpu",
        help="where the instances run (default gpu; cpu only for ONNX)",
    )
    p.set_defaults(func=run)


def pick_formats(args: argparse.Namespace) -> list[str]:
    """The formats asked for by flag or by name, in a fixed order."""
    wanted = {name for name in FORMATS if getattr(args, name, False)}
    if args.triton_repo and not wanted and not args.format:
        wanted.add("onnx")  # a repository serves the ONNX graph unless --trt asks otherwise
    for name in args.format:
        if name not in FORMATS:
            close = suggest(name, FORMATS, FORMAT_ALIASES)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise UserError(
                f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}{hint}"
            )
        wanted.add(name)
    if not wanted:
        raise UserError("nothing to export: add --onnx or --trt (or --format NAME)")
    return [name for name in FORMATS if name in wanted]


def check_args(args: argparse.Namespace, formats: list[str]) -> dict[str, Any]:
    """Validate the options before anything slow runs; returns the parsed TensorRT options."""
    from lsdseg.export.trt import Profile, parse_range

    sampler_config(steps=args.steps)  # a bad --steps fails here, before the export
    if args.imgsz is not None and args.imgsz <= 0:
        raise UserError(f"--imgsz {args.imgsz} must be > 0")
    if args.eta is not None and args.eta != 0:
        raise UserError(
            f"--eta {args.eta}: the exported graph runs deterministic DDIM (eta = 0) and has "
            "no input for the per-step noise eta > 0 needs; drop --eta, or sample with eta > 0 "
            "on the torch backend"
        )
    check_writable(args.out, "--out")
    if (args.trtexec or args.run) and "trt" not in formats:
        raise UserError("--trtexec and --run go with --trt")
    if args.run and not args.trtexec:
        raise UserError("--run runs the trtexec command: add --trtexec")
    if not 0 < args.workspace <= 1024:  # NaN and infinity too
        raise UserError(f"--workspace {args.workspace} must be between 0 and 1024 (GiB)")
    try:
        profile = Profile(
            batch=parse_range(args.batch_range, "--batch-range"),
            hypotheses=parse_range(args.hypotheses_range, "--hypotheses-range"),
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.triton_repo:
        check_triton_args(args, formats, profile.batch[2])
    return {"profile": profile}


def check_triton_args(args: argparse.Namespace, formats: list[str], engine_batch: int) -> None:
    """--triton-repo: one model, and batch settings the model can serve."""
    if len(formats) != 1:
        raise UserError("--triton-repo serves one model: give --onnx or --trt, not both")
    if args.triton_max_batch is None:
        args.triton_max_batch = engine_batch if formats == ["trt"] else 8
    if args.triton_max_batch < 0:
        raise UserError(f"--triton-max-batch {args.triton_max_batch} must be >= 0 (0: none)")
    if formats == ["trt"] and args.triton_max_batch > engine_batch:
        raise UserError(
            f"--triton-max-batch {args.triton_max_batch} is above the engine's largest batch "
            f"({engine_batch}, from --batch-range); raise --batch-range or lower it"
        )
    if args.triton_instances < 1:
        raise UserError(f"--triton-instances {args.triton_instances} must be >= 1")
    if formats == ["trt"] and args.triton_kind != "gpu":
        raise UserError("--triton-kind cpu: a TensorRT engine runs on a GPU")
    if formats == ["trt"] and args.trtexec and not args.run:
        raise UserError("--triton-repo with --trtexec needs the engine: add --run")
    check_writable(args.triton_repo, "--triton-repo")


def write_repo(args: argparse.Namespace, model_file: Path, onnx_file: Path) -> None:
    """Lay ``model_file`` out in the --triton-repo folder, with the I/O of ``onnx_file``."""
    from lsdseg.export.triton_repo import graph_io, write_triton_repo

    model_dir = write_triton_repo(
        args.triton_repo,
        model_file,
        graph_io(onnx_file),
        max_batch_size=args.triton_max_batch,
        instances=args.triton_instances,
        kind=args.triton_kind,
    )
    print(f"wrote Triton model repository {args.triton_repo}: {model_dir / 'config.pbtxt'}")


def _describe(path: Path) -> str:
    return f"{path} ({path.stat().st_size / 2**20:.1f} MB)"


def engine_device(device: str) -> int:
    """The index of the CUDA device ``--device`` names, for building TensorRT engines.

    Raises:
        UserError: ``--device`` is not a CUDA device (``auto`` without a GPU included).
        ValueError / RuntimeError: not a device, or CUDA asked for without one (as elsewhere).
    """
    from lsdseg.cli.options import device_option

    dev = device_option(device)
    if dev.type != "cuda":
        raise UserError(
            f"--device {device}: TensorRT engines are built on a CUDA GPU"
            + (", and torch sees none here" if device == "auto" else "; use cuda or cuda:N")
            + " (or --trtexec to print the build command for a machine that has one)"
        )
    return 0 if dev.index is None else dev.index


def require_onnx(half: bool) -> None:
    """Every export writes an ONNX graph first: fail before the work without its packages.

    Raises:
        UserError: onnx or onnxscript (torch's exporter), or with ``half`` onnxruntime (the
            FP16 conversion), is not installed; the message names the extra.
    """
    import importlib.util

    needed = ["onnx", "onnxscript", *(["onnxruntime"] if half else [])]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"ONNX export needs {' and '.join(missing)}, not installed here: "
            'pip install "lsdseg[onnx]"'
        )


def run(args: argparse.Namespace) -> int:
    from lsdseg.export.cache import cache_dir
    from lsdseg.export.onnx import convert_fp16, export_onnx, resolve_weights
    from lsdseg.export.trt import (
        build_engine,
        format_command,
        gpu_info,
        require_tensorrt,
        run_trtexec,
        trtexec_command,
    )

    formats = pick_formats(args)
    options = check_args(args, formats)
    require_onnx(args.half)
    building = "trt" in formats and not args.trtexec
    gpu = 0  # the CUDA device index engines are built on
    if building:  # fail before the slow export when the engine cannot be built here
        require_tensorrt()
        gpu = engine_device(args.device)
        gpu_info(gpu)
    model, name, digest = resolve_weights(args.weights)
    steps = model.cfg.sampler.steps if args.steps is None else args.steps
    size = model.cfg.image_size if args.imgsz is None else args.imgsz
    from lsdseg.imagesize import check_image_size

    try:
        check_image_size(model.cfg, size)
    except ValueError as e:
        raise UserError(f"--imgsz {size}: {e}") from None
    out = Path(args.out)
    stem = f"{name}-s{steps}-{size}px"
    fp32 = out / f"{stem}-fp32.onnx"
    if "trt" in formats or not args.half:
        export_onnx(
            model, fp32, steps=steps, image_size=size, eta=args.eta, checkpoint_digest=digest
        )
        print(f"wrote {_describe(fp32)}: fp32, {steps} DDIM steps, {size}x{size}")
    if "onnx" in formats and args.half:
        fp16 = out / f"{stem}-fp16.onnx"
        if fp32.is_file():
            convert_fp16(fp32, fp16)
        else:
            export_onnx(
                model, fp16, steps=steps, image_size=size, half=True, eta=args.eta,
                checkpoint_digest=digest,
            )  # fmt: skip
        print(f"wrote {_describe(fp16)}: fp16 (float32 inputs and outputs)")
    if "trt" not in formats:
        if args.triton_repo:
            graph = fp16 if args.half else fp32
            write_repo(args, graph, graph)
        return 0
    precision = "fp16" if args.half else "fp32"
    engine = out / f"{stem}-{precision}.engine"
    if args.timing_cache:
        timing = Path(args.timing_cache)
    else:  # beside the engine for a command run elsewhere; in the cache for builds here
        timing = out / "timing.cache" if args.trtexec else cache_dir() / "trt" / "timing.cache"
    settings = {"half": args.half, "workspace_gb": args.workspace, "profile": options["profile"]}
    if args.trtexec:
        command = trtexec_command(fp32, engine, timing_cache=timing, **settings)
        print(format_command(command))
        if args.run:
            timing.parent.mkdir(parents=True, exist_ok=True)
            run_trtexec(command, engine, fp32, precision, options["profile"])
            print(f"wrote {_describe(engine)} and its sidecar {engine.name}.json")
            if args.triton_repo:
                write_repo(args, engine, fp32)
        return 0
    build_engine(fp32, engine, timing_cache=timing, device=gpu, **settings)
    print(f"wrote {_describe(engine)} ({precision}) and its sidecar {engine.name}.json")
    if args.triton_repo:
        write_repo(args, engine, fp32)
    return 0
