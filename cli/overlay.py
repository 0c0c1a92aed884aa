"""Overlay rendering for ``lsdseg segment``: what a person sees on each output frame.

Three styles (``--overlay``):

- ``mask``: the mask (mean > threshold) filled with alpha, plus its contour.
- ``uncertainty``: a per-pixel uncertainty heat map (TURBO or VIRIDIS, perceptually uniform)
  whose opacity grows with the uncertainty (:func:`heat_weight`: none below a tenth of the
  map's range, ``alpha`` from half of it), so tissue the model is sure about keeps its own
  colours; the mask contour, and a colour-bar legend with the map's range.
- ``grid``: the ``mask`` view beside a panel of the K hypotheses, each a tile of a quarter of
  the frame (or larger, see :func:`grid_layout`) with its probability map blended in and its
  own 0.5 contour; the output is wider than the input.

A heads-up text (:func:`hud_text`: K, the frame mean of the uncertainty and the unsure score
on one line, fps and latency for videos and streams on a second) goes where it hides the least:
in the dark corners outside an endoscope's circular field when there are any, else along the
top or bottom edge away from the mask (:func:`place_hud`). It always fits the frame: its font
scale is measured down until every line does (:func:`fit_hud`).
Rendering is pure numpy/OpenCV on copies; the frame passed in is never modified.
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
MEASURE_SHORT: dict[str, str] = {"entropy": "entropy", "std": "std", "mi": "MI"}  # in the HUD
# the unit of each map, in the colour bar's label (a std of probabilities has none)
MEASURE_UNIT: dict[str, str] = {"entropy": "bits", "std": "", "mi": "bits"}
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
    # the uncertainty map shown and measured; mutual information finds the wrong pixels best
    # (benchmarks/RESULTS.md, "Which uncertainty map finds the errors")
    measure: Measure = "mi"
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


def top_tick(vmax: float, unit: str) -> str:
    """The colour bar's top value with the map's unit: ``1 bit``, ``0.5`` (no unit)."""
    if not unit:
        return f"{vmax:g}"
    return f"{vmax:g} {unit.removesuffix('s') if vmax == 1 else unit}"


def uncertainty_map(result: Result, measure: Measure) -> np.ndarray:
    """The (H, W) map of ``measure`` from a Result: entropy, std or mutual information."""
    return {"entropy": result.entropy, "std": result.std, "mi": result.mutual_info}[measure]


def make_view(result: Result, opts: OverlayOptions, hud: str = "", alert: bool = False) -> View:
    """Keep what ``opts`` needs from ``result``; grid hypotheses are resized to tile size
    (from the frame's size, or from the model's S x S: ``hypotheses_size="model"``)."""
    import cv2

    h, w = result.mask.shape
    k = int(result.hypotheses.shape[0])
    thumbs = None
    if opts.style == "grid":
        _, _, th, tw = grid_layout(h, w, k)
        shrink = th * tw <= result.hypotheses.shape[1] * result.hypotheses.shape[2]
        how = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR  # AREA enlarges as nearest
        thumbs = np.stack(
            [cv2.resize(p, (tw, th), interpolation=how) for p in result.hypotheses]
        )  # (K, th, tw)
    return View(result.mask, uncertainty_map(result, opts.measure), thumbs, k, hud, alert)


def output_size(h: int, w: int, style: Style, k: int = 8) -> tuple[int, int]:
    """(H, W) of a rendered frame: the input's, plus the panel of K tiles for ``grid``."""
    return (h, w + panel_width(h, w, k)) if style == "grid" else (h, w)


# tiles of frames more than twice this high are at least this high (more rows of them)
TILE_MIN_H = 240


