"""``lsdseg segment`` end to end on small synthetic videos and images, with a tiny model.

Every run goes through ``lsdseg.cli.main.main`` (in-process) or the installed command
(subprocess, for signals), and checks what a user would: the video OpenCV reads back, the
records, the summary, and one clear line on stderr for every bad input.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lsdseg.cli.main import main
from lsdseg.cli.reader import FrameReader, Stalled
from lsdseg.cli.records import COLUMNS
from lsdseg.cli.sources import Frame, Source

H, W, N_FRAMES, FPS = 96, 128, 6, 10.0


@pytest.fixture(autouse=True)
def one_thread():
    """Two torch threads on a busy 2-core machine can be 100x slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def disc_frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    f = np.full((h, w, 3), 70, np.uint8)
    cv2.circle(f, (w // 3 + 6 * i, h // 2), h // 5, (40, 40, 210), -1)
    return f


def write_video(
    path: Path,
    n: int = N_FRAMES,
    fps: float = FPS,
    fourcc: str = "mp4v",
    size: tuple[int, int] = (H, W),
) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
    for i in range(n):
        vw.write(disc_frame(i, *size))
    vw.release()
    return path


def read_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frames decoded, fps, (H, W)), counting frames by decoding them all."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n, shape = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n, shape = n + 1, f.shape[:2]
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return n, fps, shape


def read_rows(folder: Path) -> list[dict]:
    with open(folder / "records.csv", newline="") as f:
        return list(csv.DictReader(f))


def segment(capsys, tiny: str, project: Path, *args: str) -> tuple[int, str]:
    rc = main(["segment", "-k", "3", "--weights", tiny, "--project", str(project), *args])
    return rc, capsys.readouterr().err


@pytest.fixture
def video(tmp_path) -> Path:
    return write_video(tmp_path / "clip.mp4")


def test_video_run_writes_video_records_and_summary(capsys, tiny, tmp_path, video):
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video))
    assert rc == 0, err
    out = tmp_path / "runs" / "exp"
    assert read_video(out / "clip.mp4") == (N_FRAMES, FPS, (H, W))
    rows = read_rows(out)
    assert len(rows) == N_FRAMES and tuple(rows[0]) == COLUMNS
    assert [int(r["frame"]) for r in rows] == list(range(N_FRAMES))
    assert [float(r["timestamp_s"]) for r in rows] == pytest.approx(np.arange(N_FRAMES) / FPS)
    for r in rows:
        assert 0 <= float(r["area_fraction"]) <= 1 and int(r["components"]) >= 0
        assert 0 <= float(r["agreement"]) <= 1 and float(r["latency_ms"]) > 0
        if float(r["area_fraction"]) > 0:
            assert 0 <= float(r["unc_mean"]) <= float(r["unc_max"]) <= 1
    lines = (out / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(N_FRAMES))
    assert set(json.loads(lines[0])) == set(COLUMNS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == N_FRAMES and summary["dropped"] == 0
    assert summary["p95_latency_ms"] >= summary["mean_latency_ms"] * 0.5 > 0
    assert summary["fps"] > 0 and summary["stopped_by"] is None
    assert summary["settings"]["uncertainty"].startswith("mi")
    assert summary["outputs"]["codec"] == "mp4v"
    assert f"{N_FRAMES} frames, 0 dropped" in err


def test_stride_max_frames_and_run_folders(capsys, tiny, tmp_path, video):
    project = tmp_path / "runs"
    rc, _ = segment(capsys, tiny, project, str(video), "--vid-stride", "2")
    assert rc == 0
    assert read_video(project / "exp" / "clip.mp4") == (3, FPS / 2, (H, W))
    assert [int(r["frame"]) for r in read_rows(project / "exp")] == [0, 2, 4]
    rc, _ = segment(capsys, tiny, project, str(video), "--max-frames", "2")
    assert rc == 0 and len(read_rows(project / "exp2")) == 2
    assert read_video(project / "exp2" / "clip.mp4")[0] == 2
    rc, _ = segment(capsys, tiny, project, str(video), "--exist-ok", "--max-frames", "1")
    assert rc == 0 and len(read_rows(project / "exp")) == 1
    assert sorted(p.name for p in project.iterdir()) == ["exp", "exp2"]


@pytest.mark.parametrize("style,width", [("uncertainty", W), ("grid", 2 * W)])  # K = 3: 2 x 2 tiles
def test_overlay_styles_and_masks(capsys, tiny, tmp_path, video, style, width):
    rc, err = segment(
        capsys,
        tiny,
        tmp_path,
        str(video),
        "--overlay",
        style,
        "--save-masks",
        "--cmap",
        "viridis",
        "--uncertainty",
        "std",
    )
    assert rc == 0, err
    assert read_video(tmp_path / "exp" / "clip.mp4") == (N_FRAMES, FPS, (H, width))
    masks = sorted(p.name for p in (tmp_path / "exp" / "masks").iterdir())
    assert len(masks) == 4 * N_FRAMES and masks[:4] == [
        "000000_conf.png",
        "000000_maps.npz",
        "000000_mask.png",
        "000000_unc.png",
    ]
    unc16 = cv2.imread(str(tmp_path / "exp" / "masks" / "000005_unc.png"), cv2.IMREAD_UNCHANGED)
    assert unc16.shape == (H, W) and unc16.dtype == np.uint16
    maps = np.load(tmp_path / "exp" / "masks" / "000005_maps.npz")
    assert maps["uncertainty"].dtype == np.float32 and maps["mean"].shape == (H, W)
    # a fixed scale: a std of 0.5 is 65535 in every frame
    expected = np.round(np.clip(maps["uncertainty"] / 0.5, 0, 1) * 65535).astype(np.uint16)
    assert np.abs(unc16.astype(int) - expected).max() <= 1


def test_odd_sized_frames_are_padded_to_even(tmp_path):
    from lsdseg.cli.writer import VideoOut

    out = VideoOut(tmp_path / "odd.mp4", 12.0, (95, 127))  # MPEG-4 needs even sizes
    for i in range(4):
        out.write(disc_frame(i, 95, 127))
    out.write(disc_frame(0, 40, 50))  # a stream that changed resolution: resized
    out.close()
    assert read_video(tmp_path / "odd.mp4") == (5, 12.0, (96, 128))


def test_imgsz_overrides_model_size(capsys, tiny, tmp_path, video):
    from lsdseg.segmenter import load

    rc, err = segment(capsys, tiny, tmp_path, str(video), "--imgsz", "64", "--max-frames", "2")
    assert rc == 0, err
    assert json.loads((tmp_path / "exp" / "summary.json").read_text())["settings"]["imgsz"] == 64
    # each frame ran as the Python API's segmenter at image_size=64 runs it (tiny is S = 32)
    cap = cv2.VideoCapture(str(video))
    frames = [cap.read()[1] for _ in range(2)]
    cap.release()
    seg = load(tiny, "cpu", image_size=64)
    for row, frame in zip(read_rows(tmp_path / "exp"), frames, strict=True):
        r = seg(frame, hypotheses=3, seed=0)
        assert float(row["agreement"]) == pytest.approx(r.agreement, abs=1e-3)
        assert float(row["unsure"]) == pytest.approx(r.unsure, abs=1e-3)
    assert seg.config.image_size == 32  # the checkpoint's config keeps its size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--imgsz", "40"], "--imgsz 40 must be a multiple of 16"),
        (["--imgsz", "1000000"], "--imgsz 1000000 must be at most 4096"),
        (["--backend", "onnx", "--imgsz", "64"], "--imgsz 64: the onnx backend runs at the"),
    ],
)
def test_an_imgsz_the_model_or_backend_cannot_run_is_one_line(
    capsys, tiny, tmp_path, video, args, message
):
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video), *args)
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1, err
    assert lines[0].startswith(f"lsdseg segment: error: {message}"), err
    assert not (tmp_path / "runs").exists()


