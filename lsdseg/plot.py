"""A training run's ``progress.png``, drawn with matplotlib (the Agg backend, no display).

One panel per stage that ran (its training loss per epoch) and one for the validation Dice,
each with integer epoch ticks and readable value ticks. Three habits keep it honest:

- an axis spans at least :data:`MIN_SPAN` of its values' scale (0.01 of Dice, 1% of a loss), so
  a change of 3e-6 is drawn flat instead of as a steep line over ticks that all read 0.959;
- a stage that did not run has no panel and no legend entry;
- a per-dataset Dice that is the overall one (a single validation dataset) is not drawn twice.

matplotlib is an optional dependency (``pip install "lsdseg[plot]"``, part of ``[train]``);
without it :func:`plot_progress` raises :class:`MissingPlotting`, which the trainer turns
into one line and no picture.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

MIN_SPAN = 0.01  # an axis shows at least this share of its scale (1 for Dice, |mean| for losses)
INSTALL = 'pip install "lsdseg[plot]"'
STAGES = (("autoencoders", "stage 1: autoencoders"), ("diffusion", "stage 2: diffusion"))


class MissingPlotting(RuntimeError):
    """matplotlib is not installed (the message says how to install it)."""


def _series(rows: list[dict[str, str]], phase: str, column: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``column`` in the rows of ``phase`` that have a finite value."""
    xs, ys = [], []
    for r in rows:
        if r.get("phase") != phase or not r.get(column):
            continue
        value = float(r[column])
        if math.isfinite(value):
            xs.append(int(r["epoch"]))
            ys.append(value)
    return xs, ys


def _limits(values: list[float], scale: float) -> tuple[float, float]:
    """y limits around ``values`` spanning at least ``MIN_SPAN * scale``, with a margin."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, MIN_SPAN * scale)
    mid = (lo + hi) / 2
    return mid - 0.55 * span, mid + 0.55 * span


def _dice_columns(rows: list[dict[str, str]]) -> list[str]:
    """``val_dice`` and the per-dataset ``val_dice/NAME`` columns worth drawing: a per-dataset
    column identical to the overall one (one validation dataset) is left out."""
    columns = [c for c in (rows[0].keys() if rows else []) if c.startswith("val_dice")]
    overall = _series(rows, "diffusion", "val_dice")[1]
    keep = []
    for c in columns:
        ys = _series(rows, "diffusion", c)[1]
        if c != "val_dice" and overall and len(ys) == len(overall) and np.allclose(ys, overall):
            continue
        keep.append(c)
    return keep


def plot_progress(csv_path: str | Path, png_path: str | Path) -> None:
    """Plot a run's ``metrics.csv`` into ``png_path`` (see :func:`progress_figure`).

    Raises:
        MissingPlotting: matplotlib is not installed.
    """
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    fig = progress_figure(rows)
    fig.savefig(png_path)
    from matplotlib import pyplot as plt

    plt.close(fig)


def progress_figure(rows: list[dict[str, str]]) -> Any:
    """The matplotlib Figure of a run's ``metrics.csv`` rows: each stage's training loss and
    the validation Dice, one panel each.

    Raises:
        MissingPlotting: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise MissingPlotting(f"matplotlib is not installed: {INSTALL}") from None

    panels = []  # (title, y label, [(label, xs, ys)], scale)
    for phase, title in STAGES:
        xs, ys = _series(rows, phase, "loss")
        if ys:
            scale = max(abs(float(np.mean(ys))), 1e-12)
            panels.append((f"training loss, {title}", "loss", [("loss", xs, ys)], scale))
    dice = [(c.removeprefix("val_"), *_series(rows, "diffusion", c)) for c in _dice_columns(rows)]
    dice = [d for d in dice if d[2]]
    if dice:
        panels.append(("validation Dice, stage 2", "Dice", dice, 1.0))
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), dpi=100, squeeze=False)
    styles = ["-o", "--s", ":^", "-.d", "-v"]
    for ax, (title, ylabel, series, scale) in zip(axes[0], panels, strict=False):
        for i, (label, xs, ys) in enumerate(series):
            ax.plot(xs, ys, styles[i % len(styles)], label=label, markersize=3, linewidth=1.4)
        ax.set_ylim(*_limits([y for _, _, ys in series for y in ys], scale))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8, loc="best", framealpha=0.8)
    if not panels:
        axes[0][0].set_axis_off()
        axes[0][0].text(0.5, 0.5, "no epoch finished yet", ha="center", va="center")
    fig.tight_layout()
    return fig