def grid_layout(h: int, w: int, k: int) -> tuple[int, int, int, int]:
    """(cols, rows, tile_h, tile_w) of the K hypothesis tiles beside the frame.

    Tiles keep the frame's aspect and fill the frame's height in ``rows`` rows: two rows of
    half-size tiles (a 384x288 frame gets 192x144 tiles, K = 8 four columns of them), more
    rows for frames over ``2 * TILE_MIN_H`` high so that tiles stay at least ``TILE_MIN_H``
    high, and one full-size tile for K = 1. The output grows to the side instead of the tiles
    shrinking to fit a fixed panel.
    """
    rows = 1 if k <= 1 else min(k, max(2, h // TILE_MIN_H))
    th = max(1, h // rows)
    tw = max(1, round(w * th / h))
    return math.ceil(k / rows), rows, th, tw


def panel_width(h: int, w: int, k: int) -> int:
    """Width of the grid's hypothesis panel: its columns of tiles, rounded up to even."""
    cols, _, _, tw = grid_layout(h, w, k)
    return (cols * tw + 1) // 2 * 2


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
    """Text with a dark outline, readable on any background.

    The outline is the text in black shifted by a pixel in eight directions, not one thicker
    pass: OpenCV 5 advances thicker text further, so a thick outline ran past the glyphs.
    """
    import cv2

    thick = _thickness_of(scale)
    x, y = org
    for dx, dy in ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):
        cv2.putText(
            img, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
            cv2.LINE_AA,
        )  # fmt: skip
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def _thickness_of(scale: float) -> int:
    """Stroke thickness of text at font ``scale``."""
    return max(1, round(scale * 2))


def text_size(text: str, scale: float) -> tuple[int, int, int]:
    """(width, height, baseline) of ``text`` as :func:`_text` draws it (with its outline)."""
    import cv2

    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, _thickness_of(scale))
    return tw + 2, th + 2, base


def _font_scale(h: int, w: int) -> float:
    return max(0.3, min(h, w) / 600)


def draw_legend(img: np.ndarray, vmax: float, cmap: str, label: str, unit: str = "") -> None:
    """A vertical colour bar on the right edge, labelled with the range and ``unit`` (the top
    tick reads ``1 bit``), drawn in place.

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
    faded = heat_weight(ramp, vmax, 1.0)  # (bh, bw)
    img[y0 : y0 + bh, x0:x1] = _blend(grey, colourise(ramp, vmax, cmap), faded)
    img[y0 : y0 + bh, [x0, x1 - 1]] = 255
    img[[y0, y0 + bh - 1], x0:x1] = 255

    def right_text(text: str, y: int) -> None:
        tw = text_size(text, scale)[0]
        _text(img, text, (max(0, x0 - tw - 4), y), scale)

    right_text(top_tick(vmax, unit), y0 + int(12 * scale / 0.4))
    right_text("0", y0 + bh)
    tw, th, _ = text_size(label, scale)
    _text(img, label, (max(0, x1 - tw), max(th + 2, y0 - 6)), scale)


# a pixel whose brightest channel is below this is the dark surround of an endoscope's field
DARK = 40
# cost of covering one pixel of the mask (or its 8-px margin), against 1 for one pixel of the
# image and 0 for one of the dark surround
MASK_COST = 8


# the smallest font scale of the heads-up text: below it the Hershey glyphs blur together
HUD_MIN_SCALE = 0.3


def hud_text(
    k: int,
    measure: Measure,
    frame_mean: float,
    unsure: float | None = None,
    flagged: bool = False,
    fps: float | None = None,
    latency_ms: float | None = None,
    state: str | None = None,
) -> str:
    """The heads-up text, one ``\n`` per line and `` | `` between the parts of a line.

    ``state``, when given, is the first line: the frame-level decision in words with its
    presence score (``POLYP | p=0.97``, ``no polyp | p=0.03``, ``UNSURE | p=0.62``).

    First line: the frame (``UNSURE 0.35`` first when flagged, K, the frame mean of the
    uncertainty map under its short name, the unsure score); K = 1 has no uncertainty (one
    sample has no spread), and says so instead. Second line, for videos and streams: fps and
    the latency of the Segmenter call. More lines can be added; :func:`fit_hud` fits them all.
    """
    if k < 2:
        first = [f"K={k}", "no uncertainty"]
    else:
        first = [f"K={k}", f"{MEASURE_SHORT[measure]} {frame_mean:.3f}"]
        if unsure is not None:
            first.append(f"unsure {unsure:.2f}")
        if flagged:
            first = [f"UNSURE {unsure:.2f}", *first[:2]]
    lines = ([state] if state else []) + [" | ".join(first)]
    if fps is not None and latency_ms is not None:
        lines.append(f"{fps:.1f} fps | {latency_ms:.0f} ms")
    return "\n".join(lines)


def hud_lines(text: str, stacked: bool) -> list[str]:
    """The heads-up text's lines, or stacked with one `` | ``-separated part a line."""
    lines = text.split("\n")
    return [part for line in lines for part in line.split(" | ")] if stacked else lines


def _hud_block(lines: list[str], scale: float) -> tuple[int, int, int]:
    """(width, height, line height) in pixels of ``lines`` on their backing box."""
    sizes = [text_size(t, scale) for t in lines]
    line_h = max(th + base for _, th, base in sizes) + 4
    return max(tw for tw, _, _ in sizes) + 8, line_h * len(lines) + 4, line_h


def fit_hud(
    lines: list[str], w: int, h: int, scale: float, drop: bool = False
) -> tuple[list[str], float | None]:
    """The lines and the largest font scale up to ``scale`` at which they fit a w x h frame on
    their box, every glyph measured (cv2.getTextSize through :func:`text_size`).

    When they do not fit at :data:`HUD_MIN_SCALE`: ``([], None)``, or with ``drop`` the last
    line is dropped and the rest fitted again (a frame too small for even the first line
    still gets ``([], None)``).
    """
    while lines:
        s = scale
        while s >= HUD_MIN_SCALE:
            bw, bh, _ = _hud_block(lines, s)
            if bw <= w and bh <= h:
                return lines, s
            # text grows about linearly with the scale (the stroke width in steps): aim at
            # the fitting scale, never by less than 3 % a step
            s = min(s * 0.97, s * min(w / bw, h / bh))
        lines = lines[:-1] if drop else []
    return [], None


def place_hud(
    img: np.ndarray, text: str, avoid: np.ndarray | None = None
) -> tuple[list[str], float, int, int]:
    """Where the heads-up text hides the least: (lines, font scale, x, y of the top left).

    The candidates are the four corners, each with the text's lines as given or stacked one
    part a line, each at the largest scale up to the frame's at which it fits
    (:func:`fit_hud`). Each costs the image pixels it covers: nothing
    for the dark surround of an endoscope's circular field (brightest channel below
    :data:`DARK`), one for any other pixel and :data:`MASK_COST` for a pixel of ``avoid``
    (the mask, with a margin). The cheapest wins, the top left on a tie, so on a frame with no
    dark surround the line goes along the top unless a polyp is there, and then the bottom.

    Shapes:
        img (H, W, 3) uint8; avoid (H, W) bool or None.
    """
    import cv2

    h, w = img.shape[:2]
    cost = (img.max(axis=2) >= DARK).astype(np.float32)  # (H, W)
    if avoid is not None and avoid.any():
        margin = max(3, min(h, w) // 32)
        near = cv2.dilate(avoid.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
        cost[near] = MASK_COST
    summed = cv2.integral(cost)  # (H + 1, W + 1): box sums in O(1)
    base_scale = _font_scale(h, w)
    candidates = []  # (cost, order, lines, scale, x, y)
    # all of the text as given or stacked; only when neither fits, its first lines
    for stacked, drop in ((False, False), (True, False), (False, True)):
        if drop and candidates:
            break
        lines, scale = fit_hud(hud_lines(text, stacked), w, h, base_scale, drop)
        if scale is None:
            continue
        bw, bh, _ = _hud_block(lines, scale)
        for x, y in ((0, 0), (w - bw, 0), (0, h - bh), (w - bw, h - bh)):
            c = summed[y + bh, x + bw] - summed[y, x + bw] - summed[y + bh, x] + summed[y, x]
            candidates.append((round(float(c), 3), len(candidates), lines, scale, x, y))
    return min(candidates)[2:] if candidates else ([], base_scale, 0, 0)


def draw_hud(
    img: np.ndarray, text: str, alert: bool = False, avoid: np.ndarray | None = None
) -> None:
    """The heads-up text on a darkened box where it hides the least (:func:`place_hud`);
    drawn in place.

    ``alert`` (a frame flagged unsure) draws the text in :data:`ALERT_BGR` instead of white;
    ``avoid`` (H, W) bool marks what the text should not cover (the mask).
    """
    if not text:
        return
    h = img.shape[0]
    lines, scale, x, y = place_hud(img, text, avoid)
    if not lines:  # a frame too small for any legible text
        return
    bw, bh, line_h = _hud_block(lines, scale)
    box = img[y : y + bh, x : x + bw]
    box[:] = (box.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken 60 %
    colour = ALERT_BGR if alert else (255, 255, 255)
    for i, line in enumerate(lines):
        baseline = y + (i + 1) * line_h - 4
        _text(img, line, (x + 4, min(h - 1, baseline)), scale, colour)


def _grid_panel(frame: np.ndarray, view: View, alpha: float) -> np.ndarray:
    """The K hypothesis tiles on a dark panel of the frame's height (see :func:`grid_layout`),
    each with its probability as a green fill, its 0.5 contour and its number."""
    import cv2

    h, w = frame.shape[:2]
    panel = np.full((h, panel_width(h, w, view.k), 3), 32, np.uint8)
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
        cv2.drawContours(tile, contours, -1, MASK_BGR, _thickness(th, tw), cv2.LINE_AA)
        if th >= 24:
            _text(tile, str(k + 1), (4, th - 6), scale)
        if th > 8 and tw > 8:  # a 1-px gap of panel colour between neighbouring tiles
            tile[-1], tile[:, -1] = 32, 32
        r, c = divmod(k, cols)
        panel[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
    return panel


def render(frame: np.ndarray, view: View, opts: OverlayOptions) -> np.ndarray:
    """Draw ``view`` over ``frame`` (H, W, 3) uint8 BGR in the style of ``opts``.

    Shapes:
        frame (H, W, 3) -> (H, W, 3), or (H, W + panel_width(H, W, K), 3) for ``grid``.
    """
    if view.mask.shape != frame.shape[:2]:
        raise ValueError(f"mask shape {view.mask.shape} does not match frame {frame.shape[:2]}")
    if opts.style == "uncertainty":
        vmax = MEASURE_RANGE[opts.measure]
        heat = colourise(view.uncertainty, vmax, opts.cmap)
        out = _blend(frame, heat, heat_weight(view.uncertainty, vmax, opts.alpha))
        out = draw_mask(out, view.mask, 0.0, CONTOUR_ON_HEAT_BGR)
        draw_legend(out, vmax, opts.cmap, MEASURE_LABEL[opts.measure], MEASURE_UNIT[opts.measure])
    else:
        out = draw_mask(frame, view.mask, opts.alpha)
    if opts.style == "grid":
        out = np.concatenate([out, _grid_panel(frame, view, max(opts.alpha, 0.5))], axis=1)
    if opts.hud:  # on the frame, not over the grid's panel
        draw_hud(out[:, : frame.shape[1]], view.hud, view.alert, view.mask)
    return out
