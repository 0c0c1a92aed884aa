"""What the decision filter over time costs and saves, per setting, on frames played as video.

    python scripts/presence_filter_ablation.py --weights default \\
        --sequences CVC-ClinicDB/ --groups 5,20 --negatives normal-colon/ --val-fraction 0.1

- cost: on each polyp video (a ``--sequences`` dataset's sequences, frames in order), the delay
  in frames until the polyp is first shown, and the share of its frames shown;
- saving: on polyp-free frames played in name order (``--negatives``; with ``--val-fraction``
  only the validation runs that ``lsdseg train --negatives`` holds out), the share of frames on
  which a polyp is shown (false alarms), each run of neighbours played as one video.

Only the frame-level decision is replayed (the presence score against the checkpoint's
threshold, :class:`lsdseg.decision.PresenceFilter`): the score comes from the image encoder,
so no sampling is needed. The table goes to stdout and, with ``--json``, to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np

from lsdseg.data import DataError, find_pairs, load_pairs, load_sample, natural_key
from lsdseg.decision import PresenceFilter
from lsdseg.presence_train import pooled_features, score_sets
from lsdseg.segmenter import load

# (window, on, off); (1, 1, 1) is no filter
SETTINGS = ((1, 1, 1), (3, 2, 1), (5, 3, 2), (5, 3, 1), (7, 4, 2), (13, 7, 4))


def scores(seg, images: list[np.ndarray]) -> np.ndarray:
    """The presence score of each RGB image."""
    model = seg.model
    if model.presence is None:
        raise ValueError("these weights have no presence head: every frame scores 1")
    return score_sets(model.presence, {"frames": pooled_features(model, images)})["frames"]


def replay(decisions: np.ndarray, setting: tuple[int, int, int]) -> np.ndarray:
    """The shown state of each frame of one video under a filter setting."""
    f = PresenceFilter(*setting)
    return np.array([f.update(bool(d)) for d in decisions])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="default")
    p.add_argument("--sequences", required=True, help="a dataset with sequences.csv")
    p.add_argument("--groups", default="", help="comma-separated sequences (default: all)")
    p.add_argument("--negatives", required=True, help="a folder of polyp-free frames")
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    try:
        seg = load(args.weights, device="cpu")
        threshold = seg.config.sampler.presence_threshold
        _, pairs = find_pairs(args.sequences)
        wanted = {g.strip() for g in args.groups.split(",") if g.strip()}
        videos: dict[str, list] = defaultdict(list)
        for q in pairs:
            if q.mask is not None and (not wanted or q.group in wanted):
                videos[q.group].append(q)
        if args.val_fraction is None:
            neg = list(find_pairs(args.negatives)[1])
            runs = {"all": sorted(neg, key=lambda q: natural_key(q.image))}
        else:
            _, val = load_pairs(
                [], None, args.val_fraction, args.split_seed, None, [args.negatives]
            )
            runs = defaultdict(list)
            for q in val:
                runs[q.group].append(q)
        if not videos or not runs:
            raise DataError("no polyp video or no polyp-free frames found")
        video_scores = {
            g: scores(
                seg, [load_sample(q)[0] for q in sorted(v, key=lambda q: natural_key(q.image))]
            )
            for g, v in videos.items()
        }
        run_scores = {g: scores(seg, [load_sample(q)[0] for q in v]) for g, v in runs.items()}
    except (DataError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"presence_filter_ablation.py: error: {e}", file=sys.stderr)
        return 2
    rows = []
    for setting in SETTINGS:
        delays, shown = {}, []
        for g, s in video_scores.items():
            on = replay(s >= threshold, setting)
            delays[g] = int(np.argmax(on)) if on.any() else None
            shown.append(on)
        alarms = np.concatenate([replay(s >= threshold, setting) for s in run_scores.values()])
        rows.append(
            {
                "window": setting[0],
                "on": setting[1],
                "off": setting[2],
                "delay_frames": delays,
                "polyp_frames_shown": float(np.concatenate(shown).mean()),
                "false_alarm_rate": float(alarms.mean()),
            }
        )
    n_neg = sum(len(s) for s in run_scores.values())
    n_pos = sum(len(s) for s in video_scores.values())
    print(
        f"presence threshold {threshold:.4f}; {len(video_scores)} polyp videos ({n_pos} frames), "
        f"{len(run_scores)} polyp-free runs ({n_neg} frames)"
    )
    print("| filter | delay (frames) per video | polyp frames shown | false alarms |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        name = "none" if r["window"] == 1 else f"{r['on']} of {r['window']}, off below {r['off']}"
        delay = ", ".join(f"{g}: {d}" for g, d in r["delay_frames"].items())
        print(f"| {name} | {delay} | {r['polyp_frames_shown']:.3f} | {r['false_alarm_rate']:.4f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threshold": threshold, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