def test_image_folder_glob_and_odd_pixel_formats(capsys, tiny, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    colour = disc_frame(0)
    cv2.imwrite(str(folder / "a_colour.png"), colour)
    cv2.imwrite(str(folder / "b_grey.png"), colour[..., 0])  # (H, W)
    cv2.imwrite(
        str(folder / "c_rgba.png"), np.dstack([colour[:60, :80], np.full((60, 80), 255, np.uint8)])
    )
    cv2.imwrite(str(folder / "d_16bit.png"), colour[:50].astype(np.uint16) * 257)
    (folder / "notes.txt").write_text("not an image")
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(folder))
    assert rc == 0, err
    out = tmp_path / "runs" / "exp"
    shapes = {p.name: cv2.imread(str(p)).shape for p in out.glob("*.png")}
    assert shapes == {
        "a_colour.png": (H, W, 3),
        "b_grey.png": (H, W, 3),
        "c_rgba.png": (60, 80, 3),
        "d_16bit.png": (50, W, 3),
    }
    rows = read_rows(out)
    assert [r["source"] for r in rows] == [
        str(folder / "a_colour.png"),
        str(folder / "b_grey.png"),
        str(folder / "c_rgba.png"),
        str(folder / "d_16bit.png"),
    ]
    assert all(r["timestamp_s"] == "" for r in rows)
    # one image, and a glob
    rc, _ = segment(capsys, tiny, tmp_path / "runs", str(folder / "b_grey.png"))
    assert rc == 0 and (tmp_path / "runs" / "exp2" / "b_grey.png").is_file()
    rc, _ = segment(capsys, tiny, tmp_path / "runs", str(folder / "[ab]_*.png"))
    assert rc == 0 and len(read_rows(tmp_path / "runs" / "exp3")) == 2


def test_4k_frame(capsys, tiny, tmp_path):
    cv2.imwrite(str(tmp_path / "uhd.png"), disc_frame(0, 2160, 3840))
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(tmp_path / "uhd.png"))
    assert rc == 0, err
    assert cv2.imread(str(tmp_path / "runs" / "exp" / "uhd.png")).shape == (2160, 3840, 3)


def _bad_inputs(tmp: Path) -> dict[str, list[str]]:
    (tmp / "text.mp4").write_text("this is not a video")
    cv2.VideoWriter(str(tmp / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H)).release()
    data = write_video(tmp / "full.mp4").read_bytes()
    (tmp / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp / "emptydir").mkdir()
    (tmp / "zero.png").touch()
    (tmp / "zerodir").mkdir()
    (tmp / "zerodir" / "zero.png").touch()
    (tmp / "listcfg").mkdir()
    (tmp / "listcfg" / "config.json").write_text("[1, 2]")
    return {
        "config.json is a JSON list": [str(tmp / "full.mp4"), "--weights", str(tmp / "listcfg")],
        "0-byte image": [str(tmp / "zero.png")],
        "0-byte image in a folder": [str(tmp / "zerodir")],
        "missing file": [str(tmp / "nope.mp4")],
        "not a video": [str(tmp / "text.mp4")],
        "zero frames": [str(tmp / "empty.avi")],
        "truncated mp4": [str(tmp / "cut.mp4")],
        "unreachable stream": ["http://127.0.0.1:9/live.mp4", "--timeout", "3"],
        "no such webcam": ["7"],
        "empty folder": [str(tmp / "emptydir")],
        "glob matches nothing": [str(tmp / "*.jpeg")],
        "bad option": [str(tmp / "full.mp4"), "--hypotheses", "0"],
        "bad imgsz": [str(tmp / "full.mp4"), "--imgsz", "30"],
        "bad unsure threshold": [str(tmp / "full.mp4"), "--unsure-threshold", "1.5"],
        "no GUI for --show": [str(tmp / "full.mp4"), "--show"],
        "missing checkpoint": [str(tmp / "full.mp4"), "--weights", str(tmp / "no-ckpt")],
    }


