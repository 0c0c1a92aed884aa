"""Tests for lsdseg.cli.server: a batch of Triton requests -> Segmenter calls -> answers.

No server here: the requests are the objects PyTriton hands the model (data, parameters,
requested output names), so these run in the main environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import lsdseg
from lsdseg.cli.server import (
    OUTPUTS,
    ClientErrors,
    SegmentModel,
    client_message,
    group_jobs,
    parse_request,
)


@dataclass
class Request:
    data: dict[str, np.ndarray]
    parameters: dict | None = None
    requested_output_names: list[str] | None = None


def request(frame: np.ndarray, outputs: list[str] | None = None, **params) -> Request:
    return Request({"frame": frame[None]}, params or None, outputs)


def frame(seed: int, h: int = 40, w: int = 50) -> np.ndarray:
    """A BGR frame with a bright disc, so the tiny model's masks are not all empty."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2] = [40, 180, 230]
    return img


@pytest.fixture(scope="module")
def seg(tiny: str) -> lsdseg.Segmenter:
    return lsdseg.load(tiny)


def assert_matches(answer: dict, local: lsdseg.Result, threshold: float) -> None:
    """Server answer vs the local Segmenter: equal up to batched-convolution rounding."""
    for name in ("mean", "std", "entropy", "mutual_info", "hypotheses"):
        np.testing.assert_allclose(answer[name][0], getattr(local, name), atol=1e-5, err_msg=name)
    clear = np.abs(local.mean - threshold) > 1e-4  # pixels not on the threshold's edge
    np.testing.assert_array_equal(answer["mask"][0][clear], local.mask[clear])
    assert int(answer["seed"][0, 0]) == local.seed
    assert float(answer["agreement"][0, 0]) == pytest.approx(local.agreement, abs=1e-3)


def test_batched_requests_match_each_frame_alone(seg):
    default_threshold = seg.config.sampler.threshold
    cases = [  # (frame, parameters)
        (frame(0), {"seed": 1, "hypotheses": 3}),
        (frame(1), {"seed": 2, "hypotheses": 3}),
        (frame(2, 64, 48), {"seed": 1, "hypotheses": 3, "steps": 2}),
        (frame(3), {"seed": 3, "hypotheses": 3, "threshold": "0.3"}),
        (frame(4), {"seed": 4, "hypotheses": 3, "eta": 0.5}),
        (frame(5, 33, 71), {"seed": 5, "hypotheses": 3}),  # joins the first two
        (frame(6), {"seed": 6}),  # the checkpoint's defaults
    ]
    model = SegmentModel(seg)
    answers = model([request(f, **p) for f, p in cases])
    assert len(answers) == len(cases)
    assert (model.calls, model.frames) == (5, 7)  # {0, 1, 5}, {2}, {3}, {4}, {6}
    # requests batched together report the time of the call they shared
    assert answers[0]["compute_ms"] == answers[5]["compute_ms"] != answers[2]["compute_ms"]
    assert all(a["compute_ms"].shape == (1, 1) and a["compute_ms"][0, 0] > 0 for a in answers)
    for (f, params), answer in zip(cases, answers, strict=True):
        threshold = float(params.get("threshold", default_threshold))
        local = seg(
            f,
            hypotheses=params.get("hypotheses"),
            steps=params.get("steps"),
            eta=params.get("eta"),
            seed=params["seed"],
            threshold=threshold,
        )
        assert set(answer) == set(OUTPUTS)
        assert answer["mean"].shape == (1, *f.shape[:2]) and answer["mask"].dtype == np.bool_
        assert answer["hypotheses"].shape[1] == params.get("hypotheses", 2)
        assert_matches(answer, local, threshold)


def test_a_batch_of_one_is_bit_identical(seg):
    f = frame(7)
    (answer,) = SegmentModel(seg)([request(f, seed=11)])
    local = seg(f, seed=11)
    np.testing.assert_array_equal(answer["hypotheses"][0], local.hypotheses)
    np.testing.assert_array_equal(answer["mask"][0], local.mask)


def test_only_requested_outputs_are_sent(seg):
    (answer,) = SegmentModel(seg)([request(frame(0), ["seed", "mask"], seed=3)])
    assert list(answer) == ["mask", "seed"]
    assert answer["mask"].shape == (1, 40, 50) and answer["seed"].dtype == np.int64
    assert answer["seed"].tolist() == [[3]]


