"""Interleaved latency of two weights: image encoder and a whole Segmenter call (K = 8).

Benchmarks run one after another drift on a shared VM (up to 35% between runs here), so the cost
of an architecture change is measured by alternating the two models in one process: each round
times A then B (or B then A on odd rounds), and the medians are compared.

    python scripts/compare_latency.py lsdseg/weights/default runs/train/default-v10/last:ema
    python scripts/compare_latency.py OLD NEW --backend onnx  # Segmenter calls via ONNX Runtime
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from bundle_weights import load_weights

import lsdseg
from lsdseg.checkpoint import without_image_decoder
from lsdseg.segmenter import Segmenter


def _ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs=2, help="checkpoint folders (FOLDER:ema for a last/ EMA)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5, help="calls per model per round")
    p.add_argument(
        "--backend", default="torch", help="Segmenter backend (torch, onnx; plain folders only)"
    )
    args = p.parse_args()
    torch.manual_seed(0)
    models = [without_image_decoder(load_weights(w)).eval() for w in args.weights]
    if args.backend == "torch":
        segs = [Segmenter(m) for m in models]
    else:
        segs = [lsdseg.load(w, device="cpu", backend=args.backend) for w in args.weights]
    s = max(m.cfg.image_size for m in models)
    # one frame for both Segmenters (each resizes it to its own S); each encoder at its own S
    frame = np.random.default_rng(0).integers(0, 256, (s, s, 3), dtype=np.uint8)
    xs = [torch.randn(1, 3, m.cfg.image_size, m.cfg.image_size) for m in models]  # (1, 3, S, S)
    calls = [
        {
            "image encoder": lambda m=m, x=x: m.encode_image(x),
            "Segmenter call, K = 8, 1 step": lambda g=g: g(frame, hypotheses=8, steps=1, seed=0),
            # each checkpoint's own sampler defaults (steps, threshold), as users run it
            "Segmenter call, K = 8, default steps": lambda g=g: g(frame, hypotheses=8, seed=0),
        }
        for m, g, x in zip(models, segs, xs, strict=True)
    ]
    res: list[dict[str, list[float]]] = [{k: [] for k in c} for c in calls]
    with torch.inference_mode():
        for c in calls:  # warm-up
            for fn in c.values():
                _ms(fn, 3)
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                for name, fn in calls[i].items():
                    res[i][name].append(_ms(fn, args.repeats))
    print(
        f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.repeats} calls, "
        f"Segmenter backend {args.backend} (image encoder: torch)"
    )
    for name in calls[0]:
        a, b = (statistics.median(r[name]) for r in res)
        print(f"{name}: {a:.1f} ms ({args.weights[0]}) vs {b:.1f} ms ({args.weights[1]})")
    sizes = " and ".join(str(m.cfg.image_size) for m in models)
    print(f"image sizes S: {sizes}; Segmenter frames: {s}x{s} uint8")


if __name__ == "__main__":
    main()
