"""Paired image/mask resizing and augmentation for polyp segmentation.

Every geometric transform is applied identically to the image and its mask with one
``cv2.warpAffine`` per array, so pixels stay aligned. Colour jitter touches the image only.

Conventions: images are ``(H, W, 3)`` uint8 RGB, masks are ``(H, W)`` bool (any numeric
``{0, 1}`` array is accepted). ``cv2`` is imported inside the functions that use it. The
resizing rule is :mod:`lsdseg.imageio`'s (:func:`~lsdseg.imageio.resize_square`), which
inference uses too.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lsdseg.imageio import check_size, resize_square

__all__ = ["AugmentConfig", "augment", "resize_pair"]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Settings for :func:`augment`. All fields are validated on construction.

    Attributes:
        enabled: Master switch; ``False`` makes :func:`augment` return its inputs unchanged.
        hflip: Probability of a horizontal flip, in [0, 1].
        vflip: Probability of a vertical flip, in [0, 1].
        affine_p: Probability of applying rotation + scale, in [0, 1].
        rotate_deg: Maximum absolute rotation in degrees, in [0, 180]; drawn uniformly.
        scale: ``(low, high)`` zoom range, ``0 < low <= high``; ``> 1`` zooms in. Drawn
            log-uniformly so zooming in and out are equally likely.
        color_p: Probability of applying colour jitter (image only), in [0, 1].
        brightness: Brightness factor range ``1 ± brightness``, in [0, 1).
        contrast: Contrast factor range ``1 ± contrast``, in [0, 1).
        saturation: Saturation factor range ``1 ± saturation``, in [0, 1).
        hue_deg: Maximum absolute hue shift in degrees, in [0, 180].
    """

    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.5
    affine_p: float = 0.7
    rotate_deg: float = 30.0
    scale: tuple[float, float] = (0.85, 1.2)
    color_p: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue_deg: float = 5.0

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "affine_p", "color_p"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"AugmentConfig.{name}={value!r} is a probability: use [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"AugmentConfig.{name}={value!r}: use a value in [0, 1)")
        for name in ("rotate_deg", "hue_deg"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 180.0:
                raise ValueError(f"AugmentConfig.{name}={value!r}: use degrees in [0, 180]")
        try:
            low, high = (float(v) for v in self.scale)
        except (TypeError, ValueError):
            raise ValueError(
                f"AugmentConfig.scale={self.scale!r}: use a (low, high) pair such as (0.85, 1.2)"
            ) from None
        if not 0.0 < low <= high:
            raise ValueError(f"AugmentConfig.scale={self.scale!r}: need 0 < low <= high")
        object.__setattr__(self, "scale", (low, high))

    @classmethod
    def none(cls) -> AugmentConfig:
        """Return a config that disables all augmentation (``enabled=False``)."""
        return cls(enabled=False)


def _check_pair(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}: "
            "load it with lsdseg.data.read_image"
        )
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask shape {mask.shape} does not match image shape {image.shape[:2]}: "
            "resize both with resize_pair first"
        )


