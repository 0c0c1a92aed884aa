"""Tests for lsdseg.segmenter: frames in, Results at the frame's size out."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import lsdseg
from lsdseg.model import LatentSegmenter
from lsdseg.runners import runner_names
from lsdseg.segmenter import Result, Segmenter
from lsdseg.uncertainty import aggregate
from lsdseg.unet import repeat_condition

H, W = 37, 53


@pytest.fixture
def seg(tiny_model: LatentSegmenter) -> Segmenter:
    return Segmenter(tiny_model)


def _frame(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A BGR uint8 frame with structure (a bright disc on a gradient) and colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 60)], axis=-1
    ).astype(np.int64)
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2
    img[disc] = [30, 200, 240]
    img += rng.integers(-10, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _same(a: Result, b: Result) -> None:
    for name in ("mask", "mean", "std", "entropy", "mutual_info", "hypotheses"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.agreement == b.agreement and a.seed == b.seed


def test_untrained_default_model_runs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        seg = lsdseg.load("untrained")
    assert "UNTRAINED" in caplog.text
    assert seg.config == lsdseg.ModelConfig()
    r = seg(_frame(h=20, w=30), hypotheses=2, steps=1, seed=0)
    assert r.mask.shape == (20, 30) and r.hypotheses.shape == (2, 20, 30)


def test_result_fields_at_the_input_size(seg: Segmenter) -> None:
    r = seg(_frame(), hypotheses=4, seed=1)
    assert isinstance(r, Result)
    assert r.mask.shape == (H, W) and r.mask.dtype == np.bool_
    for name in ("mean", "std", "entropy", "mutual_info"):
        value = getattr(r, name)
        assert value.shape == (H, W) and value.dtype == np.float32, name
        assert value.min() >= 0.0 and value.max() <= 1.0, name
    assert r.hypotheses.shape == (4, H, W) and r.hypotheses.dtype == np.float32
    assert 0.0 <= r.agreement <= 1.0 and r.seed == 1
    assert set(r.timings) == {"preprocess", "inference", "postprocess", "total"}
    assert seg(_frame(), seed=1).hypotheses.shape[0] == seg.config.sampler.hypotheses


def test_result_equals_the_model_on_the_preprocessed_frame(seg: Segmenter) -> None:
    """At S x S nothing is resized: the Result is the model's output on the same noise."""
    s = seg.config.image_size
    bgr = _frame(h=s, w=s)
    r = seg(bgr, hypotheses=3, steps=2, seed=7)

    cfg = seg.config
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float() / 255.0  # (3, S, S)
    x = (rgb - torch.tensor(cfg.image_mean)[:, None, None]) / torch.tensor(cfg.image_std)[
        :, None, None
    ]
    noise = torch.randn((1, 3, *seg.model.latent_shape), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        p = seg.model.hypotheses(x[None], noise, 2)[0]  # (K, S, S)
    np.testing.assert_allclose(r.hypotheses, p.numpy(), atol=1e-5)
    agg = aggregate(p)
    np.testing.assert_allclose(r.mean, agg.mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(r.std, agg.std.numpy(), atol=1e-5)
    np.testing.assert_allclose(r.entropy, agg.entropy.numpy(), atol=1e-5)
    np.testing.assert_allclose(r.mutual_info, agg.mutual_info.numpy(), atol=1e-5)


def test_mean_is_the_mean_of_the_resized_hypotheses(seg: Segmenter) -> None:
    r = seg(_frame(), hypotheses=3, seed=2)
    np.testing.assert_allclose(r.mean, r.hypotheses.mean(axis=0), atol=1e-6)


def test_seed_reproduces_and_differs(seg: Segmenter) -> None:
    frame = _frame()
    a, b = seg(frame, hypotheses=3, seed=11), seg(frame, hypotheses=3, seed=11)
    _same(a, b)
    c = seg(frame, hypotheses=3, seed=12)
    assert not np.allclose(a.hypotheses, c.hypotheses, atol=1e-4)
    drawn = seg(frame, hypotheses=3)
    assert isinstance(drawn.seed, int)
    _same(drawn, seg(frame, hypotheses=3, seed=drawn.seed))


def test_stochastic_sampling_is_seeded_too(seg: Segmenter) -> None:
    frame = _frame()
    a, b = seg(frame, eta=1.0, seed=3), seg(frame, eta=1.0, seed=3)
    _same(a, b)
    assert not np.allclose(a.hypotheses, seg(frame, eta=0.0, seed=3).hypotheses, atol=1e-4)


def test_grey_rgba_and_16_bit_frames(seg: Segmenter) -> None:
    bgr = _frame()
    grey = bgr[..., 1].copy()
    r = seg(grey, seed=0)
    assert r.mean.shape == (H, W)
    _same(r, seg(np.repeat(grey[..., None], 3, axis=2), seed=0))
    rgba = np.concatenate([bgr, np.full((H, W, 1), 17, np.uint8)], axis=2)
    _same(seg(rgba, seed=0), seg(bgr, seed=0))  # alpha is ignored
    deep = bgr.astype(np.uint16) * 257  # the same picture in 16 bits
    _same(seg(deep, seed=0), seg(bgr, seed=0))


def test_batches_keep_each_frame_size(seg: Segmenter) -> None:
    frames = [_frame(0, 37, 53), _frame(1, 64, 64), _frame(2, 20, 90)]
    out = seg(frames, hypotheses=2, seed=5)
    assert isinstance(out, list) and len(out) == 3
    for f, r in zip(frames, out, strict=True):
        assert r.mask.shape == f.shape[:2] and r.hypotheses.shape == (2, *f.shape[:2])
    # frame 0 of a batch gets the same noise as the frame alone
    alone = seg(frames[0], hypotheses=2, seed=5)
    np.testing.assert_allclose(out[0].hypotheses, alone.hypotheses, atol=1e-5)
    stacked = seg(np.stack([frames[0], frames[0]]), hypotheses=2, seed=5)
    assert isinstance(stacked, list) and len(stacked) == 2


def test_colour_order_is_a_channel_flip(seg: Segmenter) -> None:
    img = _frame()
    _same(seg(img, order="rgb", seed=4), seg(np.ascontiguousarray(img[..., ::-1]), seed=4))
    _same(seg(img, order="rgb", seed=4), seg(img[..., ::-1], order="bgr", seed=4))
    assert not np.allclose(seg(img, order="rgb", seed=4).mean, seg(img, seed=4).mean, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"steps": 0}, "steps=0"),
        ({"hypotheses": 0}, "hypotheses=0"),
        ({"threshold": 1.5}, "threshold=1.5"),
        ({"eta": 2.0}, "eta=2.0"),
        ({"order": "xyz"}, "order='xyz'"),
    ],
)
def test_invalid_settings_name_the_argument(seg: Segmenter, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        seg(_frame(), **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"hypotheses": 2.5}, "hypotheses=2.5 must be an int"),
        ({"steps": 1.5}, "steps=1.5 must be an int"),
        ({"hypotheses": "2"}, "hypotheses='2' must be an int"),
        ({"hypotheses": True}, "hypotheses=True must be an int"),
        ({"eta": "0"}, "eta='0' must be a number"),
        ({"threshold": True}, "threshold=True must be a number"),
        ({"seed": b"\x01"}, "seed=b'\\x01' must be an int"),
        ({"warm_start": "x"}, "warm_start='x' must be the Result of the previous call"),
    ],
)
def test_settings_of_the_wrong_type_are_type_errors(
    seg: Segmenter, kwargs: dict, fragment: str
) -> None:
    with pytest.raises(TypeError) as info:
        seg(_frame(), **kwargs)
    assert fragment in str(info.value)
    seg(_frame(), hypotheses=np.int64(2), steps=np.int32(1), eta=0, threshold=np.float32(0.5))