def test_unsure_threshold_flags_frames_in_records_and_summary(capsys, tiny, tmp_path, video):
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video), "--max-frames", "4")
    assert rc == 0, err
    rows = read_rows(tmp_path / "runs" / "exp")
    scores = [float(r["unsure"]) for r in rows]
    assert all(0 <= u <= 1 for u in scores) and all(r["unsure_flag"] == "" for r in rows)
    summary = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    assert summary["unsure_frames"] is None and summary["settings"]["unsure_threshold"] is None
    # a threshold just below the smallest score flags every frame with a score above it
    cut = min(scores) - 1e-6 if min(scores) > 0 else 0.0
    rc, err = segment(
        capsys, tiny, tmp_path / "runs", str(video), "--max-frames", "4",
        "--unsure-threshold", f"{cut:.7f}",
    )  # fmt: skip
    assert rc == 0, err
    rows = read_rows(tmp_path / "runs" / "exp2")
    flags = [r["unsure_flag"] == "True" for r in rows]
    assert flags == [float(r["unsure"]) > cut for r in rows]
    summary = json.loads((tmp_path / "runs" / "exp2" / "summary.json").read_text())
    assert summary["unsure_frames"] == sum(flags)
    assert summary["settings"]["unsure_threshold"] == pytest.approx(cut)
    assert f"{sum(flags)} flagged unsure" in err


def test_bad_inputs_give_one_line_and_nonzero_exit(capsys, tiny, tmp_path):
    if "GUI:                           NONE" not in cv2.getBuildInformation():
        pytest.skip("this OpenCV has a GUI: --show would open a window")
    for what, args in _bad_inputs(tmp_path).items():
        rc, err = segment(capsys, tiny, tmp_path / "runs", *args)
        lines = err.strip().splitlines()
        assert rc != 0, what
        assert len(lines) == 1 and "Traceback" not in err, (what, err)
        assert lines[0].startswith("lsdseg segment: error:"), (what, err)
    # nothing was created for runs that never started
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_truncated_video_keeps_frames_before_the_cut_and_fails(capsys, tiny, tmp_path):
    data = write_video(tmp_path / "full.avi", n=20, fourcc="MJPG").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(tmp_path / "cut.avi"))
    assert rc == 1 and "Traceback" not in err
    assert "truncated or corrupt" in err.strip().splitlines()[-1]
    out = tmp_path / "runs" / "exp"
    n_rows = len(read_rows(out))
    assert 0 < n_rows < 20 and read_video(out / "cut.mp4")[0] == n_rows


class _FakeLive(Source):
    """A live source that yields ``n`` frames every ``period`` s, then hangs (stalls)."""

    def __init__(self, n: int, period: float, hang: bool):
        self.kind, self.name, self.label, self.fps, self.total = "stream", "fake", "fake", 1, None
        self.live, self.first_shape, self.n, self.period, self.hang = True, (4, 4), n, period, hang

    def frames(self, pace: bool = False):
        for i in range(self.n):
            yield Frame(i, np.zeros((4, 4, 3), np.uint8), float(i), "fake")
            time.sleep(self.period)
        while self.hang:
            time.sleep(0.05)


def test_realtime_reader_drops_stale_frames_and_keeps_the_newest():
    reader = FrameReader(_FakeLive(40, 0.002, hang=False), realtime=True).start()
    time.sleep(0.3)  # a busy consumer: the reader keeps replacing the waiting frame
    first = reader.get(timeout=1.0)
    seen = [first.index]
    while (f := reader.get(timeout=1.0)) is not None:
        seen.append(f.index)
    assert first.index == 39 and seen == [39]
    assert reader.dropped == 39


def test_stalled_source_times_out_instead_of_hanging():
    reader = FrameReader(_FakeLive(2, 0.0, hang=True), realtime=False).start()
    assert [reader.get(timeout=1.0).index for _ in range(2)] == [0, 1]
    t0 = time.monotonic()
    with pytest.raises(Stalled, match=r"fake stalled: no frame for 0\.3 s"):
        reader.get(timeout=0.3)
    assert time.monotonic() - t0 < 2.0


def test_reader_queue_is_bounded_without_realtime():
    reader = FrameReader(_FakeLive(30, 0.0, hang=False), realtime=False, depth=3).start()
    time.sleep(0.2)
    assert reader.queue.qsize() <= 3 and reader.dropped == 0
    seen = [f.index for f in iter(lambda: reader.get(timeout=1.0), None)]
    assert seen == list(range(30))


