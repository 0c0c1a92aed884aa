"""Tests for lsdseg.augment: paired geometry stays aligned, colour jitter is image-only."""

from __future__ import annotations

import numpy as np
import pytest

from lsdseg.augment import AugmentConfig, augment, resize_pair

GEOMETRY = AugmentConfig(
    hflip=0.5, vflip=0.5, affine_p=1.0, rotate_deg=180.0, scale=(0.7, 1.4), color_p=0.0
)


def square_pair(h: int = 64, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Dark textured image with a bright off-centre square exactly where the mask is."""
    rng = np.random.default_rng(0)
    image = rng.integers(20, 60, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:30, 45:70] = True
    image[mask] = (230, 220, 210)
    return image, mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_geometry_keeps_image_and_mask_aligned() -> None:
    image, mask = square_pair()
    rng = np.random.default_rng(123)
    for _ in range(40):
        out_img, out_mask = augment(image, mask, rng, GEOMETRY)
        assert out_img.shape == image.shape and out_img.dtype == np.uint8
        assert out_mask.shape == mask.shape and out_mask.dtype == np.bool_
        assert out_mask.any()
        assert dice(out_img.mean(axis=2) > 135, out_mask) > 0.9


def test_flips_are_exact_and_paired() -> None:
    image, mask = square_pair()
    cfg = AugmentConfig(hflip=1.0, vflip=0.0, affine_p=0.0, color_p=0.0)
    out_img, out_mask = augment(image, mask, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(out_img, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    cfg = AugmentConfig(hflip=1.0, vflip=1.0, affine_p=0.0, color_p=0.0)
    out_img, out_mask = augment(image, mask, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(out_img, image[::-1, ::-1])
    np.testing.assert_array_equal(out_mask, mask[::-1, ::-1])


def test_color_jitter_changes_image_only() -> None:
    image, mask = square_pair()
    cfg = AugmentConfig(hflip=0.0, vflip=0.0, affine_p=0.0, color_p=1.0, hue_deg=20.0)
    rng = np.random.default_rng(7)
    changed = 0
    for _ in range(5):
        out_img, out_mask = augment(image, mask, rng, cfg)
        np.testing.assert_array_equal(out_mask, mask)
        changed += int(not np.array_equal(out_img, image))
    assert changed == 5


def test_augment_deterministic_and_disabled() -> None:
    image, mask = square_pair()
    cfg = AugmentConfig()
    a = augment(image, mask, np.random.default_rng(42), cfg)
    b = augment(image, mask, np.random.default_rng(42), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    out_img, out_mask = augment(image, mask, np.random.default_rng(0), AugmentConfig.none())
    assert out_img is image and np.array_equal(out_mask, mask)
    out_img, none = augment(image, None, np.random.default_rng(0), cfg)
    assert none is None and out_img.shape == image.shape


def test_augment_rejects_bad_input() -> None:
    image, mask = square_pair()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="mask shape"):
        augment(image, mask[:10], rng, AugmentConfig())
    with pytest.raises(ValueError, match="uint8 RGB"):
        augment(image.astype(np.float32), mask, rng, AugmentConfig())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hflip": 1.5}, "hflip"),
        ({"color_p": -0.1}, "color_p"),
        ({"brightness": 1.0}, "brightness"),
        ({"rotate_deg": 200.0}, "rotate_deg"),
        ({"hue_deg": -1.0}, "hue_deg"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": 1.0}, "scale"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"AugmentConfig.{field}"):
        AugmentConfig(**kwargs)


def test_config_normalises_scale_and_none() -> None:
    assert AugmentConfig(scale=[0.9, 1.1]).scale == (0.9, 1.1)
    assert AugmentConfig.none().enabled is False


def test_resize_pair() -> None:
    image, mask = square_pair(64, 80)
    small_img, small_mask = resize_pair(image, mask, 32)
    assert small_img.shape == (32, 32, 3) and small_img.dtype == np.uint8
    assert small_mask.shape == (32, 32) and small_mask.dtype == np.bool_
    assert abs(small_mask.mean() - mask.mean()) < 0.02
    assert dice(small_img.mean(axis=2) > 135, small_mask) > 0.9
    big_img, big_mask = resize_pair(image, mask, 128)
    assert big_img.shape == (128, 128, 3) and abs(big_mask.mean() - mask.mean()) < 0.02
    same_img, none = resize_pair(image[:32, :32], None, 32)
    assert none is None and same_img.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="size"):
        resize_pair(image, mask, 0)
    with pytest.raises(ValueError, match="mask shape"):
        resize_pair(image, mask[:5], 32)


def test_resizing_is_imageio_s_rule_for_training_and_inference() -> None:
    """resize_pair and frame_to_model both resize by imageio.resize_square: INTER_AREA when
    both sides shrink, else INTER_LINEAR; and the import points from augment to imageio."""
    import ast
    import inspect

    import cv2

    from lsdseg import augment as augment_module
    from lsdseg import imageio
    from lsdseg.imageio import frame_to_model, resize_square

    image, mask = square_pair(64, 80)
    for size, interp in ((32, cv2.INTER_AREA), (70, cv2.INTER_LINEAR), (128, cv2.INTER_LINEAR)):
        want = cv2.resize(image, (size, size), interpolation=interp)
        np.testing.assert_array_equal(resize_square(image, size), want)
        np.testing.assert_array_equal(resize_pair(image, mask, size)[0], want)
        np.testing.assert_array_equal(frame_to_model(image, size, "rgb"), want)
        soft = cv2.resize(mask.astype(np.float32), (size, size), interpolation=interp)
        np.testing.assert_array_equal(resize_pair(image, mask, size)[1], soft > 0.5)
    square = image[:64, :64]
    assert resize_square(square, 64) is square  # that size already: uncopied
    with pytest.raises(ValueError, match="size=True"):
        resize_square(image, True)

    def lsdseg_imports(module) -> set[str]:
        tree = ast.parse(inspect.getsource(module))
        return {
            n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lsdseg")
        }

    assert "lsdseg.imageio" in lsdseg_imports(augment_module)
    assert "lsdseg.augment" not in lsdseg_imports(imageio)
