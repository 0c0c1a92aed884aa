"""Run the Triton kernel tests (bf16 included) and benchmarks on a CUDA machine, in one go.

Meant for a bare GPU machine with torch and triton preinstalled and no network: it needs no
install. ``lsdseg.kernels``, ``lsdseg.cli`` and ``lsdseg.export`` live in top-level folders that
only an install maps under ``lsdseg``, so unless the installed ``lsdseg`` already resolves them,
the script builds a symlink tree (``<tmp>/lsdseg`` = links to ``lsdseg/*`` plus ``kernels``,
``cli``, ``export``) and runs everything with that tree first on the path.

Writes under ``--out`` (default ``$OUT``, else ``.benchmarks/gpu_checks``):

- ``env.json``: GPU, driver, Python, torch, triton, date;
- ``tests.log`` and ``tests.xml``: the kernel test files (TRITON_INTERPRET unset, so compiled);
- ``bench.log`` and ``bench_kernels.json``: ``benchmarks/bench_kernels.py`` (pytest-benchmark);
- ``summary.md``: the benchmark tables and the issue's targets, ready for benchmarks/RESULTS.md
  (made by ``scripts/kernel_bench_summary.py``).

Usage, from the repository root (one device call each if 10 minutes are too few for both)::

    python3 scripts/gpu_checks.py                  # tests, then benchmarks, then summary
    python3 scripts/gpu_checks.py --no-bench       # tests only
    python3 scripts/gpu_checks.py --no-tests -k attention
    python3 scripts/gpu_checks.py --summarize-only # summary.md from an existing JSON
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = [
    "tests/test_kernels_group_norm.py",
    "tests/test_kernels_attention.py",
    "tests/test_kernels_backend.py",
    "tests/test_ops.py",
]
PLUGINS = ("kernels", "cli", "export")


def _probe(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    code = "import lsdseg.kernels, lsdseg.cli.bench_cmd; print(lsdseg.kernels.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True
    )


def python_env(force_shadow: bool = False) -> tuple[dict[str, str], Path]:
    """(environment, working directory) in which ``import lsdseg.kernels`` works."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    if not force_shadow and _probe(env, Path("/")).returncode == 0:  # an install maps them
        return env, ROOT
    shadow = Path(tempfile.mkdtemp(prefix="lsdseg-shadow-"))
    pkg = shadow / "lsdseg"
    pkg.mkdir()
    for child in (ROOT / "lsdseg").iterdir():
        if child.name != "__pycache__":
            (pkg / child.name).symlink_to(child)
    for plugin in PLUGINS:
        (pkg / plugin).symlink_to(ROOT / plugin)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), env.get("PYTHONPATH")]))
    # run from the shadow tree: `python -m pytest` puts the working directory first on sys.path,
    # and from the repository root that would be the unmapped lsdseg/
    probe = _probe(env, shadow)
    if probe.returncode != 0:
        sys.exit(f"cannot import lsdseg.kernels even through {shadow}:\n{probe.stderr}")
    print(f"lsdseg.kernels from {probe.stdout.strip()} (symlink tree {shadow})", flush=True)
    return env, shadow


def environment(env: dict[str, str], cwd: Path) -> dict[str, object]:
    code = (
        "import json, torch, triton\n"
        "d = {'torch': torch.__version__, 'triton': triton.__version__,\n"
        "     'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available()}\n"
        "if torch.cuda.is_available():\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    d.update(gpu=p.name, sms=p.multi_processor_count, memory_gib=p.total_memory / 2**30,\n"
        "             capability='.'.join(map(str, torch.cuda.get_device_capability())))\n"
        "print(json.dumps(d))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True
    )
    info: dict[str, object] = (
        json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr}
    )
    smi = (
        subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
        if _which("nvidia-smi")
        else None
    )
    info["nvidia_smi"] = smi.stdout.strip() if smi and smi.returncode == 0 else None
    info["python"] = platform.python_version()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info["git"] = _git_head()
    return info


def _which(name: str) -> bool:
    return any((Path(p) / name).exists() for p in os.environ.get("PATH", "").split(os.pathsep))