@pytest.mark.parametrize(
    "sig,code,realtime",
    [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, True), (signal.SIGHUP, 129, False)],
)
def test_signal_stops_cleanly(tiny, tmp_path, sig, code, realtime):
    src = write_video(tmp_path / "long.mp4", n=300, fps=30.0)
    entry = "import sys; from lsdseg.cli.main import main; sys.exit(main())"
    cmd = [
        sys.executable,
        "-c",
        entry,
        "segment",
        str(src),
        "--weights",
        tiny,
        "--project",
        str(tmp_path),
        "-k",
        "16",
        "--realtime" if realtime else "--no-realtime",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    csv_path = tmp_path / "exp" / "records.csv"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if csv_path.is_file() and len(csv_path.read_text().splitlines()) >= 3:  # header + 2
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    rows = read_rows(tmp_path / "exp")
    frames, fps, shape = read_video(tmp_path / "exp" / "long.mp4")
    assert 2 <= len(rows) < 300 and frames == len(rows) and shape == (H, W) and fps == 30.0
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert summary["frames"] == len(rows) and summary["stopped_by"] == sig.name


def test_reader_error_reaches_the_consumer():
    class Broken(_FakeLive):
        def frames(self, pace=False):
            yield Frame(0, np.zeros((4, 4, 3), np.uint8), 0.0, "x")
            raise OSError("disk gone")

    reader = FrameReader(Broken(0, 0, False), realtime=False).start()
    assert reader.get(timeout=1.0).index == 0
    with pytest.raises(OSError, match="disk gone"):
        reader.get(timeout=1.0)


def test_writer_queue_applies_back_pressure(tmp_path):
    from lsdseg.cli.overlay import View
    from lsdseg.cli.records import RecordWriter
    from lsdseg.cli.writer import ImagesOut, Work, WriterThread

    gate = threading.Event()

    def slow_render(frame, view):
        gate.wait(5)
        return frame

    writer = WriterThread(slow_render, RecordWriter(tmp_path), images=ImagesOut(tmp_path), depth=2)
    img = np.zeros((8, 8, 3), np.uint8)
    view = View(np.zeros((8, 8), bool), np.zeros((8, 8), np.float32), None, 1)
    done = queue.Queue()

    def producer():
        for i in range(6):
            writer.put(Work(Frame(i, img, None, f"{i}.png"), view, dict.fromkeys(COLUMNS, i)))
            done.put(i)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert done.qsize() <= 3  # one in render, two queued: the producer waits
    gate.set()
    thread.join(5)
    writer.close()
    assert writer.written == 6 and len(read_rows(tmp_path)) == 6


def test_realtime_file_counts_every_frame_as_processed_or_dropped(capsys, tiny, tmp_path):
    src = write_video(tmp_path / "fast.mp4", n=12, fps=200.0)  # faster than the model
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(src), "--realtime")
    assert rc == 0, err
    out = tmp_path / "runs" / "exp"
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    frames = [int(r["frame"]) for r in rows]
    assert summary["frames"] == len(rows) == read_video(out / "fast.mp4")[0]
    assert summary["frames"] + summary["dropped"] == 12
    assert frames == sorted(set(frames)) and frames[-1] == 11  # the newest frame always wins


class _Stub:
    """The Segmenter's call signature, answering instantly with an empty mask."""

    def __call__(self, image, **kw):
        from types import SimpleNamespace

        z = np.zeros(image.shape[:2], np.float32)
        return SimpleNamespace(
            mask=z > 0,
            mean=z,
            std=z,
            entropy=z,
            mutual_info=z,
            hypotheses=z[None],
            agreement=1.0,
            unsure=0.0,
            seed=0,
            score=0.0,
            present=False,
            threshold=0.5,
        )


def test_stalled_stream_ends_the_run_with_a_summary(tmp_path):
    from lsdseg.cli.overlay import OverlayOptions, render
    from lsdseg.cli.pipeline import SampleOptions, StopFlag, run_pipeline
    from lsdseg.cli.records import RecordWriter
    from lsdseg.cli.writer import VideoOut, WriterThread

    opts = OverlayOptions()
    video = VideoOut(tmp_path / "live.mp4", 5.0, (4, 4))
    writer = WriterThread(lambda f, v: render(f, v, opts), RecordWriter(tmp_path), video=video)

    t0 = time.monotonic()
    with StopFlag() as stop:
        summary = run_pipeline(
            _Stub(),
            _FakeLive(3, 0.0, hang=True),
            writer,
            opts,
            SampleOptions(),
            realtime=True,
            timeout=0.3,
            stop=stop,
        )
    assert time.monotonic() - t0 < 5
    assert summary.stopped_by == "stall" and "fake stalled: no frame for 0.3 s" in summary.warning
    # realtime: frames that arrive while the model is busy may be dropped (how many depends on
    # the machine's load), but every frame is either processed or counted as dropped
    assert summary.frames >= 1 and summary.frames + summary.dropped == 3
    assert summary.frames == len(read_rows(tmp_path)) == read_video(tmp_path / "live.mp4")[0]


