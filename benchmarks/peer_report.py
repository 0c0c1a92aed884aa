"""How many lsdseg frames (K = 8 hypotheses each) fit in one sample of the pixel-space peer.

    python benchmarks/peer_report.py benchmarks/results/peer-cpu-2core.json

Reads the pytest-benchmark JSON of ``benchmarks/bench_peer.py`` and prints the medians, the
peer's full 1000-step sample (extrapolated from one step, as that suite explains) and the ratio
as a Markdown table. Exit status 2 when the file lacks either benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def ratio_rows(data: dict) -> dict[str, float]:
    """Medians (s) of the peer step and of the lsdseg frame, the extrapolated sample and ratio.

    Raises:
        KeyError: a benchmark of ``bench_peer.py`` is missing from ``data``.
    """
    by_name = {b["name"]: b for b in data["benchmarks"]}
    step = by_name["test_peer_denoising_step"]
    frame = by_name["test_lsdseg_frame"]["stats"]["median"]
    timesteps = step["extra_info"]["timesteps"]
    sample = step["stats"]["median"] * timesteps
    return {
        "peer_step_s": step["stats"]["median"],
        "peer_timesteps": timesteps,
        "peer_sample_s": sample,
        "lsdseg_frame_s": frame,
        "frames_per_peer_sample": sample / frame,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON of bench_peer.py")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
        r = ratio_rows(data)
    except (OSError, ValueError) as e:
        print(f"cannot read {args.json}: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"{args.json} lacks benchmark {e}: did the peer suite skip?", file=sys.stderr)
        return 2
    info = data.get("machine_info", {})
    print(f"machine: {info.get('cpu', {}).get('brand_raw', '?')}, {info.get('node', '?')}")
    print("| what | median |")
    print("| --- | --- |")
    print(f"| peer, one denoising step (1 hypothesis) | {r['peer_step_s'] * 1e3:.1f} ms |")
    print(
        f"| peer, full sample = {r['peer_timesteps']} x step (extrapolated) | "
        f"{r['peer_sample_s']:.1f} s |"
    )
    print(f"| lsdseg, one frame, K = 8, 4 steps | {r['lsdseg_frame_s'] * 1e3:.1f} ms |")
    print(f"\nlsdseg frames (8 hypotheses each) per peer sample: {r['frames_per_peer_sample']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
