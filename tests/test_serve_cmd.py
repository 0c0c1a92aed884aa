"""Tests for ``lsdseg serve``'s checks and its libpython fix, without starting a server
(the real server is in test_serve.py)."""

from __future__ import annotations

import os
import socket
import sysconfig

import pytest

from lsdseg.cli import serve_cmd
from lsdseg.cli.main import main


def test_own_libpython_goes_first_once(monkeypatch):
    libdir = sysconfig.get_config_var("LIBDIR")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/opt/x:{libdir}:/opt/y")
    assert serve_cmd.use_own_libpython() == libdir
    assert os.environ["LD_LIBRARY_PATH"] == f"{libdir}:/opt/x:/opt/y"
    monkeypatch.delenv("LD_LIBRARY_PATH")
    serve_cmd.use_own_libpython()
    assert os.environ["LD_LIBRARY_PATH"] == libdir


def test_start_failures_are_explained():
    stub = RuntimeError(
        "[400] load failed for model 'lsdseg': ...\n    if self._lock._recursion_count() > 1:\n"
        "AttributeError: '_thread.RLock' object has no attribute '_recursion_count'"
    )
    text = serve_cmd.explain_start_failure(stub, "/py/lib")
    assert "loaded a libpython that is not this interpreter's" in text
    assert "/py/lib" in text and "--enable-shared" in text
    socket_path = RuntimeError("Traceback ...\nOSError: AF_UNIX path too long")
    assert "set PYTRITON_HOME" in serve_cmd.explain_start_failure(socket_path, None)
    other = RuntimeError("[400] load failed for model 'lsdseg'\n  File x\nValueError: bad thing")
    assert serve_cmd.explain_start_failure(other, None) == (
        "Triton Inference Server did not start: [400] load failed for model 'lsdseg' "
        "(ValueError: bad thing)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--instances", "0"], "--instances 0 must be >= 1"),
        (["--http-port", "0"], "--http-port 0 must be between 1 and 65535"),
        (["--grpc-port", "8000"], "the ports must differ"),
        (["--max-batch", "0"], "--max-batch 0 must be between 1 and 1024"),
        (["--max-queue-delay-us", "-1"], "--max-queue-delay-us -1 must be >= 0"),
        (["--threads", "-1"], "--threads -1 must be >= 1, or 0"),
    ],
)
def test_bad_options_are_one_line(capsys, args, message):
    assert main(["serve", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lsdseg serve: error: ") and message in err


def test_missing_pytriton_names_the_extra(capsys, monkeypatch):
    real = serve_cmd.importlib.util.find_spec
    monkeypatch.setattr(
        serve_cmd.importlib.util, "find_spec", lambda n: None if n == "pytriton" else real(n)
    )
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "PyTriton is not installed" in err and "lsdseg[serve]" in err
    assert "constraints/serve.txt" in err


def test_a_port_in_use_is_named(capsys, monkeypatch):
    monkeypatch.setattr(serve_cmd.importlib.util, "find_spec", lambda n: object())
    with socket.socket() as a, socket.socket() as b, socket.socket() as busy:
        for s in (a, b, busy):
            s.bind(("127.0.0.1", 0))
        busy.listen()
        http, metrics, port = (s.getsockname()[1] for s in (a, b, busy))
        a.close()
        b.close()
        args = ["--http-port", str(http), "--grpc-port", str(port), "--metrics-port", str(metrics)]
        assert main(["serve", *args]) == 1
    err = capsys.readouterr().err
    assert f"--grpc-port {port}: cannot listen on 127.0.0.1:{port}" in err


def test_a_cpu_server_asks_for_no_gpu_metrics(tmp_path):
    """GPU metrics start NVML, which printed "Error: Failed to initialize NVML" on a machine
    without an NVIDIA driver; a CPU server does not ask for them, a CUDA one keeps them."""
    import torch

    from lsdseg.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--http-port", "9000"])
    cpu = serve_cmd.server_options(args, torch.device("cpu"), tmp_path / "log")
    assert cpu["allow_gpu_metrics"] is False and cpu["http_port"] == 9000
    assert cpu["log_file"] == tmp_path / "log"
    cuda = serve_cmd.server_options(args, torch.device("cuda", 0), None)
    assert "allow_gpu_metrics" not in cuda  # Triton's default: on


def test_server_options_are_triton_config_fields(tmp_path):
    import torch

    from lsdseg.cli.main import build_parser

    fields = pytest.importorskip("pytriton.triton").TritonConfig.__dataclass_fields__
    args = build_parser().parse_args(["serve"])
    assert set(serve_cmd.server_options(args, torch.device("cpu"), None)) <= set(fields)


def test_serve_help_promises_no_summary_json():
    from lsdseg.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
               and "serve" in a.choices)  # fmt: skip
    helps = {a.dest: a.help for a in sub.choices["serve"]._actions}
    assert "summary.json" not in helps["precision"]
    segment = {a.dest: a.help for a in sub.choices["segment"]._actions}
    assert "recorded in summary.json" in segment["precision"]


_PARENT = """
import subprocess, sys, time
from lsdseg.cli.serve_guard import watch_children
server = subprocess.Popen([sys.argv[1], "600"])  # stands in for tritonserver
time.sleep(0.3)
watchdog = watch_children("tritonserver")
print(server.pid, watchdog.pid if watchdog else -1, flush=True)
time.sleep(600)
"""


def test_a_killed_serve_takes_its_server_with_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    fake = tmp_path / "tritonserver"  # a long sleep under the server's name
    fake.symlink_to("/bin/sleep")
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(fake)], stdout=subprocess.PIPE, text=True
    )
    try:
        server, watchdog = map(int, parent.stdout.readline().split())
        assert watchdog > 0
        os.kill(server, 0)  # running
        parent.kill()  # SIGKILL: nothing of lsdseg serve runs after it
        parent.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(server, 0)
            except ProcessLookupError:
                break
            try:
                with open(f"/proc/{server}/stat") as f:  # a zombie (reaped by init) is gone
                    if f.read().split(") ")[1].startswith("Z"):
                        break
            except OSError:  # reaped meanwhile
                break
            time.sleep(0.2)
        else:
            os.kill(server, signal.SIGKILL)
            pytest.fail("the server outlived the killed lsdseg serve")
    finally:
        parent.kill()