def resize_pair(
    image: np.ndarray, mask: np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image and its mask to ``size x size`` (aspect ratio is not kept).

    Both follow :func:`lsdseg.imageio.resize_square`: ``INTER_AREA`` when both sides shrink
    (anti-aliased), ``INTER_LINEAR`` otherwise. The mask is interpolated as float ``{0, 1}``
    and thresholded at 0.5, which keeps boundaries smoother and better aligned with the image
    than ``INTER_NEAREST``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        mask: ``(H, W)`` bool/``{0, 1}`` mask, or ``None``.
        size: Output side length in pixels (>= 1).

    Returns:
        ``(image, mask)``: ``(size, size, 3)`` uint8 and ``(size, size)`` bool (or ``None``).

    Raises:
        ValueError: If ``size`` is not a positive int or the arrays are malformed.
    """
    size = check_size(size)
    _check_pair(image, mask)
    if image.shape[:2] == (size, size):
        return image, None if mask is None else mask.astype(bool, copy=False)
    out = resize_square(image, size)
    if mask is None:
        return out, None
    return out, resize_square(mask.astype(np.float32), size) > 0.5


def _affine_matrix(
    h: int, w: int, angle_deg: float, scale: float, flip_x: bool, flip_y: bool
) -> np.ndarray:
    """2x3 matrix mapping source to destination pixels about the image centre."""
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    t = math.radians(angle_deg)
    cos, sin = math.cos(t) * scale, math.sin(t) * scale
    fx, fy = (-1.0 if flip_x else 1.0), (-1.0 if flip_y else 1.0)
    # Linear part: rotation·scale @ flip.
    a = np.array([[cos * fx, -sin * fy], [sin * fx, cos * fy]], dtype=np.float64)
    c = np.array([cx, cy])
    return np.hstack([a, (c - a @ c)[:, None]])


def _color_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    import cv2

    b = 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
    c = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    s = 1.0 + rng.uniform(-cfg.saturation, cfg.saturation)
    hue = rng.uniform(-cfg.hue_deg, cfg.hue_deg)
    out = image
    if cfg.hue_deg > 0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)  # H in [0, 255] covers 360 degrees
        shift = round(hue * 256.0 / 360.0)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    x = out.astype(np.float32) * b
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = grey[..., None] + (x - grey[..., None]) * s
    x = (x - float(grey.mean())) * c + float(grey.mean())
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    cfg: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Randomly flip, rotate, zoom and colour-jitter an image/mask pair.

    Flips, rotation and scale are combined into one affine matrix about the image centre and
    applied with one ``cv2.warpAffine`` per array: the image bilinearly, the mask bilinearly as
    float then thresholded at 0.5. Both use ``BORDER_REFLECT_101`` so that reflected image
    content is matched by reflected mask content. Pure flips are done exactly with numpy.
    Colour jitter (hue, brightness, saturation, contrast) changes the image only. Output size
    equals input size. Random draws happen in a fixed order, so the same ``rng`` state gives
    the same result.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        mask: ``(H, W)`` bool/``{0, 1}`` mask, or ``None`` (image-only augmentation).
        rng: Source of randomness, e.g. ``np.random.default_rng([seed, epoch, index])``.
        cfg: Augmentation settings; ``cfg.enabled=False`` returns the inputs unchanged.

    Returns:
        ``(image, mask)``: uint8 ``(H, W, 3)`` and bool ``(H, W)`` (or ``None``).

    Raises:
        ValueError: If the arrays are malformed or their sizes differ.
    """
    import cv2

    _check_pair(image, mask)
    if not cfg.enabled:
        return image, None if mask is None else mask.astype(bool, copy=False)
    h, w = image.shape[:2]
    flip_x = rng.random() < cfg.hflip
    flip_y = rng.random() < cfg.vflip
    do_affine = rng.random() < cfg.affine_p
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    low, high = cfg.scale
    zoom = math.exp(rng.uniform(math.log(low), math.log(high)))
    do_color = rng.random() < cfg.color_p
    color_rng = np.random.default_rng(rng.integers(0, 2**63))

    out_mask = None if mask is None else mask.astype(bool, copy=False)
    if do_affine and (angle != 0.0 or zoom != 1.0):
        m = _affine_matrix(h, w, angle, zoom, flip_x, flip_y)
        border = cv2.BORDER_REFLECT_101
        image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)
        if out_mask is not None:
            warped = cv2.warpAffine(
                out_mask.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border
            )
            out_mask = warped > 0.5
    elif flip_x or flip_y:
        axes = tuple(ax for ax, f in ((0, flip_y), (1, flip_x)) if f)
        image = np.ascontiguousarray(np.flip(image, axis=axes))
        if out_mask is not None:
            out_mask = np.ascontiguousarray(np.flip(out_mask, axis=axes))
    if do_color:
        image = _color_jitter(image, color_rng, cfg)
    return image, out_mask
