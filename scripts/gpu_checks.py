"""Everything lsdseg checks on a GPU, in one command (about 9 minutes; docs/gpu.md).

Meant for a bare GPU machine with torch and triton preinstalled and no network: it installs
nothing (``scripts/gpu_slot.py`` makes ``lsdseg`` importable from the working tree). Steps, in
order, each under its own timeout, each recorded in ``summary.json`` as soon as it ends:

1. ``compile``: ``scripts/compile_kernels.py`` with this machine's Triton: the model's kernel
   configurations and the attention tables for sm_90, checked for spills and shared memory;
2. ``tests``: the kernel test files, compiled (fp32, fp16 and bf16);
3. ``bench``: ``benchmarks/bench_kernels.py``: GroupNorm+SiLU and attention against eager
   torch, SDPA and the copy ceiling, at the model's shapes and large ones;
4. ``e2e``: ``lsdseg bench``: Segmenter frames/s at K = 1, 8, 16 and 1, 2, 4 DDIM steps for the
   triton and torch backends, each eager and replayed as one whole-frame CUDA graph
   (``--cuda-graph both``), in fp32 and fp16 autocast (``--precision fp32,fp16``); the JSON is
   written after every row, so a step cut short by its timeout keeps the rows it timed;
5. ``train``: a 4-minute training probe, ``lsdseg train --time-limit`` from the bundled
   weights on a synthetic dataset (or ``--train-data``), reporting images/s and the loss.

Writes under ``--out`` (default ``.benchmarks/gpu_checks`` in the repository) six files:
``summary.json`` (environment, every step's status, seconds and results), ``summary.md``
(tables for benchmarks/RESULTS.md and the targets), ``gpu_checks.log`` (every step's output,
flushed line by line), ``tests.xml``, ``bench_kernels.json``, ``e2e.json``. The exit status is 0
only when every step that was asked for ran and passed.

``--smoke`` runs every step on the CPU instead, through Triton's interpreter at tiny shapes
(a tiny untrained checkpoint, a few synthetic images), in about two minutes: a check of this
script's whole control flow, whose numbers mean nothing. ``tests/test_gpu_checks.py`` runs it.

Usage, from the repository root::

    python3 scripts/gpu_checks.py                    # on the GPU machine: every step
    python3 scripts/gpu_checks.py --only tests,bench # some steps
    python3 scripts/gpu_checks.py --smoke            # here, on the CPU
    python3 scripts/gpu_checks.py --summarize-only   # summary.md again from --out's files
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gpu_slot import ROOT, environment, python_env, run_logged, update_summary

__all__ = ["ROOT", "environment", "main", "python_env", "run_logged", "update_summary"]

STEPS = ("compile", "tests", "bench", "e2e", "train")
TEST_FILES = [
    "tests/test_kernels_group_norm.py",
    "tests/test_kernels_attention.py",
    "tests/test_kernels_backend.py",
    "tests/test_ops.py",
]
# seconds per step on the H200: 9 minutes in all, the 4-minute training probe included (its
# --time-limit is 3.8 min, the rest is start-up); e2e times 72 rows (2 backends x 2 precisions
# x graph or not x 3 K x 3 steps) and their Triton compiles, the target row first
TIMEOUTS = {"compile": 40, "tests": 75, "bench": 75, "e2e": 100, "train": 250}
SMOKE_TIMEOUTS = {"compile": 120, "tests": 120, "bench": 120, "e2e": 60, "train": 90}
LOG = "gpu_checks.log"


class Plan:
    """What each step runs: the GPU run's settings, or the CPU smoke run's."""

    def __init__(self, args: argparse.Namespace, out: Path, scratch: Path) -> None:
        self.args, self.out, self.scratch, self.smoke = args, out, scratch, args.smoke
        self.device = "cpu" if self.smoke else "cuda"

    def weights(self, env: dict[str, str], cwd: Path) -> str:
        """``default`` on the GPU; a tiny untrained checkpoint (made once) for the smoke run."""
        if not self.smoke:
            return "default"
        folder = self.scratch / "tiny"
        if not folder.is_dir():
            code = (
                "import sys, torch\n"
                f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
                "from bench_kernels import smoke_config\n"
                "from lsdseg.checkpoint import save_checkpoint\n"
                "from lsdseg.model import LatentSegmenter\n"
                "torch.manual_seed(0)\n"
                f"save_checkpoint(LatentSegmenter(smoke_config()), {str(folder)!r})\n"
            )
            _check_call([sys.executable, "-c", code], env, cwd)
        return str(folder)

    def compile(self, env: dict[str, str], cwd: Path) -> list[str]:
        report = self.scratch / "compile.json"
        cmd = [sys.executable, str(ROOT / "scripts" / "compile_kernels.py"), "--arch", "90"]
        return [*cmd, "--no-tests", "--json", str(report)]

    def tests(self, env: dict[str, str], cwd: Path) -> list[str]:
        cmd = [*_pytest(), "-ra", "-q", f"--junitxml={self.out / 'tests.xml'}", "--durations=15"]
        if not self.smoke and _has("xdist"):
            cmd += ["-n", "8"]  # compilation dominates; spread it over processes
        return cmd + [str(ROOT / f) for f in TEST_FILES]

    def bench(self, env: dict[str, str], cwd: Path) -> list[str]:
        cmd = [*_pytest(), "-q", "-ra", str(ROOT / "benchmarks" / "bench_kernels.py")]
        cmd += ["--benchmark-only", f"--benchmark-json={self.out / 'bench_kernels.json'}"]
        cmd += ["--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name"]
        if self.smoke:
            return [*cmd, "--benchmark-min-rounds=1", "--benchmark-max-time=0",
                    "--benchmark-warmup=off"]  # fmt: skip
        cmd += [f"--benchmark-max-time={self.args.max_time}", "--benchmark-min-rounds=5"]
        cmd += ["--benchmark-warmup=on", "--benchmark-warmup-iterations=3"]
        return cmd + (["-k", self.args.k] if self.args.k else [])

    def e2e(self, env: dict[str, str], cwd: Path) -> list[str]:
        cmd = [sys.executable, "-m", "lsdseg.cli.main", "bench"]
        cmd += ["--weights", self.weights(env, cwd), "--device", self.device]
        cmd += ["--json", str(self.out / "e2e.json")]
        # lsdseg bench times triton, CUDA graphs and half precision on CUDA only (bench_kernels
        # ran triton here); on the GPU triton comes first, so the target row (K = 8,
        # triton + CUDA graph) is timed early even if the step runs out of time
        if self.smoke:
            return [*cmd, "--backend", "torch", "--hypotheses", "1,2", "--steps", "1",
                    "--warmup", "0", "--repeats", "1"]  # fmt: skip
        return [*cmd, "--backend", "triton,torch", "--cuda-graph", "both",
                "--precision", "fp32,fp16", "--hypotheses", "1,8,16", "--steps", "1,2,4",
                "--warmup", "3", "--repeats", "10"]  # fmt: skip

    def train(self, env: dict[str, str], cwd: Path) -> list[str]:
        data = self.args.train_data
        if not data:
            size, n = (32, 8) if self.smoke else (256, 256)
            data = [str(synthetic_data(self.scratch / "synthetic", n, size))]
        run = self.scratch / "run"
        cmd = [sys.executable, "-m", "lsdseg.cli.main", "train", "--out", str(run)]
        for d in data:
            cmd += ["--data", d]
        cmd += ["--stage", "diffusion", "--init", self.weights(env, cwd), "--device", self.device]
        cmd += ["--val-steps", "1", "--time-limit", str(self.args.train_minutes)]
        if self.smoke:
            return [*cmd, "--epochs", "1", "--batch-size", "4", "--max-steps-per-epoch", "2",
                    "--workers", "0"]  # fmt: skip
        return [*cmd, "--epochs", "1000", "--batch-size", "16", "--val-every", "5",
                "--workers", str(min(8, os.cpu_count() or 1))]  # fmt: skip


def _pytest() -> list[str]:
    root = ["--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml")]
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *root]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_call(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    import subprocess

    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{done.stderr[-2000:]}")


def synthetic_data(folder: Path, n: int, size: int) -> Path:
    """``n`` image/mask pairs (``images/``, ``masks/``) of one bright ellipse on noise."""
    import cv2
    import numpy as np

    if (folder / "masks").is_dir():
        return folder
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for i in range(n):
        image = rng.integers(20, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        centre = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
        axes = tuple(int(a) for a in rng.integers(size // 10, size // 4, 2))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        image[mask > 0] = (70, 90, 210)
        cv2.imwrite(str(folder / "images" / f"{i:04d}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"{i:04d}.png"), mask)
    return folder


# ---------------------------------------------------------------- reading the results


def compile_result(report: Path) -> dict:
    """Counts, worst registers per kernel and every problem of a compile_kernels.py report."""
    if not report.is_file():
        return {}
    data = json.loads(report.read_text())
    worst: dict[str, int] = {}
    for r in data["kernels"]:
        worst[r["kernel"]] = max(worst.get(r["kernel"], 0), r["registers"])
    problems = [
        f"sm_{r['arch']} {r['kernel']} {r['constants']}: {'; '.join(r['problems'])}"
        for r in data["kernels"]
        if r["problems"]
    ]
    return {"triton": data["triton"], "configurations": len(data["kernels"]),
            "max_registers": worst, "problems": problems}  # fmt: skip


def e2e_result(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    keys = ("backend", "precision", "cuda_graph", "hypotheses", "steps", "fps", "median_ms")
    defaults = {"precision": "fp32", "cuda_graph": False}  # an lsdseg bench without them
    rows = [{k: r.get(k, defaults.get(k)) for k in keys} for r in data["results"]]
    return {"rows": rows, "skipped": data.get("skipped", {})}


TARGET_FPS = 200  # issue 23: K = 8 with torch + Triton + CUDA graph on an H200


def e2e_lines(e2e: dict) -> list[str]:
    """summary.md's frames/s table and the target line (triton + CUDA graph at K = 8)."""
    rows = e2e.get("rows") or []
    if not rows:
        return []
    lines = ["### Segmenter frames/s (lsdseg bench, one frame at the model's size)", ""]
    lines += ["| backend | precision | CUDA graph | K | steps | frames/s | median ms |"]
    lines += ["|" + " --- |" * 7]
    for r in rows:
        graph = "yes" if r["cuda_graph"] else "no"
        cells = [r["backend"], r["precision"], graph, r["hypotheses"], r["steps"]]
        cells += [f"{r['fps']:.1f}", f"{r['median_ms']:.2f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    target = [r for r in rows if r["backend"] == "triton" and r["cuda_graph"]]
    target = [r for r in target if r["hypotheses"] == 8]
    lines.append("")
    if not any(r["cuda_graph"] for r in rows):
        lines.append("CUDA-graph rows: none in this run (lsdseg bench --cuda-graph needs CUDA).")
    for r in sorted(target, key=lambda r: (r["precision"], r["steps"])):
        verdict = "meets" if r["fps"] >= TARGET_FPS else "misses"
        lines.append(
            f"Target >= {TARGET_FPS} frames/s at K = 8, triton + CUDA graph, {r['precision']}, "
            f"{r['steps']} steps: {r['fps']:.1f} ({verdict} it)."
        )
    return lines


def train_result(run: Path, batch_size: int) -> dict:
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        return {}
    rows = list(csv.DictReader(metrics.read_text().splitlines()))
    last = rows[-1]
    seconds, steps = float(last["time_s"]), int(last["step"])
    return {
        "epochs": len(rows),
        "steps": steps,
        "seconds": seconds,
        "images_per_s": steps * batch_size / seconds if seconds else None,
        "loss": [float(r["loss"]) for r in rows if r.get("loss")],
        "val_dice": [float(r["val_dice"]) for r in rows if r.get("val_dice")],
    }


def write_summary_md(out: Path, summary: dict) -> Path:
    """summary.md: the step table, the benchmark tables and targets, the e2e and train rows."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kernel_bench_summary import summarize

    env = summary.get("environment", {})
    title = "## lsdseg GPU checks"
    if summary.get("smoke"):
        title += " (CPU smoke run: the numbers mean nothing)"
    lines = [title, "", "| step | status | seconds |", "| --- | --- | --- |"]
    for name, step in summary.get("steps", {}).items():
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.0f} |")
    compiled = summary.get("compile") or {}
    if compiled:
        problems = "; ".join(compiled["problems"]) or "none"
        lines += [
            "",
            f"Compiled for sm_90 with Triton {compiled['triton']}: "
            f"{compiled['configurations']} configurations, most registers per kernel "
            f"{compiled['max_registers']}; problems: {problems}.",
        ]
    bench = out / "bench_kernels.json"
    if bench.is_file():
        lines += ["", summarize(json.loads(bench.read_text()), env)]
    lines += e2e_lines(summary.get("e2e") or {})
    train = summary.get("train") or {}
    if train:
        loss = train["loss"][-1] if train["loss"] else "-"
        lines += [
            "",
            f"Training probe: {train['steps']} steps in {train['seconds']:.0f} s, "
            f"{train['images_per_s'] or 0:.1f} images/s, last loss {loss}.",
        ]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- running it


def run_steps(args: argparse.Namespace, out: Path, steps: list[str]) -> dict[str, dict]:
    """Run ``steps`` in order; each one's status lands in summary.json as soon as it ends."""
    env, cwd = python_env(args.shadow)
    if args.smoke:
        env["TRITON_INTERPRET"] = "1"  # set before any kernel module is imported
        env["LSDSEG_BENCH_SMOKE"] = "1"
    compiled_env = {k: v for k, v in env.items() if k != "TRITON_INTERPRET"}
    info = environment(compiled_env, cwd)
    (out / "summary.json").unlink(missing_ok=True)
    update_summary(out, environment=info, smoke=args.smoke, steps={})
    print(json.dumps(info, indent=2), flush=True)
    if not args.smoke and not info.get("cuda_available"):
        print("WARNING: torch sees no CUDA GPU here; use --smoke on a CPU", flush=True)
    (out / LOG).write_text("")
    scratch = Path(tempfile.mkdtemp(prefix="lsdseg-gpu-checks-"))
    plan = Plan(args, out, scratch)
    timeouts = SMOKE_TIMEOUTS if args.smoke else TIMEOUTS
    results: dict[str, dict] = {}
    readers: dict[str, Callable[[], dict]] = {
        "compile": lambda: compile_result(scratch / "compile.json"),
        "e2e": lambda: e2e_result(out / "e2e.json"),
        "train": lambda: train_result(scratch / "run", 4 if args.smoke else 16),
    }
    for name in steps:
        t0 = time.monotonic()
        step_env = compiled_env if name == "compile" else env
        try:
            cmd = getattr(plan, name)(step_env, cwd)
        except (RuntimeError, OSError) as e:  # e.g. the tiny checkpoint could not be made
            code, cmd = 1, [f"<{name} could not start: {e}>"]
        else:
            code = run_logged(cmd, step_env, cwd, out / LOG, timeouts[name], append=True)
        status = "ok" if code == 0 else ("timeout" if code == 124 else f"failed (exit {code})")
        results[name] = {"status": status, "exit_code": code,
                         "seconds": time.monotonic() - t0, "command": cmd}  # fmt: skip
        fields: dict[str, object] = {"steps": results}
        if name in readers:
            fields[name] = readers[name]()
        summary = update_summary(out, **fields)
        write_summary_md(out, summary)
        print(f"[gpu_checks] {name}: {status} in {results[name]['seconds']:.0f} s", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(  # in the repository, git-ignored
        "--out", type=Path, default=ROOT / ".benchmarks" / "gpu_checks", help="results folder"
    )
    p.add_argument("--smoke", action="store_true", help="every step on the CPU, tiny shapes")
    p.add_argument("--only", help=f"comma-separated steps of {','.join(STEPS)}")
    p.add_argument("--skip", default="", help="comma-separated steps to leave out")
    p.add_argument("--summarize-only", action="store_true", help="only rebuild summary.md")
    p.add_argument("--shadow", action="store_true", help="use the symlink tree even if installed")
    p.add_argument("-k", default=None, help="pytest -k expression for the benchmarks")
    p.add_argument("--max-time", type=float, default=0.1, help="pytest-benchmark s per case")
    p.add_argument("--train-data", action="append", help="dataset folders for the train probe")
    p.add_argument("--train-minutes", type=float, default=None, help="train probe's time limit")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.summarize_only:
        summary_file = out / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        print(write_summary_md(out, summary).read_text(), flush=True)
        return 0
    chosen = args.only.split(",") if args.only else list(STEPS)
    skipped = [s for s in args.skip.split(",") if s]
    for name in chosen + skipped:
        if name not in STEPS:
            p.error(f"unknown step {name!r}; the steps are {', '.join(STEPS)}")
    if args.train_minutes is None:
        args.train_minutes = 0.5 if args.smoke else 3.8
    steps = [s for s in chosen if s not in skipped]
    results = run_steps(args, out, steps)
    print((out / "summary.md").read_text(), flush=True)
    failed = {n: r["status"] for n, r in results.items() if r["status"] != "ok"}
    print(f"[gpu_checks] {len(results) - len(failed)} of {len(results)} steps passed"
          + (f"; not: {failed}" if failed else "") + f"; outputs in {out}", flush=True)  # fmt: skip
    return 0 if not failed and len(results) == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