def _git_head() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_logged(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    timeout: float,
    append: bool = False,
) -> int:
    """Run ``cmd``, teeing its output line by line (flushed) into ``log`` (appended to with
    ``append``); returns its exit code, 124 if it ran past ``timeout`` seconds.

    The kill comes from a timer thread, so a child that hangs without printing, or prints
    forever, is stopped on time. The child gets its own process group and the whole group is
    killed: its workers (pytest-xdist, data loaders) would otherwise keep the pipe open.
    """
    print("$", " ".join(cmd), flush=True)
    with log.open("a" if append else "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            # it may have ended between the timer firing and the kill
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                sys.stdout.write(line)
                sys.stdout.flush()
                f.write(line)
                f.flush()
            code = proc.wait()
        finally:
            timer.cancel()
        if fired.is_set():
            msg = f"\n[gpu_checks] killed after {timeout:.0f} s (timeout)\n"
            f.write(msg)
            f.flush()
            print(msg, end="", flush=True)
            return 124
        return code


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = os.environ.get("OUT") or ROOT / ".benchmarks" / "gpu_checks"  # git-ignored
    p.add_argument("--out", type=Path, default=Path(default_out))
    p.add_argument("--no-tests", action="store_true", help="skip the kernel tests")
    p.add_argument("--no-bench", action="store_true", help="skip the benchmarks")
    p.add_argument("--summarize-only", action="store_true", help="only rebuild summary.md")
    p.add_argument("--shadow", action="store_true", help="use the symlink tree even if installed")
    p.add_argument("-k", default=None, help="pytest -k expression for the benchmarks")
    p.add_argument("--max-time", type=float, default=0.2, help="pytest-benchmark seconds per case")
    p.add_argument("--tests-timeout", type=float, default=240, help="seconds")
    p.add_argument("--bench-timeout", type=float, default=300, help="seconds")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bench_json = out / "bench_kernels.json"
    if args.summarize_only:
        env_info = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
        return _write_summary(bench_json, env_info, out)

    env, cwd = python_env(args.shadow)
    env_info = environment(env, cwd)
    (out / "env.json").write_text(json.dumps(env_info, indent=2))
    print(json.dumps(env_info, indent=2), flush=True)
    if not env_info.get("cuda_available"):
        print(
            "WARNING: torch sees no CUDA GPU: the kernel tests run in Triton's CPU interpreter "
            "(bf16 skipped) and the benchmarks skip",
            flush=True,
        )
    pytest = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(ROOT),
        "-c",
        str(ROOT / "pyproject.toml"),
    ]
    codes = {}
    if not args.no_tests:
        cmd = [*pytest, "-ra", "-q", f"--junitxml={out / 'tests.xml'}", "--durations=15"]
        if importlib.util.find_spec("xdist") is not None:
            cmd += ["-n", "4"]  # compilation dominates; spread it over processes
        cmd += [str(ROOT / f) for f in TEST_FILES]
        codes["tests"] = run_logged(cmd, env, cwd, out / "tests.log", args.tests_timeout)
    if not args.no_bench:
        cmd = [
            *pytest,
            "-q",
            "-ra",
            str(ROOT / "benchmarks" / "bench_kernels.py"),
            "--benchmark-only",
            f"--benchmark-json={bench_json}",
            f"--benchmark-max-time={args.max_time}",
            "--benchmark-min-rounds=10",
            "--benchmark-warmup=on",
            "--benchmark-warmup-iterations=5",
            "--benchmark-columns=median,iqr,rounds",
            "--benchmark-sort=name",
        ]
        if args.k:
            cmd += ["-k", args.k]
        codes["bench"] = run_logged(cmd, env, cwd, out / "bench.log", args.bench_timeout)
    if bench_json.exists():
        _write_summary(bench_json, env_info, out)
    print(f"[gpu_checks] exit codes: {codes}; outputs in {out}", flush=True)
    return max(codes.values(), default=0)


def _write_summary(bench_json: Path, env_info: dict, out: Path) -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from kernel_bench_summary import summarize

    text = summarize(json.loads(bench_json.read_text()), env_info)
    (out / "summary.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
