"""What a ``lsdseg segment`` run writes and records: its outputs and its summary's settings.

:func:`open_outputs` opens the writer thread with the run's outputs (the overlay video or one
image per input, ``records.csv`` / ``records.jsonl``, and with ``--save-masks`` the PNGs in
``masks/``); :func:`describe` gives the ``settings`` and ``outputs`` that ``summary.json``
records, resolved to what each frame ran with. :mod:`lsdseg.cli.segment_cmd` runs the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lsdseg.cli.overlay import OverlayOptions
    from lsdseg.cli.pipeline import SampleOptions
    from lsdseg.cli.remote import RemoteSegmenter
    from lsdseg.cli.sources import Source
    from lsdseg.cli.writer import WriterThread
    from lsdseg.segmenter import Segmenter


def open_outputs(
    args: argparse.Namespace, source: Source, overlay: OverlayOptions, out_dir: Path
) -> WriterThread:
    """The writer thread with its outputs: a video (or images), records, optional masks."""
    from lsdseg.cli.display import make_show
    from lsdseg.cli.overlay import MEASURE_RANGE, output_size, render
    from lsdseg.cli.records import RecordWriter
    from lsdseg.cli.writer import ImagesOut, MasksOut, VideoOut, WriterThread

    video = images = masks = None
    if source.kind == "images":
        images = ImagesOut(out_dir)
    else:
        size = output_size(*source.first_shape, overlay.style, args.hypotheses)
        video = VideoOut(out_dir / f"{source.name}.mp4", source.fps / args.vid_stride, size)
    if args.save_masks:
        masks = MasksOut(out_dir / "masks", MEASURE_RANGE[overlay.measure])
    return WriterThread(
        lambda frame, view: render(frame, view, overlay),
        RecordWriter(out_dir),
        video=video,
        images=images,
        masks=masks,
        show=make_show() if args.show else None,
    )


def describe(
    args: argparse.Namespace,
    segmenter: Segmenter | RemoteSegmenter,
    device: torch.device | str,
    overlay: OverlayOptions,
    sample: SampleOptions,
    realtime: bool,
    writer: WriterThread,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings and outputs recorded in summary.json."""
    from lsdseg.cli.overlay import MEASURE_LABEL, MEASURE_RANGE
    from lsdseg.cli.remote import RemoteSegmenter
    from lsdseg.cli.writer import FOURCC

    video = writer.video
    # the settings each frame ran with: unset options resolve to the checkpoint's sampler
    # defaults; a server resolves them itself, so there only what was asked is known
    sampler: dict[str, Any] = {
        "hypotheses": sample.hypotheses,
        "steps": sample.steps,
        "eta": sample.eta,
        "threshold": sample.threshold,
        "presence_threshold": sample.presence_threshold,
    }
    if not isinstance(segmenter, RemoteSegmenter):
        resolved = segmenter.settings(**sampler)
        sampler = {k: getattr(resolved, k) for k in sampler}
    settings = {
        "weights": None if args.server else str(args.weights),
        "backend": segmenter.backend,
        "device": str(device),
        # None: a server's model, which runs with the options `lsdseg serve` was given
        "precision": None if isinstance(segmenter, RemoteSegmenter) else segmenter.precision,
        "cuda_graph": None if isinstance(segmenter, RemoteSegmenter) else segmenter.cuda_graph,
        **sampler,
        "seed": sample.seed,
        "temporal_t": sample.temporal_t,
        "presence_filter": None
        if sample.presence_filter is None
        else {
            "window": sample.presence_filter.window,
            "on": sample.presence_filter.on,
            "off": sample.presence_filter.off,
        },
        "imgsz": None if isinstance(segmenter, RemoteSegmenter) else segmenter.image_size,
        "server": str(segmenter.address) if isinstance(segmenter, RemoteSegmenter) else None,
        "vid_stride": args.vid_stride,
        "realtime": realtime,
        "overlay": overlay.style,
        "unsure_threshold": args.unsure_threshold,
        "uncertainty": f"{overlay.measure}: {MEASURE_LABEL[overlay.measure]} "
        f"(range 0-{MEASURE_RANGE[overlay.measure]:g})",
    }
    outputs = {
        "records_csv": "records.csv",
        "records_jsonl": "records.jsonl",
        "video": video.path.name if video else None,
        "codec": FOURCC if video else None,
        "video_fps": video.fps if video else None,
        "masks": "masks" if writer.masks else None,
    }
    return settings, outputs
