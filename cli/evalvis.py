"""The pictures of ``lsdseg evaluate --save-vis``, drawn with OpenCV (no plotting library).

- :func:`image_panel`, one PNG per image: the image with the ground-truth contour and the
  prediction contour in two colours and a legend, the per-image Dice and IoU in the title, and
  the uncertainty map with its colour scale: the mutual information of the K hypotheses (bits),
  the map ``lsdseg segment`` draws by default.
- :func:`summary_figure`, one PNG per run: a histogram of the per-image Dice, Dice against the
  polyp's size (its share of the image, log scale), and the reliability diagram behind the
  pooled ECE (:class:`Reliability`, the same 15 bins as :func:`lsdseg.metrics.ece_pooled`).

Colours are the Okabe-Ito pair that stays apart for colour-blind readers: ground truth yellow,
prediction sky blue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lsdseg.cli.overlay import colourise

GT_BGR = (66, 228, 240)  # ground truth: yellow (Okabe-Ito 240, 228, 66)
PRED_BGR = (233, 180, 86)  # prediction: sky blue (Okabe-Ito 86, 180, 233)
INK = (30, 30, 30)  # text and axes on white
GRID = (225, 225, 225)
BAR_BGR = (178, 114, 0)  # bars and points: blue (Okabe-Ito 0, 114, 178)
PANEL_H = 300  # height of each picture in an image panel, in pixels
# the width of each picture is the image's at PANEL_H, kept between these (an image wider
# than 4:1 or taller than 1:4 is squeezed: a 1 x 5000 image would need a 1.5 M-pixel panel)
PANEL_W = (PANEL_H // 4, 4 * PANEL_H)
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def _put(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45) -> None:
    import cv2

    cv2.putText(img, text, org, FONT, scale, INK, 1, cv2.LINE_AA)


def _width(text: str, scale: float = 0.45) -> int:
    import cv2

    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _fit(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map resized to ``size`` (W, H) with area averaging when it shrinks."""
    import cv2

    h, w = values.shape[:2]
    interp = cv2.INTER_AREA if size[0] <= w and size[1] <= h else cv2.INTER_LINEAR
    return cv2.resize(values, size, interpolation=interp)