def test_empty_and_malformed_batches(seg: Segmenter) -> None:
    with pytest.raises(ValueError, match="empty"):
        seg([])
    with pytest.raises(TypeError, match="numpy"):
        seg([_frame(), "frame.png"])
    with pytest.raises(ValueError):
        seg(np.zeros((4, 5, 6, 7), np.uint8))  # 7 channels


def test_unknown_backend_lists_the_choices(tiny_model: LatentSegmenter) -> None:
    with pytest.raises(ValueError) as info:
        Segmenter(tiny_model, backend="tensorflow")
    msg = str(info.value)
    assert "'tensorflow'" in msg
    for name in ("torch", "triton", "onnx", "trt"):
        assert name in msg and name in runner_names()
    with pytest.raises(ValueError, match="tensorflow"):
        lsdseg.load("untrained", backend="tensorflow")


def test_triton_backend_without_triton_says_how_to_install(tiny: str) -> None:
    # triton is installed with [dev]: hide it in a fresh interpreter, as on a machine without it
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import lsdseg\n"
        "try:\n"
        f"    lsdseg.load({tiny!r}, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "backend 'triton' is not available" in out and 'pip install "lsdseg[triton]"' in out


def test_mask_is_mean_above_threshold(seg: Segmenter) -> None:
    frame = _frame()
    mean = seg(frame, seed=9).mean
    threshold = float(np.median(mean))
    assert 0.0 < threshold < 1.0
    r = seg(frame, seed=9, threshold=threshold)
    np.testing.assert_array_equal(r.mask, r.mean > threshold)
    assert r.mask.any() and not r.mask.all()


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path) -> None:
    with pytest.raises(lsdseg.CheckpointError, match="does not exist"):
        lsdseg.load(tmp_path / "missing")


