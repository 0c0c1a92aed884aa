"""scripts/gpu_checks.py: the step runner that a GPU slot depends on (timeouts, logs)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_hung_child_is_killed_at_its_timeout(tmp_path):
    gpu_checks = load_script("scripts/gpu_checks.py")
    log = tmp_path / "step.log"
    cmd = _child("import time; print('started', flush=True); time.sleep(30)")
    t0 = time.monotonic()
    code = gpu_checks.run_logged(cmd, dict(os.environ), tmp_path, log, timeout=2)
    elapsed = time.monotonic() - t0
    assert code == 124
    assert elapsed < 3.5, f"returned after {elapsed:.1f} s for a 2 s timeout"
    text = log.read_text()
    assert "started" in text and "killed after 2 s (timeout)" in text


def test_the_kill_reaches_grandchildren_that_hold_the_pipe(tmp_path):
    gpu_checks = load_script("scripts/gpu_checks.py")
    # a worker process inheriting stdout, as pytest-xdist and data loaders do
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "time.sleep(30)\n"
    )
    t0 = time.monotonic()
    rc = gpu_checks.run_logged(_child(code), dict(os.environ), tmp_path, tmp_path / "l", 2)
    assert rc == 124 and time.monotonic() - t0 < 3.5


def test_each_line_reaches_the_log_while_the_child_runs(tmp_path):
    gpu_checks = load_script("scripts/gpu_checks.py")
    log = tmp_path / "step.log"
    cmd = _child("import time; print('first line', flush=True); time.sleep(4)")
    runner = threading.Thread(
        target=gpu_checks.run_logged, args=(cmd, dict(os.environ), tmp_path, log, 10)
    )
    runner.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if log.exists() and "first line" in log.read_text():
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the child's line was not in the log while it ran")
    finally:
        runner.join()


def test_exit_codes_pass_through_and_append_keeps_the_log(tmp_path):
    gpu_checks = load_script("scripts/gpu_checks.py")
    log = tmp_path / "step.log"
    env = dict(os.environ)
    assert gpu_checks.run_logged(_child("print('one')"), env, tmp_path, log, 20) == 0
    cmd = _child("import sys; print('two'); sys.exit(3)")
    assert gpu_checks.run_logged(cmd, env, tmp_path, log, 20, append=True) == 3
    text = log.read_text()
    assert text.index("one") < text.index("two") and "killed" not in text
