"""The real server: ``lsdseg serve`` (Triton Inference Server through PyTriton) on loopback.

PyTriton needs numpy<2, so these run in the serving environment (``make test-serve``:
.venv-serve) and skip in the main one. One server serves the module; the test that kills a
server starts its own. Every server runs in its own process group, so the test can stop,
freeze or kill it together with its tritonserver child.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip(
    "pytriton",
    reason="PyTriton is not installed here; the serving tests run in .venv-serve "
    "(make test-serve), as PyTriton needs numpy<2",
)

import lsdseg
from lsdseg.cli.remote import RemoteSegmenter, ServerError

K = 3
START_TIMEOUT_S = 120


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


@dataclass
class Server:
    proc: subprocess.Popen
    http: int
    grpc: int
    metrics: int
    log: Path
    home: Path  # PYTRITON_HOME: the workspace with its Unix sockets

    @property
    def pgid(self) -> int:
        return self.proc.pid  # a session leader: its pid is the group id

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGINT, as Ctrl-C would; SIGKILL the whole group if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.signal_group(signal.SIGKILL)  # whatever is left of the group
        self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)
        return self.proc.returncode


def start_server(weights: str, folder: Path, *extra: str) -> Server:
    http, grpc, metrics = free_ports(3)
    log = folder / "serve.log"
    # a short workspace path (Unix socket paths are limited to ~100 bytes), removed at the end
    home = Path(tempfile.mkdtemp(prefix="lsdseg-pytriton-"))
    env = dict(os.environ, PYTRITON_HOME=str(home), TMPDIR=str(home))
    cmd = [sys.executable, "-m", "lsdseg.cli.main", "serve", "--weights", weights]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, *extra], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(proc, http, grpc, metrics, log, home)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lsdseg serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if get(f"http://127.0.0.1:{http}/v2/models/lsdseg/ready", 2)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    pytest.fail(f"lsdseg serve not ready in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def clip(path: Path, n: int, h: int = 48, w: int = 64, fps: float = 10.0) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        f = np.full((h, w, 3), 70, np.uint8)
        cv2.circle(f, (w // 3 + (3 * i) % (w // 2), h // 2), h // 5, (40, 40, 210), -1)
        vw.write(f)
    vw.release()
    return path


def frame(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2] = [40, 180, 230]
    return img


def metric(server: Server, name: str) -> float:
    text = get(f"http://127.0.0.1:{server.metrics}/metrics")[1]
    found = re.search(rf'^{name}{{[^}}]*model="lsdseg"[^}}]*}} (\S+)$', text, re.M)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def records(folder: Path) -> list[dict]:
    with open(folder / "records.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    # a long queue delay so that concurrent requests reliably meet in one batch
    s = start_server(tiny, tmp_path_factory.mktemp("serve"), "--max-queue-delay-us", "200000")
    yield s
    s.stop()


def test_health_and_readiness_endpoints(server):
    base = f"http://127.0.0.1:{server.http}/v2"
    assert get(f"{base}/health/live")[0] == 200
    assert get(f"{base}/health/ready")[0] == 200
    assert get(f"{base}/models/lsdseg/ready")[0] == 200
    assert get(f"{base}/models/nonexistent/ready")[0] == 400
    config = json.loads(get(f"{base}/models/lsdseg/config")[1])
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert [i["name"] for i in config["input"]] == ["frame"]


def test_concurrent_clients_get_what_the_local_segmenter_gives(server, tiny):
    seg = lsdseg.load(tiny)
    threshold = seg.config.sampler.threshold
    before = metric(server, "nv_inference_exec_count")
    threads, rounds = 6, 3
    barrier = threading.Barrier(threads)
    answers: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []

    # one client object per protocol, shared by the threads (each gets its own connection)
    remotes = [
        RemoteSegmenter(f"127.0.0.1:{server.http}", timeout=60),
        RemoteSegmenter(f"grpc://127.0.0.1:{server.grpc}", timeout=60),
    ]

    def client(t: int) -> None:
        # half HTTP, half gRPC; thread 5 sends another frame size, threads 4-5 another K
        remote = remotes[t % 2]
        try:
            for r in range(rounds):
                h, w = (64, 48) if t == 5 else (40, 50)
                k = K if t < 4 else 2
                barrier.wait(timeout=60)
                answers[t, r] = remote(frame(10 * t + r, h, w), hypotheses=k, seed=100 * t + r)
        except BaseException as e:
            errors.append(e)
            barrier.abort()
        finally:
            remote.close()

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    assert len(answers) == threads * rounds
    for (t, r), got in answers.items():
        h, w = (64, 48) if t == 5 else (40, 50)
        local = seg(frame(10 * t + r, h, w), hypotheses=K if t < 4 else 2, seed=100 * t + r)
        assert got.seed == local.seed and got.mean.shape == (h, w)
        for name in ("mean", "std", "entropy", "mutual_info", "hypotheses"):
            np.testing.assert_allclose(getattr(got, name), getattr(local, name), atol=1e-5)
        clear = np.abs(local.mean - threshold) > 1e-4
        np.testing.assert_array_equal(got.mask[clear], local.mask[clear])
    # dynamic batching: fewer model executions than requests
    executions = metric(server, "nv_inference_exec_count") - before
    assert executions < threads * rounds
    assert metric(server, "nv_inference_request_success") >= threads * rounds


def test_segment_video_through_the_server_matches_local(server, tiny, tmp_path, capsys):
    from lsdseg.cli.main import main

    src = clip(tmp_path / "clip.mp4", 6)
    remote = ["segment", str(src), "-k", str(K), "--project", str(tmp_path / "remote")]
    assert main([*remote, "--server", f"127.0.0.1:{server.http}"]) == 0, capsys.readouterr()
    local = ["segment", str(src), "-k", str(K), "--project", str(tmp_path / "local")]
    assert main([*local, "--weights", tiny]) == 0, capsys.readouterr()
    got, want = records(tmp_path / "remote" / "exp"), records(tmp_path / "local" / "exp")
    assert len(got) == len(want) == 6
    for a, b in zip(got, want, strict=True):
        for key in ("area_fraction", "unc_frame_mean", "agreement"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4), key
    summary = json.loads((tmp_path / "remote" / "exp" / "summary.json").read_text())
    assert summary["settings"]["backend"] == "server" and summary["stopped_by"] is None


def run_segment(src: Path, server: str, timeout: float, project: Path) -> subprocess.Popen:
    """``lsdseg segment`` on a clip paced at its own fps (--realtime), in a subprocess."""
    cmd = [sys.executable, "-m", "lsdseg.cli.main", "segment", str(src), "--server", server]
    cmd += ["--server-timeout", str(timeout), "--realtime", "-k", "2", "--project", str(project)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = folder / "records.csv"
        if path.is_file() and len(path.read_text().splitlines()) > n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    pytest.fail(f"fewer than {n} frames in {timeout} s")


def test_stalled_server_stops_the_client_with_a_summary(server, tmp_path):
    src = clip(tmp_path / "clip.mp4", 300, fps=30.0)  # --realtime paces the file: ~10 s
    project = tmp_path / "runs"
    proc = run_segment(src, f"127.0.0.1:{server.http}", 2, project)
    try:
        wait_for_rows(project / "exp", 3, proc)
        server.signal_group(signal.SIGSTOP)  # the server freezes, connections stay open
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        waited = time.monotonic() - t0
    finally:
        server.signal_group(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and waited < 2 + 5, (waited, err)
    errors = [line for line in err.splitlines() if "error" in line]
    assert errors == [
        f"lsdseg segment: error: the lsdseg server at http://127.0.0.1:{server.http} "
        "did not answer a frame within 2 s"
    ]
    summary = json.loads((project / "exp" / "summary.json").read_text())
    assert summary["stopped_by"] == "server" and summary["frames"] >= 3
    # the server resumes and answers again
    remote = RemoteSegmenter(f"127.0.0.1:{server.http}", timeout=30)
    assert remote(frame(0, 40, 50), seed=1).seed == 1


def leftovers() -> set[Path]:
    """What a killed server leaves behind (a clean stop removes its own): shared memory, and
    the copy of the model that Triton's Python backend makes in /tmp whatever TMPDIR says."""
    found = set(Path("/tmp").glob("folder*"))
    if os.path.isdir("/dev/shm"):
        found |= {p for p in Path("/dev/shm").iterdir() if p.name.startswith(("pytrtion", "psm_"))}
    return found


