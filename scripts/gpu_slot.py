"""The plumbing of a time-limited run on a GPU machine, shared by ``gpu_checks.py`` and
``gpu_train.py``.

Such a machine may have torch and triton installed but no network, a cap on how long one command
runs and on what is kept. ``lsdseg.kernels``, ``lsdseg.cli`` and ``lsdseg.export`` live in
top-level folders that only an install maps under ``lsdseg``, so unless the installed ``lsdseg``
already resolves them, :func:`python_env` builds a symlink tree (``<tmp>/lsdseg`` = links to
``lsdseg/*`` plus ``kernels``, ``cli``, ``export``) and runs everything with it first on the
path. :func:`run_logged` runs one step with a timeout that fires and a log flushed line by line;
:func:`update_summary` keeps one JSON file whole and current whatever ends the command.
"""

from __future__ import annotations

import contextlib
import datetime
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


def update_summary(out: Path, **fields: object) -> dict:
    """Merge ``fields`` into ``out/summary.json`` and write it at once (atomically), so that
    whatever the slot's kill interrupts, the file that comes back is whole and current."""
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(fields)
    tmp = path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return summary