def test_missing_seed_is_drawn_returned_and_reproduces(seg):
    model = SegmentModel(seg)
    f = frame(1)
    (first,) = model([request(f)])
    seed = int(first["seed"][0, 0])
    (again,) = model([request(f, seed=seed)])
    np.testing.assert_array_equal(first["hypotheses"], again["hypotheses"])


@pytest.mark.parametrize(
    ("data", "params", "message"),
    [
        (None, {"hypothesis": 3}, "unknown parameter 'hypothesis' .did you mean 'hypotheses'"),
        (None, {"steps": "2"}, "steps='2' must be an integer"),
        (None, {"hypotheses": True}, "hypotheses=True must be an integer"),
        (None, {"eta": "much"}, "eta='much' must be a number"),
        (None, {"hypotheses": 0}, "hypotheses=0 must be between 1 and 256"),
        (None, {"threshold": 1.5}, r"threshold=1.5 must be in \(0, 1\)"),
        (None, {"seed": -1}, "seed=-1 must be between 0 and"),
        (np.zeros((2, 8, 8, 3), np.uint8), {}, r"shape \(2, 8, 8, 3\); send one frame per"),
    ],
)
def test_bad_requests_name_the_request_and_the_problem(seg, data, params, message):
    good = request(frame(0), seed=1)
    bad = request(frame(1), **params) if data is None else Request({"frame": data}, params)
    with pytest.raises(ValueError, match=f"request 2 of 2: .*{message}"):
        SegmentModel(seg)([good, bad])


def test_group_jobs_keeps_eta_requests_apart(seg):
    jobs = [
        parse_request(seg, request(frame(0), seed=1, eta=0.3)),
        parse_request(seg, request(frame(1), seed=2, eta=0.3)),
        parse_request(seg, request(frame(2), seed=3)),
        parse_request(seg, request(frame(3), seed=4, hypotheses=2)),  # 2 is the default K
    ]
    assert group_jobs(jobs) == [[0], [1], [2, 3]]


@pytest.mark.parametrize(
    ("data", "params", "message"),
    [
        (None, {"hypotheses": 0}, "hypotheses=0 must be between 1 and 256"),
        (None, {"hypotheses": 257}, "hypotheses=257 must be between 1 and 256"),
        (None, {"hypotheses": "abc"}, "parameter hypotheses='abc' must be an integer"),
        (None, {"steps": 0}, "steps=0 must be between"),
        (None, {"seed": -1}, "parameter seed=-1 must be between 0 and"),
        (None, {"eta": "nan"}, "eta=nan"),
        (None, {"colour": 1}, "unknown parameter 'colour'"),
        (np.zeros((2, 8, 8, 3), np.uint8), {}, "shape (2, 8, 8, 3)"),
        (np.zeros((1, 0, 8, 3), np.uint8), {}, "shape (1, 0, 8, 3)"),
    ],
)
def test_a_refused_request_reaches_the_client_as_one_line(seg, data, params, message):
    bad = request(frame(1), **params) if data is None else Request({"frame": data}, params)
    try:
        SegmentModel(seg)([bad])
    except ValueError as e:
        error = e
    # PyTriton formats the error of the callable with its traceback module: ours stands in
    sent = "".join(ClientErrors().format_exception(None, error, error.__traceback__))
    assert sent.startswith("request 1 of 1: ") and message in sent, sent
    assert "\n" not in sent and "Traceback" not in sent and ".py" not in sent
    try:
        SegmentModel(seg)([bad])
    except ValueError:
        assert ClientErrors().format_exc() == sent


def test_an_internal_error_is_named_without_its_traceback():
    try:
        raise RuntimeError("CUDA out of memory at /srv/secret/path.py")
    except RuntimeError as e:
        sent = client_message(e)
    assert sent == "internal error of the server (RuntimeError); its log has the details"


def test_a_frame_above_the_pixel_limit_is_refused(seg, monkeypatch):
    monkeypatch.setenv("LSDSEG_MAX_IMAGE_PIXELS", "1999")
    with pytest.raises(ValueError, match="has 40x50 pixels, above the server's limit of 1999"):
        parse_request(seg, request(frame(0)))
