"""Tests for the client of ``lsdseg serve`` (lsdseg.cli.remote) and ``segment --server``.

A refusing port and a socket that accepts but never answers stand in for a dead and a stalled
server; the real server is exercised in test_serve.py (its own environment).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip(
    "tritonclient.http", reason='tritonclient is missing: pip install "lsdseg[client]"'
)

from lsdseg.cli.main import main
from lsdseg.cli.remote import RemoteSegmenter, ServerAddress, ServerError, parse_server


@pytest.fixture
def refused_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers (a stalled server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def clip(path: Path, n: int = 8, h: int = 48, w: int = 64) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    for i in range(n):
        f = np.full((h, w, 3), 70, np.uint8)
        cv2.circle(f, (w // 3 + 3 * i, h // 2), h // 5, (40, 40, 210), -1)
        vw.write(f)
    vw.release()
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:9000", ServerAddress("http", "10.0.0.5", 9000)),
        ("http://gpu-box:8000/", ServerAddress("http", "gpu-box", 8000)),
        ("grpc://gpu-box", ServerAddress("grpc", "gpu-box", 8001)),
        ("localhost", ServerAddress("http", "localhost", 8000)),
        ("[::1]:8001", ServerAddress("http", "::1", 8001)),
    ],
)
def test_parse_server(text, expected):
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["ftp://x:1", "host:port", "host:0", ":8000", "host:70000"])
def test_parse_server_rejects(text):
    with pytest.raises(ValueError, match="--server"):
        parse_server(text)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dead_server_fails_at_once(protocol, refused_port):
    remote = RemoteSegmenter(f"{protocol}://127.0.0.1:{refused_port}", timeout=5)
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="cannot reach the lsdseg server"):
        remote.check()
    with pytest.raises(ServerError, match="cannot reach"):
        remote(np.zeros((8, 8, 3), np.uint8))
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_stalled_server_times_out(protocol, silent_port):
    remote = RemoteSegmenter(f"{protocol}://127.0.0.1:{silent_port}", timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=r"did not answer a frame within 1 s"):
        remote(np.zeros((8, 8, 3), np.uint8), seed=0)
    assert 0.9 < time.monotonic() - t0 < 4


def test_settings_are_checked_before_sending(refused_port):
    remote = RemoteSegmenter(f"127.0.0.1:{refused_port}")
    frame = np.zeros((8, 8, 3), np.uint8)
    # ValueError, not ServerError: nothing was sent to the (absent) server
    with pytest.raises(ValueError, match="hypotheses=0"):
        remote(frame, hypotheses=0)
    with pytest.raises(ValueError, match="seed=-2"):
        remote(frame, seed=-2)
    with pytest.raises(ValueError, match="one frame per call"):
        remote(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown output 'masks'"):
        RemoteSegmenter("127.0.0.1:1", outputs=["masks"])


def test_segment_with_a_dead_server_is_one_line_and_no_run(capsys, tmp_path, refused_port):
    src = clip(tmp_path / "clip.mp4")
    runs = tmp_path / "runs"
    rc = main(
        ["segment", str(src), "--server", f"127.0.0.1:{refused_port}", "--project", str(runs)]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "lsdseg segment: error: cannot reach the lsdseg server" in err
    assert "Traceback" not in err and not runs.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "untrained"], "--weights sets up a local model"),
        (["--backend", "torch"], "--backend sets up a local model"),
        (["--imgsz", "64"], "--imgsz sets up a local model"),
        (["--temporal"], "--temporal needs the previous frame's latents"),
        (["--server-timeout", "0"], "--server-timeout 0.0 must be between 0 and 86400"),
    ],
)
def test_segment_server_option_conflicts(capsys, tmp_path, args, message):
    rc = main(["segment", str(tmp_path / "x.mp4"), "--server", "127.0.0.1:1", *args])
    assert rc == 1 and message in capsys.readouterr().err


class _Flaky(RemoteSegmenter):
    """A remote segmenter whose server answers ``n`` frames, then vanishes."""

    def __init__(self, n: int) -> None:  # no connection
        self.address = ServerAddress("http", "127.0.0.1", 1)
        self.n = n

    def __call__(self, image, **kw):
        from lsdseg.segmenter import Result

        if self.n == 0:
            raise ServerError("lost the lsdseg server at http://127.0.0.1:1 during a frame")
        self.n -= 1
        z = np.zeros(image.shape[:2], np.float32)
        return Result(z > 0, z, z, z, z, np.zeros((3, 0, 0), np.float32), 1.0, 0.0, 0)


def test_server_lost_mid_run_ends_with_summary_and_error(capsys, tmp_path, monkeypatch):
    from lsdseg.cli import segment_cmd

    monkeypatch.setattr(segment_cmd, "connect", lambda args, overlay: _Flaky(1 + 4))  # warm-up
    src = clip(tmp_path / "clip.mp4", n=12)
    runs = tmp_path / "runs"
    rc = main(["segment", str(src), "--server", "127.0.0.1:1", "--project", str(runs)])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines == [
        "lsdseg segment: error: lost the lsdseg server at http://127.0.0.1:1 during a frame"
    ]
    summary = json.loads((runs / "exp" / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["stopped_by"] == "server"
    assert summary["settings"]["server"] == "http://127.0.0.1:1"
    assert summary["settings"]["weights"] is None
    assert len((runs / "exp" / "records.csv").read_text().splitlines()) == 1 + 4


def test_bench_server_options_fail_early(capsys, refused_port):
    assert main(["bench", "--backend", "none"]) == 1
    assert "--backend none times nothing without --server" in capsys.readouterr().err
    assert main(["bench", "--server", "ftp://x:1"]) == 1
    assert "the scheme must be http:// or grpc://" in capsys.readouterr().err
    assert main(["bench", "--server", "x:1", "--clients", "0"]) == 1
    assert "--clients '0': 0 must be between 1 and 256" in capsys.readouterr().err
    args = ["bench", "--server", f"127.0.0.1:{refused_port}", "--backend", "none"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "cannot reach the lsdseg server" in err and "Traceback" not in err
