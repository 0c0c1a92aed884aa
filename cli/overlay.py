"""Overlay rendering for ``lsdseg segment``: what a person sees on each output frame.

Three styles (``--overlay``):

- ``mask``: the mask (mean > threshold) filled with alpha, plus its contour.
- ``uncertainty``: a per-pixel uncertainty heat map (TURBO or VIRIDIS, perceptually uniform)
  whose opacity grows with the uncertainty (:func:`heat_weight`: none below a tenth of the
  map's range, ``alpha`` from half of it), so tissue the model is sure about keeps its own
  colours; the mask contour, and a colour-bar legend with the map's range.
- ``grid``: the ``mask`` view beside a panel of the K hypotheses, each a thumbnail with its
  probability map blended in and its own 0.5 contour.

A heads-up line (fps, latency, K, mean uncertainty) is drawn on top of every style. Rendering is
pure numpy/OpenCV on copies; the frame passed in is never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from lsdseg.segmenter import Result

Style = Literal["mask", "uncertainty", "grid"]
Measure = Literal["entropy", "std", "mi"]
STYLES: tuple[Style, ...] = ("mask", "uncertainty", "grid")
MEASURES: tuple[Measure, ...] = ("entropy", "std", "mi")
CMAPS = ("turbo", "viridis")
# Upper end of each uncertainty map: entropies are in bits (<= 1); the std of values in [0, 1]
# is at most 0.5.
MEASURE_RANGE: dict[str, float] = {"entropy": 1.0, "std": 0.5, "mi": 1.0}
MEASURE_LABEL: dict[str, str] = {"entropy": "entropy", "std": "std", "mi": "mutual info"}
# The heat map is transparent below HEAT_FLOOR x the range and reaches --alpha at HEAT_FULL x
# the range. For entropy (bits) that is 0.1 bits (p < 0.013 or > 0.987: nothing to see) and
# 0.5 bits (p between 0.11 and 0.89: the model is unsure).
HEAT_FLOOR, HEAT_FULL = 0.1, 0.5
MASK_BGR = (0, 230, 0)  # filled mask and contour (green)
CONTOUR_ON_HEAT_BGR = (255, 255, 255)  # the mask contour over a heat map (white)
ALERT_BGR = (0, 140, 255)  # the heads-up text of a frame flagged unsure (orange)


@dataclass(frozen=True)
class OverlayOptions:
    """How frames are drawn (the CLI's --overlay, --cmap, --alpha, --uncertainty, --no-hud)."""

    style: Style = "mask"  # which view
    cmap: str = "turbo"  # colour map of the uncertainty heat map: turbo or viridis
    alpha: float = 0.4  # opacity of the mask fill, and of the heat map where uncertainty is high
    measure: Measure = "entropy"  # the uncertainty map shown and measured
    hud: bool = True  # draw the heads-up line

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"overlay style {self.style!r} must be one of {list(STYLES)}")
        if self.cmap not in CMAPS:
            raise ValueError(f"cmap {self.cmap!r} must be one of {list(CMAPS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be between 0 and 1")
        if self.measure not in MEASURES:
            raise ValueError(
                f"uncertainty measure {self.measure!r} must be one of {list(MEASURES)}"
            )


@dataclass
class View:
    """The parts of a :class:`~lsdseg.Result` that rendering needs (kept small for queues)."""

    mask: np.ndarray  # (H, W) bool
    uncertainty: np.ndarray  # (H, W) float32, the chosen measure
    hypotheses: np.ndarray | None  # (K, th, tw) float32 thumbnails, only for the grid style
    k: int  # number of hypotheses
    hud: str = ""  # heads-up text
    alert: bool = False  # draw the heads-up text in the alert colour (frame flagged unsure)


def uncertainty_map(result: Result, measure: Measure) -> np.ndarray:
    """The (H, W) map of ``measure`` from a Result: entropy, std or mutual information."""
    return {"entropy": result.entropy, "std": result.std, "mi": result.mutual_info}[measure]