@pytest.fixture
def http_url(tmp_path):
    """A local HTTP server for tmp_path; yields its base URL."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("realtime", [True, False])
def test_http_stream_source(capsys, tiny, tmp_path, http_url, realtime):
    write_video(tmp_path / "live.mp4", n=12)
    flag = [] if realtime else ["--no-realtime"]  # streams are real time by default
    rc, err = segment(capsys, tiny, tmp_path / "runs", f"{http_url}/live.mp4", *flag)
    assert rc == 0, err
    out = tmp_path / "runs" / "exp"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["realtime"] is realtime
    assert summary["frames"] + summary["dropped"] == 12
    assert summary["frames"] == len(read_rows(out)) == read_video(out / "stream.mp4")[0]
    if not realtime:
        assert summary["dropped"] == 0
    assert "the stream ended after 12 frames" in err


def test_seed_minus_one_draws_a_seed_per_frame(capsys, tiny, tmp_path, video):
    rc, _ = segment(capsys, tiny, tmp_path, str(video), "--max-frames", "3", "--seed", "-1")
    assert rc == 0
    assert len({r["seed"] for r in read_rows(tmp_path / "exp")}) == 3
    rc, _ = segment(capsys, tiny, tmp_path, str(video), "--max-frames", "3", "--seed", "5")
    assert {r["seed"] for r in read_rows(tmp_path / "exp2")} == {"5"}


def test_closing_the_show_window_ends_the_run(tmp_path):
    from lsdseg.cli.overlay import OverlayOptions, render
    from lsdseg.cli.pipeline import SampleOptions, StopFlag, run_pipeline
    from lsdseg.cli.records import RecordWriter
    from lsdseg.cli.writer import VideoOut, WriterThread

    shown = []

    def show(image):  # the user presses q on the first image shown
        shown.append(threading.current_thread() is threading.main_thread())
        return False

    opts = OverlayOptions()
    video = VideoOut(tmp_path / "v.mp4", 5.0, (4, 4))
    writer = WriterThread(
        lambda f, v: render(f, v, opts), RecordWriter(tmp_path), video=video, show=show
    )
    with StopFlag() as stop:
        summary = run_pipeline(
            _Stub(),
            _FakeLive(50, 0.0, hang=False),
            writer,
            opts,
            SampleOptions(),
            realtime=False,
            timeout=1.0,
            stop=stop,
        )
    assert shown == [True]  # on the main thread, once
    assert summary.stopped_by == "the --show window (q)" and 1 <= summary.frames < 50


def test_temporal_warm_start(capsys, tiny, tmp_path, video):
    rc, err = segment(capsys, tiny, tmp_path / "a", str(video), "--steps", "4")
    assert rc == 0, err
    rc, err = segment(
        capsys,
        tiny,
        tmp_path / "b",
        str(video),
        "--steps",
        "4",
        "--temporal",
        "--temporal-t",
        "499",
    )
    assert rc == 0, err
    a, b = read_rows(tmp_path / "a" / "exp"), read_rows(tmp_path / "b" / "exp")
    assert len(a) == len(b) == N_FRAMES
    # the first frame has no previous frame: identical; the settings are recorded
    assert a[0]["area_fraction"] == b[0]["area_fraction"] and a[0]["agreement"] == b[0]["agreement"]
    summary = json.loads((tmp_path / "b" / "exp" / "summary.json").read_text())
    assert summary["settings"]["temporal_t"] == 499
    rc, err = segment(capsys, tiny, tmp_path / "c", str(video), "--temporal-t", "1000")
    assert rc == 1 and "--temporal-t 1000" in err


def test_summary_records_the_effective_sampler_settings(capsys, tiny, tmp_path, video):
    defaults = json.loads((Path(tiny) / "config.json").read_text())["model"]["sampler"]
    rc, err = segment(capsys, tiny, tmp_path, str(video), "--max-frames", "1")
    assert rc == 0, err
    settings = json.loads((tmp_path / "exp" / "summary.json").read_text())["settings"]
    # unset options are the checkpoint's defaults, recorded as such (not null)
    got = {k: settings[k] for k in ("steps", "eta", "threshold")}
    assert got == {k: defaults[k] for k in ("steps", "eta", "threshold")}
    assert settings["hypotheses"] == 3  # -k 3, given by segment()
    argv = ["--max-frames", "1", "--steps", "3", "--eta", "0.5", "--threshold", "0.6"]
    rc, err = segment(capsys, tiny, tmp_path, str(video), *argv)
    assert rc == 0, err
    settings = json.loads((tmp_path / "exp2" / "summary.json").read_text())["settings"]
    assert (settings["steps"], settings["eta"], settings["threshold"]) == (3, 0.5, 0.6)


def test_undecodable_images_are_skipped_named_counted_and_fail_at_the_end(capsys, tiny, tmp_path):
    """One rule with evaluate: skip, name, count, exit 1 once every other image is written."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png at all")  # the first: the probe skips it too
    cv2.imwrite(str(folder / "b.png"), disc_frame(0))
    (folder / "c.png").touch()
    cv2.imwrite(str(folder / "d.png"), disc_frame(1))
    for run, source in (("exp", str(folder)), ("exp2", str(folder / "*.png"))):
        rc, err = segment(capsys, tiny, tmp_path / "runs", source)
        assert rc == 1 and "Traceback" not in err, err
        lines = err.splitlines()
        bad_a = f"cannot decode image {folder / 'a.png'}: not a readable JPEG/PNG/BMP/TIFF file"
        bad_c = f"cannot decode image {folder / 'c.png'}: the file is empty (0 bytes)"
        assert f"lsdseg segment: warning: skipped {folder / 'a.png'}: {bad_a}" in lines, err
        assert f"lsdseg segment: warning: skipped {folder / 'c.png'}: {bad_c}" in lines, err
        out = tmp_path / "runs" / run
        assert lines[-1] == (
            "lsdseg segment: error: 2 of 4 images could not be decoded and were skipped "
            f"(named above); the results of the other 2 are in {out}"
        )
        assert [Path(r["source"]).name for r in read_rows(out)] == ["b.png", "d.png"]
        assert sorted(p.name for p in out.glob("*.png")) == ["b.png", "d.png"]
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["frames"], summary["skipped"]) == (2, 2)
        assert summary["skipped_files"] == [
            [str(folder / "a.png"), bad_a],
            [str(folder / "c.png"), bad_c],
        ]
        assert any(line.startswith("2 images, 2 skipped, latency mean") for line in lines)
    # none decodes: one line, nothing written
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").touch()
    (bad / "y.png").write_bytes(b"junk")
    rc, err = segment(capsys, tiny, tmp_path / "runs2", str(bad))
    assert rc == 1 and err.strip().splitlines() == [
        f"lsdseg segment: error: bad: none of the 2 images could be decoded (the first: "
        f"cannot decode image {bad / 'x.png'}: the file is empty (0 bytes)); check the files"
    ]
    assert not (tmp_path / "runs2").exists()


def test_still_images_summary_speaks_of_images_not_frames(capsys, tiny, tmp_path, video):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), disc_frame(i))
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(folder))
    assert rc == 0, err
    line = next(line for line in err.splitlines() if "latency mean" in line)
    assert line.startswith("3 images, latency mean ")
    assert not any(word in line for word in ("frame", "dropped", "fps")), line
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(folder / "0.png"))
    assert next(x for x in err.splitlines() if "latency" in x).startswith("1 image, latency")
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video))  # a video keeps them
    line = next(line for line in err.splitlines() if "latency mean" in line)
    assert line.startswith(f"{N_FRAMES} frames, 0 dropped, latency mean ") and " fps" in line


@pytest.fixture
def mjpeg_url():
    """A local MJPEG stream (multipart/x-mixed-replace) of 4 frames; ``/stall`` then keeps the
    connection open without sending more, ``/end`` closes it."""
    import http.server

    jpeg = cv2.imencode(".jpg", disc_frame(0))[1].tobytes()
    release = threading.Event()

    class Mjpeg(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for _ in range(4):
                head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            if self.path == "/stall":
                release.wait(30)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mjpeg)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()


