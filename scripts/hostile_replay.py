"""Replay the worst cases of the hostile-input sweep against the installed ``lsdseg``.

Each case runs ``lsdseg`` in a subprocess on inputs made here, on the fly, in a temporary
folder (decompression bombs included: nothing of them is committed), and checks what a user
should see: the expected exit status, at most one line on stderr and never a traceback, no
input overwritten, and a bounded peak memory. The table it prints is where the next sweep
starts; the exit status is 1 when a case fails.

    python scripts/hostile_replay.py                 # every case
    python scripts/hostile_replay.py --only bomb     # the cases whose name contains "bomb"
    python scripts/hostile_replay.py --list

The cases use a tiny random checkpoint made here (milliseconds per frame), never the bundled
weights, so the whole replay takes about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

MAX_RSS_MB = 1500  # a case that refuses its input must not have read it into memory


class Case(NamedTuple):
    name: str
    make: Callable[[Path, str], list[str]]  # (folder, weights) -> lsdseg arguments
    code: int = 1  # expected exit status
    expect: str = ""  # a fragment stderr must hold
    lines: int | None = 1  # lines on stderr when it fails (None: any number)
    check: Callable[[Path], str] | None = None  # a further check: "" when it holds


# ----------------------------------------------------------------------------- inputs


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_bomb(path: Path, side: int, colour: int = 0, depth: int = 8) -> Path:
    """A real PNG of ``side`` x ``side`` zeros (grey or RGBA16): kilobytes that decode to GBs.
    The rows are compressed as a stream, never held whole."""
    channels = {0: 1, 6: 4}[colour]
    row = b"\x00" * (1 + side * channels * depth // 8)  # filter byte + the row
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(side)]
    data = b"".join(parts) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0)
    sig = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(sig + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


def tiff_bomb(path: Path, side: int = 40000, tile: int = 1024) -> Path:
    """A tiled, zlib-compressed TIFF of ``side`` x ``side`` zeros, written tile by tile."""
    import numpy as np
    import tifffile

    zero = np.zeros((tile, tile), np.uint8)
    n = math.ceil(side / tile) ** 2  # tiles
    tifffile.imwrite(
        path,
        (zero for _ in range(n)),
        shape=(side, side),
        dtype=np.uint8,
        tile=(tile, tile),
        compression="zlib",
    )
    return path


def sparse_png(path: Path, size: int = 3 << 30) -> Path:
    """A PNG signature, then a hole: ``size`` bytes on paper, none on disk."""
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(size)
    return path


def frames(folder: Path, names: list[bytes], shape: tuple[int, int] = (48, 64)) -> Path:
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        ok, buf = cv2.imencode(".png", np.full((*shape, 3), 40 + 30 * i, np.uint8))
        assert ok
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(buf.tobytes())
    return folder


def dataset(root: Path, n: int = 4) -> Path:
    frames(root / "images", [f"{i}.png".encode() for i in range(n)])
    frames(root / "masks", [f"{i}.png".encode() for i in range(n)])
    return root


def tiny_checkpoint(folder: Path) -> str:
    from lsdseg.checkpoint import save_checkpoint
    from lsdseg.config import ImageAEConfig, MaskVAEConfig, ModelConfig, SamplerConfig, UNetConfig
    from lsdseg.model import LatentSegmenter

    cfg = ModelConfig(
        image_size=32,
        image_ae=ImageAEConfig(channels=(8, 8, 8), context_channels=(8,), latent_channels=4),
        mask_vae=MaskVAEConfig(encoder_channels=(8, 8, 8), decoder_channels=(8,)),
        unet=UNetConfig(channels=(8, 16), attention_levels=(), head_dim=8, time_embed_dim=16),
        sampler=SamplerConfig(steps=1, hypotheses=2),
    )
    return str(save_checkpoint(LatentSegmenter(cfg), folder / "tiny"))


def edited_checkpoint(weights: str, folder: Path, **model: object) -> str:
    import shutil

    out = folder / "edited"
    shutil.copytree(weights, out)
    meta = json.loads((out / "config.json").read_text())
    meta["model"].update(model)
    (out / "config.json").write_text(json.dumps(meta))  # json writes Infinity as is
    return str(out)


# ----------------------------------------------------------------------------- cases


def _video_over_itself(d: Path, w: str) -> list[str]:
    import cv2
    import numpy as np

    clip = d / "R" / "exp" / "clip.mp4"
    clip.parent.mkdir(parents=True)
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(30):
        vw.write(np.full((48, 64, 3), 5 * i, np.uint8))
    vw.release()
    CASES_STATE["clip"] = clip.read_bytes()
    return ["segment", str(clip), "--weights", w, "--project", str(d / "R"), "--exist-ok"]


def _bomb_in_data(d: Path, w: str) -> list[str]:
    data = dataset(d / "data")
    png_bomb(data / "images" / "9.png", 30000)
    return ["evaluate", "--data", str(data), "--weights", w, "--project", str(d / "runs")]


CASES_STATE: dict[str, bytes] = {}  # what a case's check compares with

CASES = [
    Case(
        "bomb-png-30000-grey",
        lambda d, w: ["segment", str(png_bomb(d / "g.png", 30000)), "--weights", w],
        expect="decompression bombs",
    ),
    Case(
        "bomb-png-16000-rgba16",
        lambda d, w: ["segment", str(png_bomb(d / "r.png", 16000, 6, 16)), "--weights", w],
        expect="decompression bombs",
    ),
    Case(
        "bomb-tiff-40000-tiled",
        lambda d, w: ["segment", str(tiff_bomb(d / "t.tif")), "--weights", w],
        expect="decompression bombs",
    ),
    Case(
        "bomb-sparse-3gb-png",
        lambda d, w: ["segment", str(sparse_png(d / "s.png")), "--weights", w],
        expect="larger than an image within the pixel limit",
    ),
    Case(
        "bomb-in-evaluate-data",
        _bomb_in_data,
        expect="decompression bombs",
        lines=None,  # the bomb is named and skipped, and the run fails at its end
    ),
    Case(
        "output-over-input-video",
        _video_over_itself,
        expect="holds the input",
        check=lambda d: (
            ""
            if (d / "R/exp/clip.mp4").read_bytes() == CASES_STATE["clip"]
            else "the input video was overwritten"
        ),
    ),
    Case(
        "output-over-input-frames",
        lambda d, w: [
            "segment",
            str(frames(d / "R" / "frames", [b"0.png", b"1.png"])),
            "--weights",
            w,
            "--project",
            str(d / "R"),
            "--name",
            "frames",
            "--exist-ok",
        ],
        expect="holds the input",
        check=lambda d: (
            ""
            if sorted(os.listdir(d / "R/frames")) == ["0.png", "1.png"]
            else "the input folder changed"
        ),
    ),
    Case(
        "names-not-utf8-and-formulas",
        lambda d, w: [
            "segment",
            str(frames(d / "in", [b"a.png", b"b\xff.png", b'=HYPERLINK("x","y").png'])),
            "--weights",
            w,
            "--project",
            str(d / "runs"),
        ],
        code=0,
        check=lambda d: (
            ""
            if "\n=" not in (d / "runs/exp/records.csv").read_text()
            and len((d / "runs/exp/records.csv").read_text().splitlines()) == 4
            else "records.csv holds a formula cell or misses a row"
        ),
    ),
    Case(
        "imgsz-1000000",
        lambda d, w: (
            ["segment", str(frames(d / "i", [b"a.png"])), "--weights", w, "--imgsz", "1000000"]
        ),
        expect="--imgsz 1000000 must be at most",
    ),
    Case(
        "latent-scale-infinity",
        lambda d, w: (
            [
                "segment",
                str(frames(d / "i", [b"a.png"])),
                "--weights",
                edited_checkpoint(w, d, latent_scale=float("inf")),
            ]
        ),
        expect="latent_scale=inf",
    ),
    Case(
        "num-res-blocks-100000",
        lambda d, w: (
            [
                "segment",
                str(frames(d / "i", [b"a.png"])),
                "--weights",
                edited_checkpoint(w, d, unet={"channels": [8, 16], "num_res_blocks": 100000}),
            ]
        ),
        expect="num_res_blocks=100000",
    ),
    Case(
        "resamples-2e9",
        lambda d, w: (
            [
                "evaluate",
                "--data",
                str(dataset(d / "data")),
                "--weights",
                w,
                "--compare",
                w,
                "--resamples",
                "2000000000",
                "--project",
                str(d / "runs"),
            ]
        ),
        expect="--resamples 2000000000 must be between",
    ),
    Case(
        "seeds-1e8",
        lambda d, w: (
            [
                "evaluate",
                "--data",
                str(dataset(d / "data")),
                "--weights",
                w,
                "--compare",
                w,
                "--seeds",
                "100000000",
                "--project",
                str(d / "runs"),
            ]
        ),
        expect="--seeds 100000000 must be between",
    ),
    Case(
        "timeout-inf",
        lambda d, w: ["segment", "rtsp://127.0.0.1:9/x", "--weights", w, "--timeout", "inf"],
        expect="--timeout inf must be between",
    ),
    Case(
        "device-meta",
        lambda d, w: (
            ["segment", str(frames(d / "i", [b"a.png"])), "--weights", w, "--device", "meta"]
        ),
        expect="lsdseg runs on cpu or cuda",
    ),
    Case(
        "val-steps-5000",
        lambda d, w: (
            [
                "train",
                "--data",
                str(dataset(d / "data")),
                "--out",
                str(d / "run"),
                "--val-steps",
                "5000",
            ]
        ),
        expect="--val-steps 5000 must be between 1 and 1000",
    ),
    Case(
        "groups-comma",
        lambda d, w: (
            [
                "evaluate",
                "--data",
                str(dataset(d / "data")),
                "--weights",
                w,
                "--groups",
                ",",
                "--project",
                str(d / "runs"),
            ]
        ),
        expect="names no group",
    ),
]


# ----------------------------------------------------------------------------- running


def run_case(case: Case, weights: str, timeout: float) -> tuple[bool, str, float, float]:
    """(passed, why, seconds, peak RSS in MB of the lsdseg process)."""
    with tempfile.TemporaryDirectory(prefix=f"lsdseg-{case.name}-") as tmp:
        folder = Path(tmp)
        argv = case.make(folder, weights)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "lsdseg.cli.main", *argv]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return False, f"still running after {timeout:.0f} s", timeout, 0.0
        seconds = time.monotonic() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss = peak / 1024 if peak > before else 0.0  # MB; 0: below an earlier case's peak
        err = done.stderr.strip()
        problems = []
        if done.returncode != case.code:
            problems.append(f"exit {done.returncode}, expected {case.code}")
        if "Traceback" in err:
            problems.append("a traceback")
        if case.code != 0 and case.lines is not None and len(err.splitlines()) != case.lines:
            problems.append(f"{len(err.splitlines())} lines on stderr")
        if case.expect and case.expect not in err:
            problems.append(f"stderr lacks {case.expect!r}")
        if rss > MAX_RSS_MB:
            problems.append(f"peak memory {rss:.0f} MB")
        if case.check is not None:
            why = case.check(folder)
            if why:
                problems.append(why)
        last = err.splitlines()[-1] if err else ""
        return not problems, "; ".join(problems) or last[:110], seconds, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.only in c.name]
    if args.list or not cases:
        print("\n".join(c.name for c in CASES))
        return 0 if cases or args.list else 1
    failed = 0
    with tempfile.TemporaryDirectory(prefix="lsdseg-replay-") as tmp:
        weights = tiny_checkpoint(Path(tmp))
        for case in cases:
            ok, why, seconds, rss = run_case(case, weights, args.timeout)
            failed += not ok
            mem = f"{rss:5.0f} MB" if rss else "      -"
            print(f"{'ok  ' if ok else 'FAIL'} {case.name:30s} {seconds:5.1f} s {mem}  {why}")
    print(f"{len(cases) - failed} of {len(cases)} cases hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