def remove(paths: set[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def test_killed_server_stops_the_client_at_once(tiny, tmp_path):
    before = leftovers()
    doomed = start_server(tiny, tmp_path)
    src = clip(tmp_path / "clip.mp4", 300, fps=30.0)
    project = tmp_path / "runs"
    proc = run_segment(src, f"grpc://127.0.0.1:{doomed.grpc}", 20, project)
    try:
        wait_for_rows(project / "exp", 3, proc)
        doomed.signal_group(signal.SIGKILL)  # the server and its tritonserver, at once
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        waited = time.monotonic() - t0
    finally:
        doomed.stop()
        if proc.poll() is None:
            proc.kill()
        remove(leftovers() - before)
    assert proc.returncode == 1 and waited < 5, (waited, err)  # not the 20 s timeout
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert re.match(
        r"lsdseg segment: error: (cannot reach|lost) the lsdseg server at grpc://", errors[0]
    )
    summary = json.loads((project / "exp" / "summary.json").read_text())
    assert summary["stopped_by"] == "server" and summary["frames"] >= 3
    assert "stopped by server" in err  # the summary line
    with pytest.raises(ServerError, match="cannot reach"):
        RemoteSegmenter(f"127.0.0.1:{doomed.http}", timeout=5).check()


def test_bench_times_the_server_per_number_of_clients(server, tmp_path, capsys):
    from lsdseg.cli.main import main

    out = tmp_path / "bench.json"
    args = ["bench", "--server", f"grpc://127.0.0.1:{server.grpc}", "--clients", "1,3"]
    args += ["--backend", "none", "--hypotheses", "2", "--steps", "1", "--frame-size", "32"]
    rc = main([*args, "--warmup", "1", "--repeats", "4", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())["server"]
    assert [(r["clients"], r["frames"]) for r in rows] == [(1, 4), (3, 12)]
    for r in rows:
        assert r["fps"] > 0 and r["p95_ms"] >= r["median_ms"] > 0
        assert 0 <= r["overhead_ms"] <= r["mean_ms"]
    assert "x 1 client" in capsys.readouterr().out


def test_without_the_libpython_fix_the_failure_is_explained(tiny, tmp_path):
    """Where the Python-backend stub finds another libpython first (as on these machines),
    the server fails without ``use_own_libpython``; the user gets the reason in one line."""
    http, grpc, metrics = free_ports(3)
    home = Path(tempfile.mkdtemp(prefix="lsdseg-pytriton-"))
    code = (
        "import sys; from lsdseg.cli import serve_cmd; from lsdseg.cli.main import main; "
        "serve_cmd.use_own_libpython = lambda: None; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, "serve", "--weights", tiny, "--http-port", str(http)]
    cmd += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env.update(PYTRITON_HOME=str(home), TMPDIR=str(home))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # it serves: stop it and its tritonserver
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.skip("the server started: this machine's first libpython is the interpreter's")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    errors = [line for line in err.splitlines() if line.startswith("lsdseg serve: error")]
    assert proc.returncode == 1 and len(errors) == 1, err[-3000:]
    assert "Traceback" not in err
    assert "loaded a libpython that is not this interpreter's" in errors[0]


def _infer_json(server: Server, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http}/v2/models/lsdseg/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize(
    ("parameters", "shape", "message"),
    [
        ({"hypotheses": 0}, [1, 4, 4, 3], "hypotheses=0 must be between 1 and 256"),
        ({"eta": "nan"}, [1, 4, 4, 3], "eta=nan"),
        ({"colour": 1}, [1, 4, 4, 3], "unknown parameter 'colour'"),
        ({}, [1, 0, 4, 3], "the request cannot be read"),  # PyTriton cannot map it
    ],
)
def test_a_refused_request_is_answered_in_one_line_without_a_traceback(
    server, parameters, shape, message
):
    size = int(np.prod(shape))
    inputs = [{"name": "frame", "shape": shape, "datatype": "UINT8", "data": [0] * size}]
    status, body = _infer_json(server, {"inputs": inputs, "parameters": parameters})
    error = json.loads(body)["error"]
    assert status == 400 and message in error, (status, body)
    assert "Traceback" not in error and "\n" not in error and ".py" not in error, error
    assert server.proc.poll() is None  # the server goes on


def test_sigkill_of_serve_stops_its_tritonserver(tiny, tmp_path):
    s = start_server(tiny, tmp_path)
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(s.proc.pid), "tritonserver"], capture_output=True, text=True
        ).stdout.split()
        assert children, "no tritonserver child"
        s.proc.kill()  # SIGKILL of lsdseg serve alone, not of its group
        s.proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not any(Path(f"/proc/{pid}").exists() for pid in children):
                break
            time.sleep(0.3)
        else:
            pytest.fail("tritonserver outlived the killed lsdseg serve")
        with socket.socket() as sock:  # its port is free again (none listens on it)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", s.http))
    finally:
        s.stop()


def test_ctrl_c_stops_the_server_cleanly(server):
    code = server.stop()
    log = server.log.read_text()
    assert code == 0, log[-3000:]
    done = re.search(r"lsdseg serve: stopped; (\d+) frames in (\d+) batched calls", log)
    assert done, log[-3000:]
    frames, calls = int(done.group(1)), int(done.group(2))
    assert calls < frames  # frames from concurrent clients shared Segmenter calls
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{server.http}/v2/health/live", 2)
