"""Measure ``--temporal`` warm starts against independent per-frame sampling on video sequences.

Runs every frame of the chosen CVC-ClinicDB sequences in order, once sampled independently and
once warm-started from the previous frame at each ``--timesteps`` value, and reports mean Dice
(at the frame's resolution) and mean latency for each. Use sequences the weights never trained
on (the default weights hold out 5 and 20). The study behind the ``--temporal`` table of
``benchmarks/RESULTS.md`` (why warm starts are off by default); it needs a video dataset with
sequences (``sequences.csv``), and times each frame once, so its latencies are indicative.

    python benchmarks/measure_temporal.py --data ../shared/data/cvc-clinicdb --sequences 5,20
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import lsdseg
from lsdseg.compare import dice
from lsdseg.data import find_pairs, load_sample


def run(seg, frames, steps: int, k: int, warm_t: int | None) -> dict[str, float]:
    dices, latencies, prev = [], [], None
    for i, (image, mask, first) in enumerate(frames):
        if first:
            prev = None  # a new sequence: nothing to warm-start from
        warm = (
            {} if warm_t is None or prev is None else {"warm_start": prev, "warm_timestep": warm_t}
        )
        t0 = time.perf_counter()
        r = seg(image, hypotheses=k, steps=steps, seed=i, order="rgb", **warm)
        latencies.append((time.perf_counter() - t0) * 1e3)
        dices.append(dice(r.mask, mask))
        prev = r
    return {"dice": float(np.mean(dices)), "latency_ms": float(np.mean(latencies))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--sequences", default="5,20")
    p.add_argument("--weights", default="default")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--hypotheses", type=int, default=8)
    p.add_argument("--timesteps", default="749,499,249")
    args = p.parse_args()
    seg = lsdseg.load(args.weights)
    wanted = args.sequences.split(",")
    _, pairs = find_pairs(args.data)
    frames, last_group = [], None
    for pair in pairs:
        if pair.group in wanted:
            image, mask = load_sample(pair)
            frames.append((image, mask, pair.group != last_group))
            last_group = pair.group
    seg(frames[0][0], hypotheses=args.hypotheses, steps=args.steps)  # warm-up, untimed
    out = {
        "frames": len(frames),
        "sequences": wanted,
        "steps": args.steps,
        "hypotheses": args.hypotheses,
        "independent": run(seg, frames, args.steps, args.hypotheses, None),
    }
    for t in (int(v) for v in args.timesteps.split(",")):
        out[f"warm@{t}"] = run(seg, frames, args.steps, args.hypotheses, t)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