@pytest.mark.parametrize("stall", [True, False])
def test_a_stalled_stream_fails_and_an_ended_one_does_not(capsys, tiny, tmp_path, mjpeg_url, stall):
    url = f"{mjpeg_url}/{'stall' if stall else 'end'}"
    rc, err = segment(capsys, tiny, tmp_path, url, "--timeout", "1.5", "--no-realtime")
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert summary["frames"] == 4 == len(read_rows(tmp_path / "exp"))  # all written either way
    last = err.strip().splitlines()[-1]
    if stall:
        assert rc == 1 and summary["stopped_by"] == "stall", err
        assert last == (
            f"lsdseg segment: error: {url} stalled: no frame for 1.5 s and no end of stream "
            "(raise --timeout to wait longer)"
        )
    else:
        assert rc == 0 and summary["stopped_by"] is None, err
        assert last == f"lsdseg segment: warning: {url}: the stream ended after 4 frames"


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which JSON does not have."""

    def refuse(name):
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_run_of_nan_results_writes_null_not_nan(capsys, tiny, tmp_path, video, monkeypatch):
    from lsdseg.segmenter import Segmenter

    call = Segmenter.__call__

    def nan_results(self, *args, **kwargs):
        r = call(self, *args, **kwargs)
        r.agreement, r.unsure = float("nan"), float("nan")
        r.mutual_info = np.full_like(r.mutual_info, np.nan)  # the map --uncertainty shows
        return r

    monkeypatch.setattr(Segmenter, "__call__", nan_results)
    rc, err = segment(capsys, tiny, tmp_path, str(video), "--max-frames", "2")
    assert rc == 0, err
    out = tmp_path / "exp"
    records = [_strict_json(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["agreement"] is None and r["unsure"] is None and r["unc_frame_mean"] is None
    assert all(row["agreement"] == "" for row in read_rows(out))
    _strict_json((out / "summary.json").read_text())


def test_summary_json_is_strict_json_when_figures_are_missing(tmp_path):
    from lsdseg.cli.records import Summary

    summary = Summary(source="x").finish([], 0.0)  # nothing processed: no latency, no fps
    summary.settings = {"eta": float("nan"), "nested": [float("inf"), 1.5]}
    summary.save(tmp_path / "summary.json")
    data = _strict_json((tmp_path / "summary.json").read_text())
    assert data["mean_latency_ms"] is None and data["fps"] is None
    assert data["settings"] == {"eta": None, "nested": [None, 1.5]}


@pytest.mark.parametrize("delay", [0.3, 0.5, 0.8, 1.2, 2.0])
def test_an_early_ctrl_c_ends_quietly(tiny, tmp_path, delay):
    """SIGINT while lsdseg imports torch, loads the model or warms up: status 130 and one line,
    never a KeyboardInterrupt traceback (the issue saw 16 of 16 between 0.45 and 2 s)."""
    src = write_video(tmp_path / "clip.mp4", n=600)  # seconds of work: still running at 2 s
    entry = "import sys; from lsdseg.cli.main import main; sys.exit(main())"
    cmd = [sys.executable, "-c", entry, "segment", str(src), "--weights", tiny]
    cmd += ["--project", str(tmp_path / "runs"), "-k", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # as from a terminal: a shell without job control starts background jobs (``cmd &``, as CI
    # may run this suite) with SIGINT ignored, and a child inherits that until it sets a handler
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode == 130, err
    assert "lsdseg: interrupted" in err or "stopped by SIGINT" in err, err


def test_videos_in_a_folder_or_glob_of_images_are_named_not_dropped_silently(
    capsys, tiny, tmp_path
):
    folder = tmp_path / "mixed"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), disc_frame(0))
    write_video(folder / "clip.mp4", n=2)
    (folder / "notes.txt").write_text("not an image, not a video: no word about it")
    for source in (str(folder), str(folder / "*")):
        rc, err = segment(capsys, tiny, tmp_path / "runs", source)
        assert rc == 0, err
        warning = (
            f"lsdseg segment: warning: {source}: 1 video(s) left out (clip.mp4); a folder or "
            "glob is segmented as images: pass each video on its own"
        )
        assert warning in err.splitlines(), err
        assert "notes.txt" not in err


class _Dropping:
    """A cv2.VideoWriter that silently stops writing after ``keep`` frames, as FFmpeg does on
    a full disk (OpenCV's write() reports nothing)."""

    real = cv2.VideoWriter

    def __init__(self, *args, keep: int):
        self._writer, self.keep, self.n = self.real(*args), keep, 0

    def isOpened(self):
        return self._writer.isOpened()

    def write(self, image):
        if self.n < self.keep:
            self._writer.write(image)
        self.n += 1

    def release(self):
        self._writer.release()


def test_a_video_short_of_frames_cuts_the_records_and_names_the_file(
    capsys, tiny, tmp_path, video, monkeypatch
):
    monkeypatch.setattr(cv2, "VideoWriter", lambda *a: _Dropping(*a, keep=2))
    rc, err = segment(capsys, tiny, tmp_path, str(video))
    out = tmp_path / "exp"
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("lsdseg segment: error")]
    assert lines == [
        f"lsdseg segment: error: the video {out / 'clip.mp4'} holds 2 of the {N_FRAMES} "
        "frames written: FFmpeg could not write the rest"
    ], err
    assert read_video(out / "clip.mp4")[0] == 2
    assert [int(r["frame"]) for r in read_rows(out)] == [0, 1]  # no record of a lost frame
    assert len((out / "records.jsonl").read_text().splitlines()) == 2
    summary = _strict_json((out / "summary.json").read_text())
    assert summary["frames"] == 2 and summary["stopped_by"] == "error"


