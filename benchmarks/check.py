"""Latency regression check: run the benchmark suites and compare medians with a baseline.

    python benchmarks/check.py                 # compare with this machine class's baseline
    python benchmarks/check.py --update        # refresh the baseline on purpose, then commit it
    python benchmarks/check.py -k segmenter    # a subset (extra arguments go to pytest)

The baseline is a pytest-benchmark JSON file in ``benchmarks/baselines/``, one per machine
class: ``cpu-<N>core-<cpu-model>`` on a CPU-only machine (e.g. ``cpu-2core-amd-epyc``: two
2-core VMs of different CPU models ran the same suites 2-3x apart), ``<gpu-name>`` (e.g.
``nvidia-h100-80gb-hbm3``) with CUDA. A benchmark fails the check when its median is more
than ``--tolerance`` (default 25%) slower than the baseline's; benchmarks missing from either
side are listed, not failed.
Exit status: 0 all within tolerance, 1 a regression, 2 no baseline (or the suites failed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "baselines"


def slug(name: str) -> str:
    """``Intel(R) Xeon(R) Processor`` -> ``intel-xeon``: lower case, trademarks and the words
    "processor" and "cpu" dropped, runs of other characters as one hyphen."""
    name = re.sub(r"\((r|tm)\)|\b(processor|cpu)\b", " ", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def machine_class() -> str:
    """``cpu-2core-amd-epyc`` or a slug of the GPU's name: the baseline this machine uses."""
    import torch

    if torch.cuda.is_available():
        return slug(torch.cuda.get_device_name())
    from lsdseg.card import cpu_name

    return "-".join(filter(None, [f"cpu-{os.cpu_count()}core", slug(cpu_name())]))


def medians(path: Path) -> dict[str, float]:
    """Benchmark full name -> median seconds, from a pytest-benchmark JSON file."""
    data = json.loads(path.read_text())
    return {b["fullname"]: b["stats"]["median"] for b in data["benchmarks"]}


def compare(
    baseline: dict[str, float], current: dict[str, float], tolerance: float
) -> tuple[list[tuple[str, float, float, float]], list[str], list[str]]:
    """(rows of name, baseline s, current s, ratio), names only in current, only in baseline."""
    rows = [
        (name, baseline[name], current[name], current[name] / baseline[name])
        for name in sorted(baseline.keys() & current.keys())
    ]
    return rows, sorted(current.keys() - baseline.keys()), sorted(baseline.keys() - current.keys())


def _short(name: str) -> str:
    return name.replace("benchmarks/", "").replace(".py::test_", "::")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="baseline JSON (default: baselines/<machine class>)")
    parser.add_argument("--tolerance", type=float, default=0.25, help="allowed slowdown")
    parser.add_argument("--update", action="store_true", help="save this run as the baseline")
    parser.add_argument("--from-json", help="compare this saved run instead of running suites")
    args, pytest_args = parser.parse_known_args(argv)

    baseline_path = Path(args.baseline or BASELINES / f"{machine_class()}.json")
    if not args.update and not baseline_path.is_file():
        print(
            f"no baseline {baseline_path} for this machine class: run "
            f"`python benchmarks/check.py --update` to create it, then commit it",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        current_path = Path(args.from_json) if args.from_json else Path(tmp) / "current.json"
        if not args.from_json:
            command = [
                sys.executable,
                "-m",
                "pytest",
                str(HERE),
                "-q",
                "--benchmark-only",
                f"--benchmark-json={current_path}",
                *pytest_args,
            ]
            print("running:", " ".join(command), flush=True)
            if subprocess.call(command) != 0 or not current_path.is_file():
                print("the benchmark suites failed; nothing compared", file=sys.stderr)
                return 2
        if args.update:
            BASELINES.mkdir(exist_ok=True)
            tmp_out = baseline_path.with_name(f".{baseline_path.name}.tmp")
            shutil.copyfile(current_path, tmp_out)
            os.replace(tmp_out, baseline_path)
            print(f"saved {len(medians(baseline_path))} medians as baseline {baseline_path}")
            return 0
        rows, new, gone = compare(medians(baseline_path), medians(current_path), args.tolerance)

    slower = [r for r in rows if r[3] > 1 + args.tolerance]
    width = max((len(_short(r[0])) for r in rows), default=20)
    print(f"\n{'benchmark':<{width}}  baseline ms  current ms  ratio")
    for name, base, cur, ratio in rows:
        flag = "  SLOWER" if ratio > 1 + args.tolerance else ""
        print(f"{_short(name):<{width}}  {base * 1e3:11.2f}  {cur * 1e3:10.2f}  {ratio:5.2f}{flag}")
    for name in new:
        print(f"new (not in the baseline): {_short(name)}")
    for name in gone:
        print(f"in the baseline, not run here: {_short(name)}")
    if slower:
        print(
            f"\n{len(slower)} of {len(rows)} benchmarks are more than {args.tolerance:.0%} slower "
            f"than {baseline_path.name}",
            file=sys.stderr,
        )
        return 1
    print(f"\nall {len(rows)} medians within {args.tolerance:.0%} of {baseline_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
