"""scripts/gpu_checks.py: the step runner that a GPU slot depends on (timeouts, logs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------- the whole script, --smoke

SCRIPT = ROOT / "scripts" / "gpu_checks.py"


def _smoke(out: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_smoke_runs_every_step_on_the_cpu_and_writes_what_a_slot_brings_back(tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    done = _smoke(out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert time.monotonic() - t0 < 300
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["steps"]) == ["compile", "tests", "bench", "e2e", "train"]
    assert {s["status"] for s in summary["steps"].values()} == {"ok"}
    assert summary["compile"]["configurations"] > 0 and summary["compile"]["problems"] == []
    assert {r["backend"] for r in summary["e2e"]["rows"]} == {"torch"}
    assert summary["train"]["steps"] >= 1 and summary["train"]["loss"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench_kernels.json", "e2e.json", "gpu_checks.log", "summary.json",
                     "summary.md", "tests.xml"]  # fmt: skip
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())  # a slot's per-file limit
    bench = json.loads((out / "bench_kernels.json").read_text())["benchmarks"]
    ops = {b["extra_info"].get("op") for b in bench}
    assert ops == {"group_norm_silu", "copy", "attention", "segmenter"}
    text = (out / "summary.md").read_text()
    assert "| train | ok |" in text and "GroupNorm+SiLU" in text and "frames/s" in text


def test_a_failing_step_makes_the_exit_status_nonzero_and_is_recorded(tmp_path):
    out = tmp_path / "out"
    done = _smoke(out, "--only", "train", "--train-data", str(tmp_path / "missing"), timeout=200)
    assert done.returncode == 1
    step = json.loads((out / "summary.json").read_text())["steps"]["train"]
    assert step["status"].startswith("failed")
    assert "0 of 1 steps passed" in done.stdout


def test_an_unknown_step_is_refused_with_the_list(tmp_path):
    done = _smoke(tmp_path / "out", "--only", "tests,benchmarks", timeout=60)
    assert done.returncode == 2
    assert "unknown step 'benchmarks'; the steps are compile, tests, bench, e2e, train" in (
        done.stderr
    )


# ---------------------------------------------------------------- the frames/s step


def test_the_gpu_e2e_step_asks_lsdseg_bench_for_every_row(tmp_path):
    import argparse

    import torch

    from lsdseg.cli import bench_cmd
    from lsdseg.cli.main import build_parser

    gpu_checks = load_script("scripts/gpu_checks.py")
    plan = gpu_checks.Plan(argparse.Namespace(smoke=False), tmp_path, tmp_path)
    cmd = plan.e2e({}, ROOT)
    args = build_parser().parse_args(cmd[cmd.index("bench") :])  # the flags are bench's own
    rows = bench_cmd.plan_rows(
        bench_cmd.pick_backends(args.backend, torch.device("cuda"))[0],
        bench_cmd.parse_precisions(args),
        bench_cmd.GRAPH_MODES[args.cuda_graph],
        torch.device("cuda"),
        False,
        {},
    )
    assert sorted(rows) == sorted(
        (b, p, g) for b in ("torch", "triton") for p in ("fp32", "fp16") for g in (False, True)
    )
    assert rows[1] == ("triton", "fp32", True)  # the target's row early, before a timeout
    assert (args.hypotheses, args.steps) == ("1,8,16", "1,2,4")
    assert sum(gpu_checks.TIMEOUTS.values()) <= 9 * 60


def test_summary_md_shows_graph_and_half_rows_and_the_target(tmp_path):
    gpu_checks = load_script("scripts/gpu_checks.py")
    results = [
        {"backend": b, "precision": p, "cuda_graph": g, "hypotheses": 8, "steps": 4,
         "fps": fps, "median_ms": 1000 / fps}
        for b, p, g, fps in [("triton", "fp32", False, 90.0), ("triton", "fp32", True, 250.0),
                             ("triton", "fp16", True, 180.0), ("torch", "fp32", True, 150.0)]
    ]  # fmt: skip
    (tmp_path / "e2e.json").write_text(json.dumps({"results": results, "skipped": {}}))
    e2e = gpu_checks.e2e_result(tmp_path / "e2e.json")
    text = gpu_checks.write_summary_md(tmp_path, {"e2e": e2e}).read_text()
    assert "| triton | fp16 | yes | 8 | 4 | 180.0 | 5.56 |" in text
    assert "| triton | fp32 | no | 8 | 4 | 90.0 | 11.11 |" in text
    assert "triton + CUDA graph, fp32, 4 steps: 250.0 (meets it)" in text
    assert "triton + CUDA graph, fp16, 4 steps: 180.0 (misses it)" in text
    assert "torch + CUDA graph" not in text and "none in this run" not in text
    # an eager-only run (the CPU smoke run), from a bench JSON without the new fields
    old = [{k: v for k, v in results[0].items() if k not in ("precision", "cuda_graph")}]
    (tmp_path / "e2e.json").write_text(json.dumps({"results": old}))
    e2e = gpu_checks.e2e_result(tmp_path / "e2e.json")
    text = gpu_checks.write_summary_md(tmp_path, {"e2e": e2e}).read_text()
    assert "| triton | fp32 | no | 8 | 4 | 90.0 |" in text and "none in this run" in text