def make_view(result: Result, opts: OverlayOptions, hud: str = "", alert: bool = False) -> View:
    """Keep what ``opts`` needs from ``result``; grid hypotheses are shrunk to tile size."""
    import cv2

    h, w = result.mask.shape
    k = int(result.hypotheses.shape[0])
    thumbs = None
    if opts.style == "grid":
        _, _, th, tw = grid_layout(h, w, k)
        thumbs = np.stack(
            [cv2.resize(p, (tw, th), interpolation=cv2.INTER_AREA) for p in result.hypotheses]
        )  # (K, th, tw)
    return View(result.mask, uncertainty_map(result, opts.measure), thumbs, k, hud, alert)


def output_size(h: int, w: int, style: Style) -> tuple[int, int]:
    """(H, W) of a rendered frame: the input's, plus a side panel for ``grid``."""
    return (h, w + panel_width(w)) if style == "grid" else (h, w)


def panel_width(w: int) -> int:
    """Width of the grid's hypothesis panel: half the frame, even, at least 2."""
    return max(2, (w // 2) // 2 * 2)


def grid_layout(h: int, w: int, k: int) -> tuple[int, int, int, int]:
    """(cols, rows, tile_h, tile_w) placing K tiles of the frame's aspect in the panel."""
    pw, best = panel_width(w), (1, k, 1, 1)
    best_scale = 0.0
    for cols in range(1, k + 1):
        rows = math.ceil(k / cols)
        scale = min(pw / (cols * w), h / (rows * h))
        if scale > best_scale:
            best_scale, best = scale, (cols, rows, max(1, int(h * scale)), max(1, int(w * scale)))
    return best


def _blend(base: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """base * (1 - weight) + colour * weight; weight (H, W) in [0, 1]."""
    wgt = weight[..., None].astype(np.float32)
    out = base.astype(np.float32) * (1.0 - wgt) + colour.astype(np.float32) * wgt
    return (out + 0.5).astype(np.uint8)


def _thickness(h: int, w: int) -> int:
    return max(1, round(min(h, w) / 200))


def draw_mask(
    frame: np.ndarray, mask: np.ndarray, alpha: float, colour: tuple[int, int, int] = MASK_BGR
) -> np.ndarray:
    """Fill ``mask`` with ``colour`` at ``alpha`` and draw its contour; returns a new image."""
    import cv2

    out = frame.copy()
    if not mask.any():
        return out
    m = mask.astype(np.uint8)
    if alpha > 0:
        inside = frame[mask].astype(np.float32)  # (N, 3)
        out[mask] = (inside * (1.0 - alpha) + np.asarray(colour, np.float32) * alpha + 0.5).astype(
            np.uint8
        )
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, _thickness(*mask.shape), cv2.LINE_AA)
    return out


def colourise(values: np.ndarray, vmax: float, cmap: str) -> np.ndarray:
    """(H, W) values in [0, vmax] -> (H, W, 3) uint8 BGR through an OpenCV colour map."""
    import cv2

    code = {"turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS}[cmap]
    scaled = np.clip(values / vmax, 0.0, 1.0) * 255.0 + 0.5
    return cv2.applyColorMap(scaled.astype(np.uint8), code)


def heat_weight(values: np.ndarray, vmax: float, alpha: float) -> np.ndarray:
    """Per-pixel opacity of the heat map: 0 up to ``HEAT_FLOOR * vmax``, rising smoothly
    (smoothstep) to ``alpha`` at ``HEAT_FULL * vmax`` and above.

    Shapes:
        values (H, W) -> (H, W) float32 in [0, alpha].
    """
    lo, hi = HEAT_FLOOR * vmax, HEAT_FULL * vmax
    s = np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return (alpha * s * s * (3.0 - 2.0 * s)).astype(np.float32)


def _text(
    img: np.ndarray,
    text: str,
    org: tuple[int, int],
    scale: float,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> None:
    """Text with a dark outline, readable on any background."""
    import cv2

    thick = max(1, round(scale * 2))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def _font_scale(h: int, w: int) -> float:
    return max(0.3, min(h, w) / 600)


def draw_legend(img: np.ndarray, vmax: float, cmap: str, label: str) -> None:
    """A vertical colour bar on the right edge, labelled with the range, drawn in place.

    The bar shows each level as the map draws it, its colour faded into grey by
    :func:`heat_weight` (scaled so the top is opaque): the grey foot is the range left
    uncoloured.
    """
    h, w = img.shape[:2]
    if h < 48 or w < 48:  # no room for a readable legend
        return
    scale = _font_scale(h, w)
    bw, bh = max(6, w // 60), max(16, h // 2)
    x1 = w - max(4, w // 50)
    x0, y0 = x1 - bw, (h - bh) // 2
    ramp = np.linspace(vmax, 0.0, bh, dtype=np.float32)[:, None].repeat(bw, axis=1)
    grey = np.full((bh, bw, 3), 96, np.uint8)
    img[y0 : y0 + bh, x0:x1] = _blend(grey, colourise(ramp, vmax, cmap), heat_weight(ramp, vmax, 1))
    img[y0 : y0 + bh, [x0, x1 - 1]] = 255
    img[[y0, y0 + bh - 1], x0:x1] = 255
    import cv2

    def right_text(text: str, y: int) -> None:
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        _text(img, text, (max(0, x0 - tw - 4), y), scale)

    right_text(f"{vmax:g}", y0 + int(12 * scale / 0.4))
    right_text("0", y0 + bh)
    (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    _text(img, label, (max(0, x1 - tw), max(th + 2, y0 - 6)), scale)


def draw_hud(img: np.ndarray, text: str, alert: bool = False) -> None:
    """The heads-up line on a dark strip across the top, shrunk to fit; drawn in place.

    ``alert`` (a frame flagged unsure) draws the text in :data:`ALERT_BGR` instead of white.
    """
    import cv2

    if not text:
        return
    h, w = img.shape[:2]
    scale = _font_scale(h, w)
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    scale = max(0.25, min(scale, scale * (w - 8) / max(tw, 1)))
    (_, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    strip = min(h, th + base + 8)
    img[:strip] = (img[:strip].astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken 60 %
    _text(img, text, (4, min(h - 1, th + 4)), scale, ALERT_BGR if alert else (255, 255, 255))


def _grid_panel(frame: np.ndarray, view: View, alpha: float) -> np.ndarray:
    """The K hypothesis thumbnails on a dark panel of the frame's height."""
    import cv2

    h, w = frame.shape[:2]
    panel = np.full((h, panel_width(w), 3), 32, np.uint8)
    if view.hypotheses is None:
        return panel
    cols, _, th, tw = grid_layout(h, w, view.k)
    small = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)
    fill = np.empty_like(small)
    fill[:] = MASK_BGR
    scale = max(0.25, min(th, tw) / 300)
    for k, p in enumerate(view.hypotheses):
        tile = _blend(small, fill, np.clip(p, 0.0, 1.0) * alpha)  # soft: opacity follows p
        contours, _ = cv2.findContours(
            (p > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(tile, contours, -1, MASK_BGR, 1, cv2.LINE_AA)
        if th >= 24:
            _text(tile, str(k + 1), (3, th - 4), scale)
        r, c = divmod(k, cols)
        panel[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
    return panel


def render(frame: np.ndarray, view: View, opts: OverlayOptions) -> np.ndarray:
    """Draw ``view`` over ``frame`` (H, W, 3) uint8 BGR in the style of ``opts``.

    Shapes:
        frame (H, W, 3) -> (H, W, 3), or (H, W + panel_width(W), 3) for ``grid``.
    """
    if view.mask.shape != frame.shape[:2]:
        raise ValueError(f"mask shape {view.mask.shape} does not match frame {frame.shape[:2]}")
    if opts.style == "uncertainty":
        vmax = MEASURE_RANGE[opts.measure]
        heat = colourise(view.uncertainty, vmax, opts.cmap)
        out = _blend(frame, heat, heat_weight(view.uncertainty, vmax, opts.alpha))
        out = draw_mask(out, view.mask, 0.0, CONTOUR_ON_HEAT_BGR)
        draw_legend(out, vmax, opts.cmap, MEASURE_LABEL[opts.measure])
    else:
        out = draw_mask(frame, view.mask, opts.alpha)
    if opts.style == "grid":
        out = np.concatenate([out, _grid_panel(frame, view, max(opts.alpha, 0.5))], axis=1)
    if opts.hud:
        draw_hud(out, view.hud, view.alert)
    return out