def _count_denoiser_calls(seg: Segmenter) -> list[int]:
    calls = [0]
    original = seg.model.unet.denoise

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    seg.model.unet.denoise = counting  # type: ignore[method-assign]
    return calls


def test_result_carries_the_clean_latents(seg: Segmenter) -> None:
    r = seg(_frame(), hypotheses=3, steps=2, seed=0)
    assert r.latents is not None and r.latents.shape == (3, *seg.model.latent_shape)
    # decoding the returned latents gives the returned hypotheses (at S x S)
    with torch.no_grad():
        p = torch.sigmoid(seg.model.decode_masks(r.latents))[:, 0]
    s = seg.config.image_size
    again = seg(np.ascontiguousarray(_frame(h=s, w=s)), hypotheses=3, steps=2, seed=0)
    with torch.no_grad():
        p2 = torch.sigmoid(seg.model.decode_masks(again.latents))[:, 0]
    np.testing.assert_allclose(p2.numpy(), again.hypotheses, atol=1e-5)
    assert p.shape == (3, s, s)


def test_warm_start_runs_only_the_steps_below_its_timestep(seg: Segmenter) -> None:
    prev = seg(_frame(0), hypotheses=3, steps=4, seed=0)
    calls = _count_denoiser_calls(seg)
    seg(_frame(1), hypotheses=3, steps=4, seed=1)
    assert calls[0] == 4  # trailing timesteps 999, 749, 499, 249
    calls[0] = 0
    warm = seg(_frame(1), hypotheses=3, steps=4, seed=1, warm_start=prev, warm_timestep=499)
    assert calls[0] == 2  # 499, 249
    again = seg(_frame(1), hypotheses=3, steps=4, seed=1, warm_start=prev, warm_timestep=499)
    _same(warm, again)