class _FillsUp:
    """A text file that runs out of space in the middle of its ``rows``-th row."""

    def __init__(self, f, rows: int):
        self._f, self.rows, self.n = f, rows, 0

    def write(self, text: str) -> int:
        if text.endswith("\n"):
            self.n += 1
        if self.n == self.rows:
            self._f.write(text[: len(text) // 2])
            self._f.flush()
            raise OSError(28, "No space left on device")
        return self._f.write(text)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_a_full_disk_under_the_records_leaves_whole_rows_and_names_the_file(
    capsys, tiny, tmp_path, video, monkeypatch
):
    import builtins

    import lsdseg.cli.records as records

    def open_filling(path, mode="r", **kw):
        f = builtins.open(path, mode, **kw)  # noqa: SIM115  (records.py closes it)
        return _FillsUp(f, rows=1 + 4) if str(path).endswith(".csv") else f  # header + 4

    monkeypatch.setattr(records, "open", open_filling, raising=False)
    rc, err = segment(capsys, tiny, tmp_path, str(video))
    out = tmp_path / "exp"
    assert rc == 1
    lines = [line for line in err.splitlines() if line.startswith("lsdseg segment: error")]
    assert lines == [
        f"lsdseg segment: error: cannot write {out / 'records.csv'}: No space left on device"
    ], err
    text = (out / "records.csv").read_text()
    assert text.endswith("\n") and [int(r["frame"]) for r in read_rows(out)] == [0, 1, 2]
    assert len((out / "records.jsonl").read_text().splitlines()) == 3
    assert read_video(out / "clip.mp4")[0] >= 3  # every record's frame is in the video
    assert _strict_json((out / "summary.json").read_text())["frames"] == 3


def test_a_summary_that_cannot_be_written_leaves_no_empty_file(tmp_path, monkeypatch):
    from lsdseg.cli.errors import OutputError
    from lsdseg.cli.records import Summary

    def full(fd: int) -> None:  # the bytes went to the temporary file; the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=r"cannot write .*summary\.json: No space left"):
        Summary(source="x").save(tmp_path / "summary.json")
    assert list(tmp_path.iterdir()) == []  # no truncated summary.json, no temporary file


def test_temporal_t_range_is_the_checkpoint_schedule(capsys, tiny, tmp_path, video):
    import dataclasses

    from lsdseg.checkpoint import load_checkpoint, save_checkpoint
    from lsdseg.model import LatentSegmenter

    cfg = load_checkpoint(tiny).cfg
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, timesteps=200))
    torch.manual_seed(0)
    short = str(save_checkpoint(LatentSegmenter(cfg), tmp_path / "t200"))
    args = ("--temporal", "--max-frames", "2", "--temporal-t")
    rc, err = segment(capsys, short, tmp_path / "a", str(video), *args, "200")
    assert rc == 1 and "--temporal-t 200 must be between 0 and 199" in err
    assert len(err.strip().splitlines()) == 1, err
    rc, err = segment(capsys, short, tmp_path / "b", str(video), *args, "199")
    assert rc == 0, err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--steps", "0", "--steps 0 must be between 1 and 1000"),
        ("--eta", "1.5", "--eta 1.5 must be between 0 and 1"),
        ("--threshold", "1", "--threshold 1.0 must be in (0, 1)"),
        ("-k", "0", "--hypotheses 0 must be between 1 and 256"),
    ],
)
def test_sampler_flags_are_checked_by_sampler_config(capsys, tiny, tmp_path, flag, value, message):
    rc, err = segment(capsys, tiny, tmp_path, "missing.mp4", flag, value)
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "exp").exists()  # before any source, model or output


def test_docs_document_every_record_column():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    table = doc.split("| record column | meaning |")[1].split("\n\n")[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("|")]
    documented = [name for row in rows for name in row.split("`")[1::2]]
    assert documented == list(COLUMNS)  # every column, in the files' order


_PEAK_RSS = """
import resource, sys
from lsdseg.cli.main import main
rc = main(sys.argv[1:])
print(f"peak_rss_kib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(rc)
"""


def test_a_large_frame_takes_no_frame_sized_map_per_hypothesis(tiny, tmp_path):
    """The K hypotheses stay at the model's size (the grid shows them as thumbnails): on a
    3000 x 4000 frame each frame-sized float map is 48 MB, and K = 16 once took 15 more of
    them than K = 2 (twice over, through the clamp's copy), 1.4 GB; now the peak RSS barely
    moves with K."""
    cv2.imwrite(str(tmp_path / "big.png"), disc_frame(0, 3000, 4000))
    peaks = {}
    for k in (2, 16):
        argv = ["segment", str(tmp_path / "big.png"), "-k", str(k), "--weights", tiny]
        argv += ["--device", "cpu", "--overlay", "grid", "--save-masks"]
        argv += ["--project", str(tmp_path / f"runs{k}")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, *argv], env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        peaks[k] = int(r.stderr.split("peak_rss_kib ")[-1]) / 1024  # MiB
        assert len(read_rows(tmp_path / f"runs{k}" / "exp")) == 1
    assert peaks[16] - peaks[2] < 250, peaks  # 14 frame-sized maps would be 640 MiB


def test_the_decision_is_filtered_over_time_on_videos_and_recorded(capsys, tiny, tmp_path, video):
    # presence threshold 0: every frame holds a polyp on its own; the filter shows it from the
    # third frame on (3 of the last 5), and the records and the summary say so
    args = ("--max-frames", "6", "--threshold", "0.01", "--presence-threshold", "0")
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video), *args)
    assert rc == 0, err
    rows = read_rows(tmp_path / "runs" / "exp")
    assert [r["polyp_frame"] for r in rows] == ["True"] * 6
    assert [r["polyp_shown"] for r in rows] == ["False"] * 2 + ["True"] * 4
    assert all(float(r["area_fraction"]) == 0 for r in rows[:2])  # nothing drawn yet
    assert all(float(r["area_fraction"]) > 0 for r in rows[2:])
    assert all(0 < float(r["score"]) < 1 for r in rows)
    summary = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    assert summary["polyp_frames"] == 4
    assert summary["settings"]["presence_filter"] == {"window": 5, "on": 3, "off": 2}
    assert "4 with a polyp" in err
    rc, err = segment(
        capsys, tiny, tmp_path / "runs", str(video), *args, "--presence-filter", "off"
    )
    assert rc == 0, err
    rows = read_rows(tmp_path / "runs" / "exp2")
    assert [r["polyp_shown"] for r in rows] == ["True"] * 6
    # presence threshold 1: no frame holds one, nothing is drawn
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video), "--max-frames", "3",
                      "--threshold", "0.01", "--presence-threshold", "1")  # fmt: skip
    assert rc == 0, err
    rows = read_rows(tmp_path / "runs" / "exp3")
    assert all(r["polyp_frame"] == r["polyp_shown"] == "False" for r in rows)
    assert all(float(r["area_fraction"]) == 0 for r in rows)


