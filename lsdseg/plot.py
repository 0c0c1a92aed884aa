"""A training progress plot drawn with OpenCV (no plotting library needed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _panel(series: dict[str, list[float]], title: str, w: int = 480, h: int = 320) -> np.ndarray:
    import cv2

    img = np.full((h, w, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    values = [v for vs in series.values() for v in vs if math.isfinite(v)]
    if not values:
        return img
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    x0, y0, x1, y1 = 50, 35, w - 10, h - 30
    cv2.rectangle(img, (x0, y0), (x1, y1), (180, 180, 180), 1)
    for frac in (0.0, 0.5, 1.0):
        y = int(y1 - frac * (y1 - y0))
        label = f"{lo + frac * (hi - lo):.3g}"
        cv2.putText(img, label, (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    for i, (name, vs) in enumerate(series.items()):
        pts = [
            (
                int(x0 + j / max(1, len(vs) - 1) * (x1 - x0)),
                int(y1 - (v - lo) / (hi - lo) * (y1 - y0)),
            )
            for j, v in enumerate(vs)
            if math.isfinite(v)
        ]
        colour = _COLOURS[i % len(_COLOURS)][::-1]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        cv2.putText(img, name, (x0 + 5, y0 + 15 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return img


def plot_progress(csv_path: str | Path, png_path: str | Path) -> None:
    """Plot per-epoch losses (left) and validation Dice (right) from a run's metrics.csv."""
    import cv2

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))

    def col(name: str, phase: str) -> list[float]:
        return [float(r[name]) for r in rows if r.get("phase") == phase and r.get(name)]

    losses = {"stage 1 loss": col("loss", "autoencoders"), "stage 2 loss": col("loss", "diffusion")}
    dice = {
        k: col(k, "diffusion") for k in (rows[0].keys() if rows else []) if k.startswith("val_dice")
    }
    for r in rows[1:]:
        dice.update({k: col(k, "diffusion") for k in r if k.startswith("val_dice")})
    img = np.concatenate([_panel(losses, "training loss"), _panel(dice, "validation Dice")], axis=1)
    cv2.imwrite(str(png_path), img)