def test_warm_start_equals_a_manual_ddim_from_the_noised_latents(seg: Segmenter) -> None:
    from lsdseg.diffusion import DDIMSampler

    prev = seg(_frame(0), hypotheses=2, steps=4, seed=0)
    s = seg.config.image_size
    frame = _frame(1, h=s, w=s)
    warm = seg(frame, hypotheses=2, steps=4, seed=7, warm_start=prev, warm_timestep=600)
    # independent: same generator stream (noise draw, then the warm-start noise), DDPM eq. 4
    gen = torch.Generator().manual_seed(7)
    torch.randn((1, 2, *seg.model.latent_shape), generator=gen)
    eps = torch.randn((1, 2, *seg.model.latent_shape), generator=gen)
    abar = seg.model.schedule.alphas_cumprod[600].item()
    z = (abar**0.5 * prev.latents[None] + (1 - abar) ** 0.5 * eps)[0]  # (K, c, h, w)
    sampler = DDIMSampler(seg.model.schedule, 4, 0.0, "trailing", start_timestep=600)
    assert sampler.timesteps == [600, 499, 249]
    x = seg.preprocess([frame], "bgr")
    with torch.no_grad():
        cond = repeat_condition(seg.model.unet.condition(seg.model.encode_image(x)), 2)
        z0 = sampler.sample(lambda zt, t: seg.model.unet.denoise(zt, t, cond), z)
        p = torch.sigmoid(seg.model.decode_masks(z0))[:, 0]
    np.testing.assert_allclose(warm.hypotheses, p.numpy(), atol=1e-5)


def test_warm_start_errors(seg: Segmenter) -> None:
    prev = seg(_frame(0), hypotheses=3, steps=2, seed=0)
    with pytest.raises(ValueError, match="hypotheses=2"):
        seg(_frame(1), hypotheses=2, warm_start=prev)
    with pytest.raises(ValueError, match="warm_timestep=1000"):
        seg(_frame(1), hypotheses=3, warm_start=prev, warm_timestep=1000)
    with pytest.raises(ValueError, match="one each"):
        seg([_frame(1), _frame(2)], hypotheses=3, warm_start=prev)


def test_per_frame_seeds_match_each_frame_alone(seg: Segmenter) -> None:
    frames = [_frame(0, 37, 53), _frame(1, 64, 64), _frame(2, 37, 53)]
    out = seg(frames, hypotheses=3, seed=[7, 8, 7])
    assert [r.seed for r in out] == [7, 8, 7]
    for f, r, s in zip(frames, out, (7, 8, 7), strict=True):
        alone = seg(f, hypotheses=3, seed=s)
        np.testing.assert_allclose(r.hypotheses, alone.hypotheses, atol=1e-5)
        np.testing.assert_allclose(r.mean, alone.mean, atol=1e-5)
    # one int seed draws the batch's noise from one generator: frame 1 differs from seed 8 alone
    shared = seg(frames, hypotheses=3, seed=8)
    assert not np.allclose(shared[1].hypotheses, out[1].hypotheses, atol=1e-3)


def test_per_frame_seeds_are_checked(seg: Segmenter) -> None:
    frames = [_frame(0), _frame(1)]
    with pytest.raises(ValueError, match="2 frames"):
        seg(frames, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="eta=0"):
        seg(frames, eta=0.5, seed=[1, 2])
    first = seg(frames, seed=[1, 2])
    with pytest.raises(ValueError, match="warm_start"):
        seg(frames, seed=[1, 2], warm_start=first)


