"""Overlay rendering and per-frame records, on hand-built results with known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from lsdseg.cli.overlay import (
    ALERT_BGR,
    HEAT_FLOOR,
    HEAT_FULL,
    MASK_BGR,
    OverlayOptions,
    View,
    colourise,
    draw_hud,
    grid_layout,
    heat_weight,
    make_view,
    output_size,
    panel_width,
    place_hud,
    render,
    text_size,
)
from lsdseg.cli.records import frame_record

H, W, K = 120, 160, 4


def fake_result(h: int = H, w: int = W, k: int = K) -> SimpleNamespace:
    """A Result-like object: a square lesion, uncertainty 0.8 on its border ring only."""
    hyp = np.zeros((k, h, w), np.float32)
    for i in range(k):  # hypotheses shifted by a pixel each, so they disagree at the edge
        hyp[i, h // 4 + i : h // 2 + i, w // 4 : w // 2] = 1.0
    mean = hyp.mean(axis=0)
    unc = np.where((mean > 0) & (mean < 1), 0.8, 0.0).astype(np.float32)
    return SimpleNamespace(
        mask=mean > 0.5,
        mean=mean,
        std=unc / 2,
        entropy=unc,
        mutual_info=unc,
        hypotheses=hyp,
        agreement=0.7,
        unsure=0.2,
        seed=3,
        score=0.9,
        present=True,
        threshold=0.5,
    )


@pytest.fixture
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(30, 220, (H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("style", ["mask", "uncertainty", "grid"])
@pytest.mark.parametrize("cmap", ["turbo", "viridis"])
def test_each_style_has_its_size_and_marks_the_mask(frame, style, cmap):
    res = fake_result()
    opts = OverlayOptions(style=style, cmap=cmap, hud=False)
    before = frame.copy()
    out = render(frame, make_view(res, opts), opts)
    assert out.shape == (*output_size(H, W, style, K), 3) and out.dtype == np.uint8
    assert np.array_equal(frame, before)  # the input is never drawn on
    inside = res.mask
    diff = np.abs(out[:, :W].astype(int) - frame).sum(axis=2)
    assert diff[inside].mean() > 20  # the lesion is visibly marked
    # away from the lesion every style leaves the frame alone: the heat map colours only
    # where the uncertainty is above its floor (0 here), and the colour bar sits on the right
    far = np.ones((H, W), bool)
    far[H // 4 - 6 : H // 2 + K + 6, W // 4 - 6 : W // 2 + 6] = False
    if style == "uncertainty":
        far[:, W - 60 :] = False
    assert diff[far].max() == 0


@pytest.mark.parametrize("style", ["mask", "uncertainty"])
def test_alpha_zero_draws_the_contour_only(frame, style):
    """--alpha 0, as its help says: no fill and no heat, only the mask's contour."""
    import cv2

    res = fake_result()
    opts = OverlayOptions(style=style, alpha=0.0, hud=False)
    changed = np.abs(render(frame, make_view(res, opts), opts).astype(int) - frame).sum(axis=2) > 0
    if style == "uncertainty":
        changed[:, W - 60 :] = False  # the colour bar
    m = res.mask.astype(np.uint8)
    ring = cv2.dilate(m, np.ones((5, 5), np.uint8)) - cv2.erode(m, np.ones((5, 5), np.uint8))
    assert changed.any() and not (changed & (ring == 0)).any()


def test_mask_fill_is_the_alpha_blend(frame):
    res = fake_result()
    opts = OverlayOptions(style="mask", alpha=0.25, hud=False)
    out = render(frame, make_view(res, opts), opts)
    y, x = H // 4 + K + 4, W // 4 + 10  # well inside the mask, away from the contour
    expected = np.round(frame[y, x] * 0.75 + np.array(MASK_BGR) * 0.25)
    assert np.abs(out[y, x].astype(int) - expected).max() <= 1


