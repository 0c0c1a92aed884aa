"""``lsdseg segment``: segment a video, images, a webcam or a stream; write overlays and records.

Outputs go to ``runs/segment/exp``, ``exp2``... (``--project``, ``--name``, ``--exist-ok``):
the overlay video ``<source>.mp4`` (mp4v; same frame count as the input, fps = input fps /
--vid-stride) or one ``<image>.png`` per input image, ``records.csv`` and ``records.jsonl`` (one
record per frame, see :mod:`lsdseg.cli.records`), ``summary.json``, and with ``--save-masks``
the mask, confidence and uncertainty PNGs in ``masks/`` (opened and described by
:mod:`lsdseg.cli.segment_outputs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lsdseg import backends
from lsdseg.cli.errors import UserError
from lsdseg.cli.main import EXIT_ERROR, EXIT_SIGNAL
from lsdseg.cli.options import (
    add_backend_option,
    add_max_pixels_option,
    add_speed_options,
    apply_max_pixels,
    check_graph_eta,
    check_speed_options,
    flag_message,
    precision_of,
    sampler_config,
    seed_arg,
)
from lsdseg.cli.runs import add_run_folder_options, check_apart, check_writable, next_run_dir

if TYPE_CHECKING:
    import torch

    from lsdseg.cli.overlay import OverlayOptions
    from lsdseg.cli.remote import RemoteSegmenter
    from lsdseg.segmenter import Segmenter


# the longest --timeout / --server-timeout: a day (OpenCV takes milliseconds as a 32-bit int)
MAX_TIMEOUT_S = 86400


def add_parser(sub: argparse._SubParsersAction) -> None:
    from lsdseg.cli.overlay import CMAPS, MEASURES, STYLES

    p = sub.add_parser(
        "segment",
        help="segment a video, image(s), webcam or stream; write overlays and per-frame records",
        description="Segment every frame with K mask hypotheses; write an overlay video (or "
        "images), per-frame records (CSV + JSON lines) and a summary. Ctrl-C stops cleanly. "
        "An image of a folder or glob that cannot be decoded is named, skipped and counted "
        "(summary.json: skipped, skipped_files), and the run exits with status 1 once the "
        "others are written.",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="video file, image, folder or glob of images, webcam index (0), or "
        "rtsp:// / http(s):// stream URL",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--weights",
        default="default",
        help="'default' (bundled), 'untrained' (random, for trying the pipeline) or "
        "a checkpoint folder",
    )
    add_backend_option(m)
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    add_speed_options(m)
    m.add_argument(
        "--hypotheses",
        "-k",
        type=int,
        default=8,
        metavar="K",
        help="mask hypotheses per frame (default 8)",
    )
    m.add_argument("--steps", type=int, help="DDIM steps (default: the checkpoint's)")
    m.add_argument("--eta", type=float, help="DDIM eta in [0, 1] (default: the checkpoint's)")
    m.add_argument(
        "--seed",
        type=seed_arg(per_frame=True),
        default=0,
        help="seed of the initial noise, the same for every frame (steady video); "
        "-1 draws a new one per frame",
    )
    m.add_argument(
        "--temporal",
        action="store_true",
        help="warm-start each frame from the previous frame's latents noised to "
        "--temporal-t, running only the DDIM steps below it (fewer denoiser calls)",
    )
    m.add_argument(
        "--temporal-t",
        type=int,
        default=499,
        metavar="T",
        help="timestep the previous latents are noised to with --temporal, below the "
        "checkpoint's diffusion timesteps (default 499)",
    )
    m.add_argument(
        "--threshold", type=float, help="mask = mean > threshold (default: the checkpoint's)"
    )
    m.add_argument(
        "--presence-threshold",
        type=float,
        metavar="P",
        help="a frame holds a polyp when its presence score reaches P; below it no mask is drawn "
        "(default: the checkpoint's; 0 draws a mask on every frame)",
    )
    m.add_argument(
        "--presence-filter",
        choices=["auto", "on", "off"],
        default="auto",
        help="filter the frame-level decision over time: a polyp shows once 3 of the last 5 "
        "frames hold one and stays until fewer than 2 do (auto: on for videos and streams, off "
        "for still images; default %(default)s)",
    )
    m.add_argument(
        "--imgsz",
        type=int,
        help="model input size S (default: the checkpoint's; "
        f"{backends.spoken(backends.able('imgsz'))} backends only)",
    )
    m.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="run inference on a Triton server started with `lsdseg serve` (HOST:PORT or "
        "http://HOST:PORT: HTTP; grpc://HOST:PORT: gRPC); the model options "
        "--weights/--backend/--device/--imgsz are then the server's",
    )
    m.add_argument(
        "--server-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a server may take per frame before the run stops (default 30)",
    )
    s = p.add_argument_group("source")
    s.add_argument(
        "--vid-stride",
        type=int,
        default=1,
        metavar="N",
        help="process every N-th video frame (output fps = input fps / N)",
    )
    s.add_argument(
        "--max-frames", type=int, default=0, metavar="N", help="stop after N frames (0: all)"
    )
    s.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop frames that arrive while the model is busy (default: on for "
        "webcams and streams; on a file, replays it at its own fps)",
    )
    s.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds without a frame before a stream counts as stalled (default 10)",
    )
    add_max_pixels_option(s)
    o = p.add_argument_group("output")
    o.add_argument(
        "--overlay",
        choices=STYLES,
        default="mask",
        help="mask: filled mask + contour; uncertainty: heat map where the model is unsure "
        "+ legend; "
        "grid: the K hypotheses beside the mask, as tiles of a quarter of the frame (a wider "
        "output)",
    )
    o.add_argument(
        "--uncertainty",
        choices=MEASURES,
        default="mi",
        help="map shown and measured: mi, the mutual information of the K hypotheses (bits: "
        "where they disagree, the map that finds wrong pixels best on validation), entropy of "
        "the mean (bits) or std of the K probabilities (default: %(default)s)",
    )
    o.add_argument("--cmap", choices=CMAPS, default="turbo", help="heat map colours")
    o.add_argument(
        "--alpha",
        type=float,
        default=0.4,
        help="overlay opacity in [0, 1]: of the mask fill, and of the heat map where the "
        "uncertainty is high (it fades out below half its range and is transparent below "
        "a tenth); 0 draws the mask's contour only",
    )
    o.add_argument("--no-hud", action="store_true", help="no heads-up line on the frames")
    o.add_argument(
        "--unsure-threshold",
        type=float,
        metavar="U",
        help="flag frames whose unsure score (mean entropy over the region some hypotheses "
        "call polyp, in [0, 1]) exceeds U: 'UNSURE' in the heads-up line, unsure_flag in the "
        "records, unsure_frames in summary.json (default: no flag; the score is always "
        "recorded). Good masks score 0.1-0.4 (median 0.16 on the bundled weights' validation "
        "images); 0.35 is a start: it flagged 2 of 126 good frames and 2 of 5 failed ones there "
        "(docs/outputs.md)",
    )
    o.add_argument(
        "--save-masks",
        action="store_true",
        help="also write per frame in masks/: the mask (0/255), the confidence (mean x 255, "
        "8-bit) and the uncertainty (16-bit, 1 bit or a std of 0.5 = 65535: the same scale in "
        "every frame) as PNGs, and both maps losslessly as float32 in <frame>_maps.npz",
    )
    o.add_argument(
        "--show",
        action="store_true",
        help="show the overlay in a window (needs a GUI OpenCV and a display)",
    )
    add_run_folder_options(o, "runs/segment")
    p.set_defaults(func=run)


def check_options(args: argparse.Namespace) -> None:
    """Range checks that need no model, so a typo fails before anything loads (the sampler
    settings by SamplerConfig's own checks; --temporal-t once the checkpoint's schedule is
    known)."""
    sampler_config(
        hypotheses=args.hypotheses,
        steps=args.steps,
        eta=args.eta,
        threshold=args.threshold,
        presence_threshold=args.presence_threshold,
    )
    checks = [
        (args.vid_stride >= 1, f"--vid-stride {args.vid_stride} must be >= 1"),
        (args.max_frames >= 0, f"--max-frames {args.max_frames} must be >= 0 (0: all frames)"),
        (
            0 < args.timeout <= MAX_TIMEOUT_S,  # NaN and infinity too
            f"--timeout {args.timeout} must be between 0 and {MAX_TIMEOUT_S} seconds",
        ),
        (
            0 < args.server_timeout <= MAX_TIMEOUT_S,
            f"--server-timeout {args.server_timeout} must be between 0 and {MAX_TIMEOUT_S} seconds",
        ),
        (0 <= args.alpha <= 1, f"--alpha {args.alpha} must be between 0 and 1"),
        (
            args.unsure_threshold is None or 0 <= args.unsure_threshold < 1,
            f"--unsure-threshold {args.unsure_threshold} must be in [0, 1): the unsure score "
            "is a mean entropy in bits",
        ),
        (args.imgsz is None or args.imgsz > 0, f"--imgsz {args.imgsz} must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    check_writable(args.project, "--project")
    if args.server:
        local = {"--weights": "default", "--backend": "auto", "--device": "auto", "--imgsz": None}
        local.update({"--cuda-graph": False, "--half": False, "--precision": None})
        for option, default in local.items():
            if getattr(args, option[2:].replace("-", "_")) != default:
                raise UserError(
                    f"{option} sets up a local model; with --server the server's model runs "
                    f"(pass {option} to `lsdseg serve`), so drop {option} or --server"
                )
        if args.temporal:
            raise UserError(
                "--temporal needs the previous frame's latents, which a server does not keep "
                "between requests; drop --temporal or --server"
            )


def connect(args: argparse.Namespace, overlay: OverlayOptions) -> RemoteSegmenter:
    """A client for --server that asks only for the outputs this run uses."""
    from lsdseg.cli.remote import RemoteSegmenter

    measure = {"entropy": "entropy", "std": "std", "mi": "mutual_info"}[overlay.measure]
    outputs = ["mask", "mean", measure, "agreement", "unsure", "seed"]
    if overlay.style == "grid":
        outputs.append("hypotheses")
    try:
        remote = RemoteSegmenter(args.server, args.server_timeout, outputs)
    except ValueError as e:
        raise UserError(str(e)) from None
    remote.check()
    return remote


def speed_label(segmenter: Segmenter | RemoteSegmenter) -> str:
    """``, fp16, CUDA graph`` for what a local segmenter runs beyond fp32 eager; else ``""``."""
    precision = getattr(segmenter, "precision", "fp32")
    label = "" if precision == "fp32" else f", {precision}"
    return label + (", CUDA graph" if getattr(segmenter, "cuda_graph", False) else "")


def load_local(
    args: argparse.Namespace, device: torch.device, backend: str, precision: str
) -> Segmenter:
    """The local segmenter, at ``--imgsz`` when given (an argument of the segmenter; the
    model's config keeps its training size).

    Raises:
        UserError: an --imgsz the model or the backend cannot run at, in one line naming it.
    """
    import logging

    from lsdseg.segmenter import load

    try:
        segmenter = load(
            args.weights,
            device,
            backend,
            cuda_graph=args.cuda_graph,
            precision=precision,
            image_size=args.imgsz,
        )
    except ValueError as e:
        if str(e).startswith("image_size="):  # the core's check of the size (check_image_size)
            raise UserError(flag_message(e, "image_size", "--imgsz")) from None
        raise
    trained = segmenter.config.image_size
    if segmenter.image_size != trained:
        logging.getLogger(__name__).warning(
            "running at --imgsz %d; the model was trained at %d", segmenter.image_size, trained
        )
    return segmenter


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from lsdseg.cli.console import make_console
    from lsdseg.cli.display import ProgressDisplay, check_gui
    from lsdseg.cli.options import device_option
    from lsdseg.cli.overlay import OverlayOptions
    from lsdseg.cli.pipeline import ONE_SAMPLE_NOTICE, SampleOptions, StopFlag, run_pipeline
    from lsdseg.cli.segment_outputs import describe, open_outputs
    from lsdseg.cli.sources import open_source
    from lsdseg.decision import PresenceFilter

    check_options(args)
    apply_max_pixels(args)
    overlay = OverlayOptions(
        style=args.overlay,
        cmap=args.cmap,
        alpha=args.alpha,
        measure=args.uncertainty,
        hud=not args.no_hud,
    )
    sample = SampleOptions(
        hypotheses=args.hypotheses,
        steps=args.steps,
        eta=args.eta,
        threshold=args.threshold,
        seed=None if args.seed < 0 else args.seed,
        temporal_t=args.temporal_t if args.temporal else None,
        presence_threshold=args.presence_threshold,
    )
    if args.show:
        check_gui()
    console = make_console(stderr=True, soft_wrap=True)  # summary lines stay whole in logs

    def on_skip(path: str, reason: str) -> None:  # an undecodable image of many: as evaluate
        print(f"lsdseg segment: warning: skipped {path}: {reason}", file=sys.stderr)

    source = open_source(args.source, args.vid_stride, args.max_frames, args.timeout, on_skip)
    segmenter: Segmenter | RemoteSegmenter
    try:
        inputs = [Path(args.source), *getattr(source, "paths", [])]
        check_apart(args.project, args.name, args.exist_ok, [p for p in inputs if p.exists()])
        if args.server:
            segmenter = connect(args, overlay)
            device = str(segmenter.address)
        else:
            device = device_option(args.device)
            wants = backends.needs(
                args.eta, args.temporal, args.imgsz is not None, args.cuda_graph, precision_of(args)
            )
            backend = backends.resolve_backend(args.backend, device, wants)
            if args.temporal and not backends.get(backend).warm_start:
                raise UserError(
                    f"--temporal needs the previous frame's latents, which the {backend} "
                    "backend does not return (its graph starts from pure noise); use "
                    f"--backend {backends.spoken(backends.able('warm_start'), 'or')}"
                )
            try:  # before the load, at which an export backend exports
                backends.refuse_call(backend, args.eta or 0.0, False)
            except ValueError as e:
                raise UserError(flag_message(e, "eta")) from None
            precision = check_speed_options(args, device, backend, args.eta)
            segmenter = load_local(args, device, backend, precision)
            check_graph_eta(args.cuda_graph, segmenter.settings(eta=args.eta).eta)
            try:  # the range is the checkpoint's schedule (diffusion.timesteps)
                segmenter.check_warm_timestep(args.temporal_t)
            except ValueError as e:
                raise UserError(flag_message(e, "warm_timestep")) from None
        realtime = source.live if args.realtime is None else args.realtime
        realtime = realtime and source.kind != "images"
        if args.presence_filter == "on" or (
            args.presence_filter == "auto" and source.kind != "images"
        ):
            sample = dataclasses.replace(sample, presence_filter=PresenceFilter())
        console.print(
            f"lsdseg segment: {source.label} ({source.kind}{', real time' if realtime else ''}), "
            f"K={args.hypotheses}, backend {segmenter.backend}{speed_label(segmenter)}, "
            f"{'server' if args.server else 'device'} {device}"
        )
        if args.hypotheses < 2:
            console.print(f"lsdseg segment: note: {ONE_SAMPLE_NOTICE}")
        with console.status("warming up the model"):  # lazy inits and JIT kernels, untimed
            blank = np.zeros((*source.first_shape, 3), np.uint8)
            settings = {
                "hypotheses": sample.hypotheses,
                "steps": sample.steps,
                "eta": sample.eta,
                "seed": 0,
                "threshold": sample.threshold,
                "presence_threshold": sample.presence_threshold,
            }
            if not args.server:  # as run_pipeline calls it: the K maps at the model's size
                settings["hypotheses_size"] = "model"
            first = segmenter(blank, **settings)
            if sample.temporal_t is not None and args.cuda_graph:  # the warm-start graph too
                segmenter(blank, **settings, warm_start=first, warm_timestep=sample.temporal_t)
            del first, blank  # a large frame's maps are not held for the whole run
        out_dir = next_run_dir(args.project, args.name, args.exist_ok)
        writer = open_outputs(args, source, overlay, out_dir)
        with ProgressDisplay(console, source) as on_frame, StopFlag() as stop:
            summary = run_pipeline(
                segmenter,
                source,
                writer,
                overlay,
                sample,
                realtime,
                args.timeout,
                stop,
                on_frame,
                keep_mean=args.save_masks,
                unsure_threshold=args.unsure_threshold,
            )
    finally:
        source.close()
    summary.settings, summary.outputs = describe(
        args, segmenter, device, overlay, sample, realtime, writer
    )
    summary.outputs["folder"] = str(out_dir)
    try:
        summary.save(out_dir / "summary.json")
    except UserError as e:  # a full disk: say what else failed first, on the same line
        if summary.stopped_by == "error":
            raise UserError(f"{summary.warning}; and {e}") from None
        raise
    console.print(f"{summary.line(still=source.kind == 'images')}; results in {out_dir}")
    if source.kind == "video" and source.warning:  # a truncated or corrupt file
        print(f"lsdseg segment: error: {source.warning}", file=sys.stderr)
        return EXIT_ERROR
    # a server that failed, a source that stopped sending without ending (a stall, not the
    # end of a stream), or an output that could not be written: the frames before it are
    # written, and the run failed
    if summary.stopped_by in ("server", "stall", "error"):
        print(f"lsdseg segment: error: {summary.warning}", file=sys.stderr)
        return EXIT_ERROR
    if summary.warning:
        console.print(f"lsdseg segment: warning: {summary.warning}")
    if summary.skipped and not summary.stopped_by:  # every other image is written; the run failed
        raise UserError(
            f"{summary.skipped} of {summary.skipped + summary.frames} images could not be "
            f"decoded and were skipped (named above); the results of the other "
            f"{summary.frames} are in {out_dir}"
        )
    return EXIT_SIGNAL.get(summary.stopped_by or "", 0)