@pytest.mark.parametrize(
    ("image", "error", "fragments"),
    [
        (None, TypeError, ["image is None", "cv2.imread returns None", "(H, W, 3) uint8"]),
        ("frame.png", TypeError, ["the str 'frame.png'", "cv2.imread", "(H, W, 3) uint8"]),
        (3.5, TypeError, ["a float", "(H, W, 3) uint8"]),
        ([_frame(), None], TypeError, ["frame 1 of the batch is None", "cv2.imread"]),
        (np.zeros(7, np.uint8), ValueError, ["shape (7,)", "(H, W, 3) uint8"]),
        (np.zeros((1, 2, 3, 4, 3), np.uint8), ValueError, ["shape (1, 2, 3, 4, 3)"]),
        # not 64 grey frames of 64 x 5 pixels, as it was taken before
        (np.zeros((64, 64, 5), np.uint8), ValueError, ["(64, 64, 5): 5 channels is not an image"]),
    ],
)
def test_a_call_on_no_image_says_what_was_passed_and_what_is_expected(
    seg: Segmenter, image: object, error: type, fragments: list[str]
) -> None:
    with pytest.raises(error) as info:
        seg(image)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("seed", "error", "fragment"),
    [
        (2**70, ValueError, "seed=1180591620717411303424 must be between 0 and 2**63 - 1"),
        (2**63, ValueError, "must be between 0 and 2**63 - 1"),
        (-1, ValueError, "seed=None draws a new one"),
        (1.5, TypeError, "seed=1.5 must be an int"),
        (True, TypeError, "seed=True must be an int"),
        ([0, 2**64], ValueError, "seed[1]=18446744073709551616 must be between"),
    ],
)
def test_seeds_out_of_range_are_named(seg: Segmenter, seed, error: type, fragment: str) -> None:
    frames = [_frame(), _frame(1)] if isinstance(seed, list) else _frame()
    with pytest.raises(error) as info:
        seg(frames, seed=seed)
    assert fragment in str(info.value)


def test_the_largest_seed_and_numpy_ints_work(seg: Segmenter) -> None:
    assert seg(_frame(), seed=2**63 - 1).seed == 2**63 - 1
    _same(seg(_frame(), seed=np.int64(7)), seg(_frame(), seed=7))


def test_hypotheses_at_the_model_size_leave_the_other_maps_as_they_were(seg: Segmenter) -> None:
    """hypotheses_size="model": the K maps stay at S x S (a large frame's memory), resized
    they are the frame-size ones, and every other field is unchanged."""
    s = seg.config.image_size
    full = seg(_frame(), hypotheses=3, steps=2, seed=4)
    small = seg(_frame(), hypotheses=3, steps=2, seed=4, hypotheses_size="model")
    assert small.hypotheses.shape == (3, s, s) and small.hypotheses.dtype == np.float32
    for name in ("mask", "mean", "std", "entropy", "mutual_info"):
        np.testing.assert_array_equal(getattr(small, name), getattr(full, name), err_msg=name)
    assert (small.agreement, small.unsure, small.seed) == (full.agreement, full.unsure, 4)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(small.hypotheses)[None], size=(H, W), mode="bilinear"
    )[0].clamp(0.0, 1.0)  # (K, H, W)
    np.testing.assert_allclose(full.hypotheses, resized.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="hypotheses_size='full' must be 'frame' or 'model'"):
        seg(_frame(), hypotheses_size="full")


def test_per_frame_noise_rows_are_each_generators_own_draw() -> None:
    from lsdseg.diffusion import draw_noise

    gens = [torch.Generator().manual_seed(s) for s in (3, 4, 3)]
    noise = draw_noise((3, 2, 4, 5, 5), gens, "cpu")
    for row, s in zip(noise, (3, 4, 3), strict=True):  # independent: torch.randn per seed
        expected = torch.randn((2, 4, 5, 5), generator=torch.Generator().manual_seed(s))
        assert torch.equal(row, expected)
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        draw_noise((3, 2), gens[:2], "cpu")


def test_frames_are_resized_to_the_model_and_maps_back_by_imageio() -> None:
    from lsdseg.augment import resize_pair
    from lsdseg.imageio import frame_to_model, resize_maps

    bgr = _frame(0, 37, 53)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    np.testing.assert_array_equal(frame_to_model(bgr, 16, "bgr"), resize_pair(rgb, None, 16)[0])
    assert frame_to_model(rgb, 16, "rgb").shape == (16, 16, 3)
    maps = torch.rand(5, 16, 16)
    assert resize_maps(maps, (16, 16)) is maps  # the model's size: no copy
    back = resize_maps(maps, (37, 53))
    assert back.shape == (5, 37, 53)
    ref = torch.nn.functional.interpolate(maps[None], (37, 53), mode="bilinear")[0]
    assert torch.equal(back, ref)