def test_heat_map_colours_follow_the_colour_map_and_legend_is_drawn(frame):
    res = fake_result()
    opts = OverlayOptions(style="uncertainty", cmap="turbo", alpha=0.5, hud=False)
    out = render(frame, make_view(res, opts), opts)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0]
    y, x = 5, 5  # uncertainty 0 here: the frame's own colour
    assert np.array_equal(out[y, x], frame[y, x])
    # a patch of uncertainty 0.8, above HEAT_FULL, away from the mask: heat map at full alpha
    unc = np.zeros((H, W), np.float32)
    unc[90:110, 10:40] = 0.8
    out = render(frame, View(res.mask, unc, None, K), opts)
    patch = out[90:110, 10:40].astype(int)
    expected = np.round(frame[90:110, 10:40] * 0.5 + lut[round(0.8 * 255)] * 0.5)
    assert np.abs(patch - expected).max() <= 1
    # the colour bar on the right runs from the top colour (1.0) down to the bottom one (0),
    # faded into grey as the map fades into the frame: the range below the floor is grey
    bh, bar_x = H // 2, W - max(4, W // 50) - 2
    column = out[H // 4 : H // 4 + bh, bar_x].astype(float)
    values = np.linspace(1.0, 0.0, bh)
    wgt = np.clip((values - HEAT_FLOOR) / (HEAT_FULL - HEAT_FLOOR), 0, 1)
    wgt = (wgt * wgt * (3 - 2 * wgt))[:, None]  # smoothstep
    expected = 96 * (1 - wgt) + lut[np.round(values * 255).astype(int)] * wgt
    assert np.abs(column[1:-1] - expected[1:-1]).max() <= 1.5  # inside the frame
    assert np.array_equal(column[-2], [96, 96, 96])
    assert np.array_equal(
        colourise(np.array([[0.0, 0.5]]), 0.5, "viridis")[0, 1],
        cv2.applyColorMap(np.uint8([[255]]), cv2.COLORMAP_VIRIDIS)[0, 0],
    )


def test_heat_map_opacity_grows_with_the_uncertainty():
    u = np.linspace(0.0, 1.0, 1001, dtype=np.float32)[None]
    wgt = heat_weight(u, 1.0, 0.4)[0]
    assert (wgt[u[0] <= HEAT_FLOOR] == 0).all()  # sure pixels are not coloured at all
    assert np.allclose(wgt[u[0] >= HEAT_FULL], 0.4)  # unsure ones at --alpha
    assert (np.diff(wgt) >= 0).all() and 0 < wgt[300] < 0.4
    # the floor and full points scale with the measure's range (std goes up to 0.5)
    assert np.array_equal(heat_weight(u * 0.5, 0.5, 0.4), wgt[None])


def test_uncertainty_measure_selects_the_map(frame):
    res = fake_result()
    views = {
        m: make_view(res, OverlayOptions(style="uncertainty", measure=m))
        for m in ("entropy", "std", "mi")
    }
    assert views["std"].uncertainty is res.std and views["mi"].uncertainty is res.mutual_info
    assert views["entropy"].uncertainty is res.entropy and views["entropy"].hypotheses is None


def test_grid_tiles_fit_the_panel_and_show_each_hypothesis(frame):
    for h, w, k in [(120, 160, 4), (288, 384, 8), (100, 400, 3), (400, 100, 16), (9, 9, 1)]:
        cols, rows, th, tw = grid_layout(h, w, k)
        assert cols * rows >= k and cols * tw <= panel_width(h, w, k) and rows * th <= h
        assert abs(tw / th - w / h) < 0.1 + 1 / th  # the frame's aspect
    res = fake_result()
    res.hypotheses[2] = 0.0  # one hypothesis sees nothing
    opts = OverlayOptions(style="grid", hud=False)
    view = make_view(res, opts)
    cols, _, th, tw = grid_layout(H, W, K)
    assert view.hypotheses.shape == (K, th, tw)
    out = render(frame, view, opts)
    panel = out[:, W:]
    small = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)
    tiles = [
        panel[(k // cols) * th : (k // cols + 1) * th, (k % cols) * tw : (k % cols + 1) * tw]
        for k in range(K)
    ]
    changed = [np.abs(t.astype(int) - small).sum(axis=2) > 30 for t in tiles]
    assert changed[0][th // 3 : th // 2, tw // 3 : tw // 2].mean() > 0.9  # lesion tinted
    assert changed[2][th // 3 : th // 2, tw // 3 : tw // 2].mean() == 0  # empty hypothesis


def test_grid_tiles_are_large_enough_to_tell_apart():
    # the demo clip's 384x288 at K = 8: tiles of a quarter of the frame, not ~70 px thumbnails
    assert grid_layout(288, 384, 8) == (4, 2, 144, 192)
    assert output_size(288, 384, "grid", 8) == (288, 384 + 4 * 192)
    assert grid_layout(288, 384, 1) == (1, 1, 288, 384)
    # a large frame gets more rows, every tile still at least TILE_MIN_H high
    cols, rows, th, tw = grid_layout(1080, 1920, 8)
    assert (cols, rows) == (2, 4) and th == 270 and tw == 480
    cols, rows, th, _ = grid_layout(6000, 8000, 8)  # bounded: one column of 8 tiles
    assert (cols, rows, th) == (1, 8, 750)


def test_hud_darkens_the_top_strip_and_writes_text():
    frame = np.random.default_rng(0).integers(60, 200, (2 * H, 2 * W, 3), dtype=np.uint8)
    res = fake_result(2 * H, 2 * W)  # no dark surround, the mask well below the top edge
    on, off = OverlayOptions(hud=True), OverlayOptions(hud=False)
    a = render(frame, make_view(res, on, "K=4 | entropy 0.010\n9.9 fps | 100 ms"), on)
    b = render(frame, make_view(res, off, "ignored"), off)
    assert np.array_equal(a[H // 2 :], b[H // 2 :])
    assert a[:8].mean() < frame[:8].mean() * 0.8  # darkened strip
    assert len(np.unique(a[:12].reshape(-1, 3), axis=0)) > 20  # with text on it


def endoscope_frame(h: int = 288, w: int = 512) -> np.ndarray:
    """Mucosa-coloured noise inside a circular field on the right, black around it (the
    layout of many endoscopy monitors)."""
    rng = np.random.default_rng(1)
    img = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h / 2) ** 2 + (xx - (w - h / 2)) ** 2 > (h / 2) ** 2] = 0
    return img


def hud_changes(frame: np.ndarray, res, text: str) -> np.ndarray:
    """(H, W) bool: the pixels the heads-up text changed."""
    on, off = OverlayOptions(hud=True), OverlayOptions(hud=False)
    a = render(frame, make_view(res, on, text), on).astype(int)
    b = render(frame, make_view(res, off), off).astype(int)
    return np.abs(a - b).sum(axis=2) > 0


def test_hud_goes_into_the_dark_corners_outside_the_endoscope_field():
    frame = endoscope_frame()
    res = fake_result(288, 512, 4)
    res.mask = np.zeros((288, 512), bool)
    res.mask[120:160, 350:400] = True
    changed = hud_changes(frame, res, "5.0 fps | 214 ms | K=8 | entropy mean 0.072")
    assert changed.sum() > 300  # it is drawn, stacked in the dark, none of it on the field
    assert not (changed & (frame.max(axis=2) > 0)).any()


def test_hud_does_not_cover_a_polyp_at_the_top_edge():
    frame = np.random.default_rng(2).integers(60, 200, (H, W, 3), dtype=np.uint8)
    res = fake_result()
    hyp = np.zeros((K, H, W), np.float32)
    hyp[:, :30, 20:140] = 1.0  # touches the top edge across most of the width
    res.hypotheses, res.mean = hyp, hyp.mean(axis=0)
    res.mask = res.mean > 0.5
    changed = hud_changes(frame, res, "K=4 | entropy mean 0.010")
    assert changed.sum() > 100 and not (changed & res.mask).any()
    assert changed[H // 2 :].sum() == changed.sum()  # it went to the bottom


def test_hud_text_stays_inside_its_box():
    # OpenCV 5 advances thick text further than thin text: a thicker outline pass once ran a
    # glyph past the box; nothing but the box may change
    frame = np.full((60, 400, 3), 120, np.uint8)
    img = frame.copy()
    text = "5.0 fps | 214 ms | K=8 | entropy mean 0.070"
    draw_hud(img, text)
    lines, scale, x, _ = place_hud(frame, text)
    changed = np.argwhere(np.abs(img.astype(int) - frame).sum(axis=2) > 0)
    bw = text_size(lines[0], scale)[0] + 8
    assert changed[:, 1].max() < x + bw and changed[:, 1].min() >= x


@pytest.mark.parametrize("style", ["mask", "uncertainty", "grid"])
@pytest.mark.parametrize("h,w", [(8, 8), (95, 127), (1, 300)])
def test_tiny_and_odd_frames_render(style, h, w):
    res = fake_result(h, w, 2)
    opts = OverlayOptions(style=style)
    out = render(np.zeros((h, w, 3), np.uint8), make_view(res, opts, "1 fps"), opts)
    assert out.shape == (*output_size(h, w, style, 2), 3)


def test_empty_mask_leaves_the_frame_unchanged(frame):
    z = np.zeros((H, W), np.float32)
    view = View(z > 0, z, None, 1)
    assert np.array_equal(render(frame, view, OverlayOptions(hud=False)), frame)
    with pytest.raises(ValueError, match="does not match"):
        render(frame[:10], view, OverlayOptions())


def test_options_are_validated():
    for bad in ({"style": "heat"}, {"cmap": "jet"}, {"alpha": 1.5}, {"measure": "var"}):
        with pytest.raises(ValueError):
            OverlayOptions(**bad)


def test_frame_record_counts_regions_and_measures_inside_the_mask():
    mask = np.zeros((50, 60), bool)
    mask[5:15, 5:15] = True  # 100 px
    mask[30:40, 40:45] = True  # 50 px, a second region
    mask[15, 15] = True  # touches the first diagonally: same region with 8-connectivity
    unc = np.zeros((50, 60), np.float32)
    unc[5:15, 5:15] = 0.2
    unc[30:40, 40:45] = 0.5
    unc[0, 0] = 1.0  # outside the mask: counts for the frame mean only
    rec = frame_record(7, 0.7, "x", 12.345, mask, unc, 0.9, 11)
    assert rec["components"] == 2
    assert rec["area_fraction"] == pytest.approx(151 / 3000, abs=1e-6)
    assert rec["unc_mean"] == pytest.approx((100 * 0.2 + 50 * 0.5) / 151, abs=1e-6)
    assert rec["unc_max"] == pytest.approx(0.5)
    assert rec["unc_frame_mean"] == pytest.approx(float(unc.mean()), abs=1e-6)
    assert (rec["frame"], rec["timestamp_s"], rec["latency_ms"], rec["seed"]) == (7, 0.7, 12.35, 11)
    assert rec["unsure"] is None and rec["unsure_flag"] is None  # no score passed
    empty = frame_record(0, None, "x", 1.0, np.zeros((4, 4), bool), np.ones((4, 4)), 1.0, 0)
    assert empty["unc_mean"] is None and empty["unc_max"] is None and empty["components"] == 0


def test_frame_record_flags_unsure_frames_only_with_a_threshold():
    mask, unc = np.zeros((4, 4), bool), np.zeros((4, 4), np.float32)
    rec = frame_record(0, None, "x", 1.0, mask, unc, 1.0, 0, unsure=0.3)
    assert rec["unsure"] == pytest.approx(0.3) and rec["unsure_flag"] is None
    assert frame_record(0, None, "x", 1.0, mask, unc, 1.0, 0, 0.3, 0.2)["unsure_flag"] is True
    assert frame_record(0, None, "x", 1.0, mask, unc, 1.0, 0, 0.3, 0.3)["unsure_flag"] is False
    # a server that sends no score: no flag either way
    assert frame_record(0, None, "x", 1.0, mask, unc, 1.0, 0, math.nan, 0.1)["unsure_flag"] is None


def test_unsure_frames_get_the_alert_colour_in_the_hud():
    frame = np.full((120, 160, 3), 90, np.uint8)
    res = fake_result()
    opts = OverlayOptions()
    plain = render(frame, make_view(res, opts, "UNSURE | 1 fps"), opts)
    alert = render(frame, make_view(res, opts, "UNSURE | 1 fps", alert=True), opts)

    def orange(img: np.ndarray) -> int:  # text pixels near ALERT_BGR (antialiased edges)
        near = np.abs(img[:20].astype(int) - np.array(ALERT_BGR)) < 50
        return int(near.all(axis=-1).sum())

    assert orange(alert) > 20 and orange(plain) == 0


def test_heads_up_text_names_the_frame_mean_and_stills_get_no_timing():
    from lsdseg.cli.pipeline import _work
    from lsdseg.cli.sources import Frame

    res = fake_result()
    frame = Frame(0, np.zeros((H, W, 3), np.uint8), None, "a.png")
    mean = float(res.mutual_info.mean())  # the default map: mutual information
    video = _work(frame, res, 123.4, 5.0, OverlayOptions(), False).view.hud
    # the first line is the frame-level state in words, with the presence score
    assert video == f"POLYP | p=0.90\nK={K} | MI {mean:.3f} | unsure 0.20\n5.0 fps | 123 ms"
    still = _work(frame, res, 123.4, 5.0, OverlayOptions(), False, still=True).view.hud
    assert still == f"POLYP | p=0.90\nK={K} | MI {mean:.3f} | unsure 0.20"
    opts = OverlayOptions(measure="entropy")
    ent = _work(frame, res, 1.0, 1.0, opts, False, still=True).view.hud
    assert ent.split("\n")[1].startswith(f"K={K} | entropy {float(res.entropy.mean()):.3f}")
    flagged = _work(frame, res, 1.0, 1.0, OverlayOptions(), False, 0.1, still=True)
    assert flagged.view.hud == f"UNSURE | p=0.90\nK={K} | MI {mean:.3f} | unsure 0.20"
    assert flagged.view.alert
    res.present, res.score = False, 0.05  # judged polyp-free: no mask, said in words
    free = _work(frame, res, 1.0, 1.0, OverlayOptions(), False, still=True)
    assert free.view.hud.startswith("no polyp | p=0.05\n") and not free.view.alert
    assert free.record["polyp_shown"] is False and free.record["area_fraction"] == 0


def test_the_colour_bar_names_the_unit_of_its_map():
    from lsdseg.cli.overlay import MEASURE_RANGE, MEASURE_UNIT, top_tick

    ticks = {m: top_tick(MEASURE_RANGE[m], MEASURE_UNIT[m]) for m in ("mi", "entropy", "std")}
    assert ticks == {"mi": "1 bit", "entropy": "1 bit", "std": "0.5"}  # a std has no unit
    assert top_tick(2.0, "bits") == "2 bits"


def test_one_hypothesis_says_it_has_no_uncertainty():
    from lsdseg.cli.pipeline import ONE_SAMPLE_EMPTY, _work
    from lsdseg.cli.sources import Frame

    res = fake_result(k=1)
    frame = Frame(0, np.zeros((H, W, 3), np.uint8), None, "a.png")
    work = _work(frame, res, 10.0, 5.0, OverlayOptions(), False, 0.1)
    assert work.view.hud == "POLYP | p=0.90\nK=1 | no uncertainty\n5.0 fps | 10 ms"
    assert not work.view.alert
    assert all(work.record[key] is None for key in ONE_SAMPLE_EMPTY)
    assert work.record["area_fraction"] > 0  # the mask is still measured


def test_grid_tiles_from_model_size_hypotheses_match_the_frame_size_ones():
    """segment keeps the K maps at the model's S x S: the tiles drawn from them are the
    tiles drawn from the frame-size maps, up to resampling (shrunk and enlarged)."""
    for h, w, s in [(288, 384, 64), (960, 1280, 64)]:  # tiles smaller, then larger than S
        small = fake_result(s, s, K)
        full = fake_result(h, w, K)
        full.hypotheses = np.stack(
            [cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in small.hypotheses]
        )
        full.mask = cv2.resize(small.mask.astype(np.uint8), (w, h)) > 0
        small.mask = full.mask  # the other maps are at the frame's size either way
        opts = OverlayOptions(style="grid", hud=False)
        a, b = make_view(small, opts).hypotheses, make_view(full, opts).hypotheses
        assert a.shape == b.shape == (K, *grid_layout(h, w, K)[2:])
        assert np.abs(a - b).mean() < 0.02 and np.abs(a - b).max() < 0.5


@pytest.mark.parametrize("h,w", [(288, 384), (256, 256)])  # CVC-ClinicDB's size, the model's
@pytest.mark.parametrize("style", ["mask", "uncertainty", "grid"])
def test_hud_fits_small_frames_at_every_k_whole_and_legible(h, w, style):
    """The longest heads-up text (flagged, three digits of fps, a third line as a frame-level
    state would add) is drawn whole, at a legible scale, inside the frame and off the grid's
    panel, for every K."""
    from lsdseg.cli.overlay import HUD_MIN_SCALE, hud_lines, hud_text

    frame = np.random.default_rng(3).integers(60, 200, (h, w, 3), dtype=np.uint8)
    for k in (1, 2, 4, 8, 16, 32):
        res = fake_result(h, w, k)
        text = hud_text(k, "entropy", 0.123, 0.88, True, 123.4, 1234.5)
        text += "\nno polyp 0.97 | unsure"  # a longer third line
        lines, scale, x, _ = place_hud(frame, text, res.mask)
        assert sorted(lines) == sorted(hud_lines(text, len(lines) > 3)), (k, lines)
        assert scale >= HUD_MIN_SCALE
        for line in lines:  # every glyph of every line inside the frame
            assert x + 4 + text_size(line, scale)[0] <= w, (k, line)
        opts = OverlayOptions(style=style)
        on = render(frame, make_view(res, opts, text, alert=True), opts).astype(int)
        off = render(frame, make_view(res, OverlayOptions(style=style, hud=False)), opts)
        changed = np.abs(on - off.astype(int)).sum(axis=2) > 0
        assert changed.any() and not changed[:, w:].any(), (k, style)  # never on the panel
        assert not (changed[:, :w] & res.mask).any(), (k, style)  # nor on the polyp