def _contour(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draw the outline of ``mask`` (already at ``img``'s size) in place, 2 px wide."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, colour, 2, cv2.LINE_AA)


def _colour_bar(height: int, vmax: float, cmap: str) -> np.ndarray:
    """A vertical colour bar with ticks at 0, vmax / 2 and vmax, on white: (height, 70, 3)."""
    import cv2

    bar = np.full((height, 70, 3), 255, np.uint8)
    top, bottom = 10, height - 10
    ramp = np.linspace(vmax, 0.0, bottom - top, dtype=np.float32)[:, None].repeat(14, axis=1)
    bar[top:bottom, 6:20] = colourise(ramp, vmax, cmap)
    cv2.rectangle(bar, (6, top), (19, bottom - 1), INK, 1)
    for frac in (0.0, 0.5, 1.0):
        y = round(bottom - 1 - frac * (bottom - top - 1))
        cv2.line(bar, (20, y), (24, y), INK, 1)
        _put(bar, f"{frac * vmax:g}", (27, y + 5), 0.4)
    return bar


def image_panel(
    image: np.ndarray,
    mask: np.ndarray | None,
    pred: np.ndarray,
    uncertainty: np.ndarray,
    name: str,
    row: dict[str, Any] | None = None,
    label: str = "mutual information of the K hypotheses",
) -> np.ndarray:
    """One image's evaluation picture (BGR uint8): contours on the image, the uncertainty.

    Args:
        image: the image, RGB uint8 (H, W, 3).
        mask: the ground truth (H, W) bool, or None (unlabelled: the prediction only).
        pred: the predicted mask (H, W) bool.
        uncertainty: the uncertainty map (H, W), bits in [0, 1].
        name: the image's name, in the title.
        row: its per_image.csv row, for the Dice and IoU in the title.
        label: what ``uncertainty`` is, in the caption (with its unit, bits).

    Returns:
        (28 + PANEL_H + 26, 2 * W' + 70, 3): W' the image's width at height PANEL_H, kept
        within :data:`PANEL_W`.
    """
    import cv2

    h, w = image.shape[:2]
    size = (min(max(PANEL_W[0], round(w * PANEL_H / h)), PANEL_W[1]), PANEL_H)  # (W', H')
    left = np.ascontiguousarray(_fit(image[..., ::-1], size))
    small_pred = _fit(pred.astype(np.float32), size) > 0.5
    small_gt = None if mask is None else _fit(mask.astype(np.float32), size) > 0.5
    right = colourise(_fit(uncertainty.astype(np.float32), size), 1.0, "turbo")
    if small_gt is not None:
        _contour(left, small_gt, GT_BGR)
        _contour(right, small_gt, (255, 255, 255))
    _contour(left, small_pred, PRED_BGR)
    pictures = np.concatenate([left, right, _colour_bar(PANEL_H, 1.0, "turbo")], 1)
    width = pictures.shape[1]

    title = np.full((28, width, 3), 255, np.uint8)
    scores = "no ground truth"
    if row is not None and "dice" in row:  # a polyp frame
        scores = f"Dice {row['dice']:.3f}   IoU {row['iou']:.3f}"
    elif row is not None and "area_fraction" in row:  # a polyp-free one: was a mask drawn?
        drawn = "false alarm" if row["area_fraction"] > 0 else "no mask drawn: right"
        scores = f"polyp-free, {drawn}"
    if row is not None and "score" in row:
        scores += f"   presence {row['score']:.2f}"
    text = f"{name}   {scores}"
    _put(title, text, (6, 19), min(0.55, 0.55 * (width - 12) / max(1, _width(text, 0.55))))

    foot = np.full((26, width, 3), 255, np.uint8)
    x = 6
    for colour, name_of in ((GT_BGR, "ground truth"), (PRED_BGR, "prediction")):
        if colour == GT_BGR and mask is None:
            continue
        cv2.line(foot, (x, 13), (x + 22, 13), colour, 3, cv2.LINE_AA)
        _put(foot, name_of, (x + 28, 18), 0.42)
        x += 28 + _width(name_of, 0.42) + 16
    caption = f"uncertainty: {label}, bits"
    if mask is not None:
        caption += " (white: ground truth)"
    _put(foot, caption, (size[0] + 6, 18), min(0.42, 0.42 * (size[0] - 12) / _width(caption)))
    return np.concatenate([title, pictures, foot], axis=0)


class Reliability:
    """Pooled reliability diagram of per-pixel foreground probabilities (a numpy accumulator).

    The bins are :func:`lsdseg.metrics.ece`'s: pixel p goes to ``min(floor(p * bins), bins
    - 1)``; :attr:`ece` is then the pooled ECE of ``summary.json`` (``ece_pooled``).
    """

    def __init__(self, bins: int = 15) -> None:
        self.bins = bins
        self.count = np.zeros(bins, np.float64)  # pixels per bin
        self.prob = np.zeros(bins, np.float64)  # sum of probabilities per bin
        self.fg = np.zeros(bins, np.float64)  # foreground pixels per bin

    def update(self, prob: np.ndarray, mask: np.ndarray) -> None:
        """Add one image: prob (H, W) in [0, 1], mask (H, W) bool."""
        p = prob.astype(np.float64).ravel()
        b = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(b, minlength=self.bins)
        self.prob += np.bincount(b, weights=p, minlength=self.bins)
        self.fg += np.bincount(b, weights=mask.ravel().astype(np.float64), minlength=self.bins)

    @property
    def ece(self) -> float:
        n = self.count.sum()
        return float(np.abs(self.prob - self.fg).sum() / n) if n else math.nan


class _Axes:
    """A plot area of ``img``: data limits to pixels, a frame, ticks and labels."""

    def __init__(
        self,
        img: np.ndarray,
        box: tuple[int, int, int, int],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        logx: bool = False,
    ) -> None:
        self.img, (self.x0, self.y0, self.x1, self.y1) = img, box
        self.logx = logx
        self.xlim = tuple(math.log10(v) for v in xlim) if logx else xlim
        self.ylim = ylim

    def px(self, x: float, y: float) -> tuple[int, int]:
        xv = math.log10(x) if self.logx else x
        fx = (xv - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return (
            round(self.x0 + fx * (self.x1 - self.x0)),
            round(self.y1 - fy * (self.y1 - self.y0)),
        )

    def frame(
        self,
        xticks: Sequence[tuple[float, str]],
        yticks: Sequence[tuple[float, str]],
        xlabel: str,
        ylabel: str,
        title: str,
    ) -> None:
        import cv2

        img = self.img
        for v, text in xticks:
            x, _ = self.px(v, self.ylim[0])
            cv2.line(img, (x, self.y0), (x, self.y1), GRID, 1)
            _put(img, text, (x - _width(text, 0.38) // 2, self.y1 + 16), 0.38)
        for v, text in yticks:
            _, y = self.px(self.xlim[0] if not self.logx else 10 ** self.xlim[0], v)
            cv2.line(img, (self.x0, y), (self.x1, y), GRID, 1)
            _put(img, text, (self.x0 - 6 - _width(text, 0.38), y + 4), 0.38)
        cv2.rectangle(img, (self.x0, self.y0), (self.x1, self.y1), INK, 1)
        _put(img, xlabel, ((self.x0 + self.x1 - _width(xlabel, 0.42)) // 2, self.y1 + 34), 0.42)
        _put(img, ylabel, (6, self.y0 - 8), 0.42)
        _put(img, title, (6, 18), min(0.5, 0.5 * (img.shape[1] - 12) / _width(title, 0.5)))


def _plot(w: int = 380, h: int = 300) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A white canvas and the box of its plot area (x0, y0, x1, y1)."""
    return np.full((h, w, 3), 255, np.uint8), (48, 46, w - 14, h - 42)


def _ticks(values: Sequence[float], fmt: str = "{:g}") -> list[tuple[float, str]]:
    return [(v, fmt.format(v)) for v in values]


def _count_ticks(top: int) -> list[tuple[float, str]]:
    step = max(1, math.ceil(top / 4))
    return _ticks(range(0, top + 1, step))


def dice_histogram(dices: Sequence[float], bins: int = 20) -> np.ndarray:
    """Histogram of per-image Dice over [0, 1] (BGR uint8)."""
    import cv2

    img, box = _plot()
    counts, edges = np.histogram(np.clip(dices, 0, 1), bins=bins, range=(0.0, 1.0))
    top = max(1, int(counts.max()))
    ax = _Axes(img, box, (0.0, 1.0), (0.0, top * 1.1))
    mean = f", mean {np.mean(dices):.3f}" if len(dices) else ""
    ax.frame(
        _ticks([0, 0.25, 0.5, 0.75, 1]),
        _count_ticks(top),
        "Dice",
        "images",
        f"Dice per image (n = {len(dices)}{mean})",
    )
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            p0, p1 = ax.px(a, 0), ax.px(b, c)
            cv2.rectangle(img, (p0[0] + 1, p1[1]), (p1[0] - 1, p0[1] - 1), BAR_BGR, -1)
    return img


def dice_by_size(sizes: Sequence[float], dices: Sequence[float]) -> np.ndarray:
    """Per-image Dice against the ground truth's share of the image (log scale; BGR uint8).

    Images without a polyp (size 0) sit on the left edge as hollow squares.
    """
    import cv2

    img, box = _plot()
    lo = 1e-3
    ax = _Axes(img, box, (lo, 1.0), (0.0, 1.05), logx=True)
    ax.frame(
        [(1e-3, "0.1%"), (1e-2, "1%"), (1e-1, "10%"), (1.0, "100%")],
        _ticks([0, 0.25, 0.5, 0.75, 1]),
        "polyp size (share of the image)",
        "Dice",
        "Dice against polyp size",
    )
    for s, d in zip(sizes, dices, strict=True):
        if not math.isfinite(d):
            continue
        x, y = ax.px(max(s, lo), d)
        if s <= 0:
            cv2.rectangle(img, (x - 3, y - 3), (x + 3, y + 3), BAR_BGR, 1)
        else:
            cv2.circle(img, (x, y), 3, BAR_BGR, -1, cv2.LINE_AA)
    return img


def reliability_diagram(rel: Reliability) -> np.ndarray:
    """Observed foreground frequency against mean probability per bin (BGR uint8).

    Each bin is a bar from the diagonal (perfect calibration) to its observed frequency,
    with a dot at the bin's mean probability; the grey bars along the bottom show the share of
    pixels per bin on a log scale (most pixels are sure background).
    """
    import cv2

    img, box = _plot()
    ax = _Axes(img, box, (0.0, 1.0), (0.0, 1.0))
    ax.frame(
        _ticks([0, 0.25, 0.5, 0.75, 1]),
        _ticks([0, 0.25, 0.5, 0.75, 1]),
        "mean predicted probability",
        "observed foreground",
        f"reliability (ECE pooled {rel.ece:.4f}, {rel.bins} bins)",
    )
    cv2.line(img, ax.px(0, 0), ax.px(1, 1), (150, 150, 150), 1, cv2.LINE_AA)
    _put(img, "grey: pixels per bin (log)", (ax.x0 + 6, ax.y0 + 16), 0.38)
    total = rel.count.sum()
    for b in range(rel.bins):
        n = rel.count[b]
        if not n:
            continue
        a, c = b / rel.bins, (b + 1) / rel.bins
        share = math.log10(max(n / total, 1e-6)) / 6 + 1  # 1e-6 .. 1 -> 0 .. 1
        p0, p1 = ax.px(a, 0), ax.px(c, 0.12 * share)
        cv2.rectangle(img, (p0[0] + 2, p1[1]), (p1[0] - 2, p0[1] - 1), (200, 200, 200), -1)
        conf, freq = rel.prob[b] / n, rel.fg[b] / n
        cv2.line(img, ax.px(conf, conf), ax.px(conf, freq), BAR_BGR, 2, cv2.LINE_AA)
        cv2.circle(img, ax.px(conf, freq), 3, BAR_BGR, -1, cv2.LINE_AA)
    return img


def summary_figure(
    dices: Sequence[float], sizes: Sequence[float], rel: Reliability, title: str
) -> np.ndarray:
    """The run's figure: Dice histogram | Dice by polyp size | reliability (BGR uint8)."""
    plots = [dice_histogram(dices), dice_by_size(sizes, dices), reliability_diagram(rel)]
    body = np.concatenate(plots, axis=1)
    head = np.full((26, body.shape[1], 3), 255, np.uint8)
    _put(head, title, (6, 18), min(0.5, 0.5 * (body.shape[1] - 12) / max(1, _width(title, 0.5))))
    return np.concatenate([head, body], axis=0)
