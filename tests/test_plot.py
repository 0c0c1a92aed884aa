"""progress.png: one panel per stage that ran, epoch ticks, readable value ticks, an honest
y range, no duplicate Dice line (matplotlib, Agg)."""

from __future__ import annotations

import csv
import sys

import cv2
import pytest

from lsdseg.plot import MIN_SPAN, MissingPlotting, plot_progress, progress_figure

pytest.importorskip("matplotlib")

HEADER = ["phase", "epoch", "loss", "val_dice", "val_dice/tiny"]


def _write(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)


def _rows(rows) -> list[dict[str, str]]:
    return [dict(zip(HEADER, map(str, r), strict=True)) for r in rows]


def test_a_diffusion_only_run_with_a_tiny_change(tmp_path):
    """The report: y ticks 0.959 / 0.959 / 0.959 under a steep line for a 3e-6 change, no epoch
    ticks, a stage-1 legend in a diffusion-only run, val_dice and val_dice/tiny on each other."""
    rows = [("diffusion", e, 0.5 - 0.01 * e, 0.959 + 1e-6 * e, 0.959 + 1e-6 * e) for e in (1, 2, 3)]
    fig = progress_figure(_rows(rows))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["training loss, stage 2: diffusion", "validation Dice, stage 2"]
    dice_ax = fig.axes[1]
    assert [line.get_label() for line in dice_ax.get_lines()] == ["dice"]  # /tiny is the same
    lo, hi = dice_ax.get_ylim()
    assert hi - lo >= MIN_SPAN  # 3e-6 is drawn flat, not across the whole panel
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert len(labels) == len(set(labels)) >= 3, labels  # ticks that say different things
        xs = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert xs and all(float(t).is_integer() for t in xs)  # epochs


def test_both_stages_and_two_datasets(tmp_path):
    rows = [("autoencoders", e, 1.0 / e, "", "") for e in (1, 2)]
    rows += [("diffusion", e, 0.5, 0.8 + 0.01 * e, 0.7) for e in (1, 2, 3)]
    fig = progress_figure(_rows(rows))
    assert fig.axes[0].get_title() == "training loss, stage 1: autoencoders"
    assert [line.get_label() for line in fig.axes[2].get_lines()] == ["dice", "dice/tiny"]
    assert fig.axes[2].get_legend() is not None
    _write(tmp_path / "metrics.csv", rows)
    plot_progress(tmp_path / "metrics.csv", tmp_path / "progress.png")
    assert cv2.imread(str(tmp_path / "progress.png")).shape[1] > 3 * 300


def test_without_matplotlib_it_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        MissingPlotting, match=r'matplotlib is not installed: pip install "lsdseg\[plot\]"'
    ):
        progress_figure(_rows([("diffusion", 1, 0.5, 0.9, 0.9)]))