def test_still_images_are_judged_one_by_one(capsys, tiny, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), disc_frame(i))
    args = ("--threshold", "0.01", "--presence-threshold", "0")
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(folder), *args)
    assert rc == 0, err
    rows = read_rows(tmp_path / "runs" / "exp")
    assert [r["polyp_shown"] for r in rows] == ["True"] * 3  # no filter on still images
    summary = json.loads((tmp_path / "runs" / "exp" / "summary.json").read_text())
    assert summary["settings"]["presence_filter"] is None


def test_one_hypothesis_says_it_measures_no_uncertainty(capsys, tiny, tmp_path, video):
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video), "-k", "1", "--max-frames", "2")
    assert rc == 0, err
    assert "--hypotheses 1: one sample has no spread, so no uncertainty is measured" in err
    rows = read_rows(tmp_path / "runs" / "exp")
    assert len(rows) == 2
    for r in rows:
        assert r["unc_mean"] == r["unc_frame_mean"] == r["agreement"] == r["unsure"] == ""
        assert r["area_fraction"] != ""
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(video), "--max-frames", "1")
    assert rc == 0 and "no uncertainty is measured" not in err


def test_same_names_from_two_folders_record_their_own_paths(capsys, tiny, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "dir" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "dir" / sub / "x.png"), disc_frame(0 if sub == "a" else 3))
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(tmp_path / "dir" / "*" / "x.png"))
    assert rc == 0, err
    out = tmp_path / "runs" / "exp"
    assert sorted(p.name for p in out.glob("*.png")) == ["x.png", "x_2.png"]
    sources = [r["source"] for r in read_rows(out)]
    assert sources == [str(tmp_path / "dir" / "a" / "x.png"), str(tmp_path / "dir" / "b" / "x.png")]


def test_image_names_that_are_not_utf8_or_look_like_formulas(capsys, tiny, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    names = [b"a.png", b"b\xff.png", b'=HYPERLINK("http:__x","y").png', b"-1+2.png"]
    for i, name in enumerate(names):
        assert cv2.imwrite(str(tmp_path / "x.png"), disc_frame(i))
        os.rename(tmp_path / "x.png", os.path.join(os.fsencode(folder), name))
    monkeypatch.chdir(folder)  # relative paths: each source is the file name as given
    rc, err = segment(capsys, tiny, tmp_path / "runs", ".")
    assert rc == 0, err
    out = tmp_path / "runs" / "exp"
    rows = read_rows(out)
    sources = [r["source"].removeprefix("./") for r in rows]
    assert sorted(sources) == sorted(
        ["a.png", "b\\xff.png", '\'=HYPERLINK("http:__x","y").png', "'-1+2.png"]
    )
    assert not any(s.startswith(("=", "+", "-", "@")) for s in sources)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 4 == len(rows)
    lines = (out / "records.jsonl").read_text().splitlines()
    jsonl = [json.loads(line)["source"] for line in lines]
    assert '=HYPERLINK("http:__x","y").png' in jsonl and "b\\xff.png" in jsonl
    assert len(list(out.glob("*.png"))) == 4  # an overlay per image, under its own name


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+x", "'+x"),
        ("-x", "'-x"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        (-0.5, -0.5),
        ("b\udcff.png", "b\\xff.png"),
    ],
)
def test_csv_text_neutralises_formula_cells(text, cell):
    from lsdseg.cli.records import csv_text

    assert csv_text(text) == cell


def test_max_pixels_refuses_a_larger_image_in_one_line(capsys, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LSDSEG_MAX_IMAGE_PIXELS", "")  # unset (the default), restored after
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), disc_frame(0))  # 96 x 128 = 12288 pixels
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(image), "--max-pixels", "12000")
    assert rc == 1 and "declares 128x96 pixels" in err and "--max-pixels" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs" / "exp").exists()
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(image), "--max-pixels", "nan")
    assert rc == 1 and "--max-pixels nan must be" in err, err
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(image), "--max-pixels", "12288")
    assert rc == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "inf"], "--timeout inf must be between 0 and 86400 seconds"),
        (["--timeout", "1e7"], "--timeout 10000000.0 must be between 0 and 86400"),
        (["--timeout", "nan"], "--timeout nan must be between"),
        (["--server-timeout", "inf"], "--server-timeout inf must be between 0 and 86400"),
    ],
)
def test_timeouts_are_bounded(capsys, tiny, tmp_path, args, message):
    rc, err = segment(capsys, tiny, tmp_path / "runs", "rtsp://127.0.0.1:9/live", *args)
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("fps", "size", "message"),
    [
        (30.0, (10, 10000), "frames are at most 8191 pixels a side"),
        (1 / 3600, (64, 64), "stores 0.002 to 65535 frames per second"),
    ],
)
def test_mp4v_limits_are_named_not_blamed_on_the_folder(tmp_path, fps, size, message):
    from lsdseg.cli.errors import UserError
    from lsdseg.cli.writer import VideoOut

    with pytest.raises(UserError, match=message) as info:
        VideoOut(tmp_path / "v.mp4", fps, size)
    assert "writable" not in str(info.value)


def test_a_symlink_loop_is_named_without_suggesting_itself(capsys, tiny, tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    rc, err = segment(capsys, tiny, tmp_path / "runs", str(tmp_path / "a"))
    assert rc == 1 and "is a symbolic link to nothing (a loop" in err, err
    assert "did you mean" not in err
