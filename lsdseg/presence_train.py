"""Training the presence head: polyp frames against polyp-free ones, the rest frozen.

The head (:mod:`lsdseg.presence`) reads pooled image-encoder features, so training it never
runs the denoiser: each image is encoded once per augmented view, its pooled features are
kept in memory, and the head is fitted on them in seconds. The segmentation weights stay
exactly as they were, so the masks of polyp frames the head lets through do not change.

The frames:

- positives: polyp frames (a non-empty mask);
- negatives: polyp-free images (no mask, an empty mask, or a ``--negatives`` folder) and the
  largest polyp-free crop of each training polyp frame (:func:`lsdseg.negatives.polyp_free_crop`),
  the same cameras' mucosa, folds, stool and border.

``views`` > 1 adds augmented copies (flips, rotation, zoom, colour) and random polyp-free crops.
One view, the frames as they are, is the default: on validation it gave the fewest false alarms
(``benchmarks/RESULTS.md``, "Knowing when there is no polyp"); square crops around the polyp as
extra positives were tried and made crops of mucosa look like polyps.

Validation scores the validation polyp frames, the validation negatives and the largest
polyp-free crop of each validation polyp frame, unaugmented; the threshold is the highest that
keeps ``min_sensitivity`` of the validation polyp frames (all, by default), in the middle of the
gap to the next validation score below (:func:`choose_threshold`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lsdseg.augment import AugmentConfig, augment
from lsdseg.data import Pair, load_sample
from lsdseg.imageio import resize_square
from lsdseg.metrics.calibration import detection_auroc
from lsdseg.model import LatentSegmenter
from lsdseg.negatives import polyp_free_crop
from lsdseg.presence import PresenceHead, pool

__all__ = [
    "PresenceTrainConfig",
    "choose_threshold",
    "fit_head",
    "frame_views",
    "pooled_features",
    "score_sets",
    "summary",
    "validation_table",
    "with_head",
]


@dataclass(frozen=True)
class PresenceTrainConfig:
    """Settings of ``lsdseg train --stage presence``."""

    hidden: int = 64  # hidden width of the head (ModelConfig.presence)
    views: int = 1  # views of each training image: the first as it is, the others augmented
    steps: int = 2000  # optimiser steps on the cached features
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-2
    # the threshold keeps at least this share of the validation polyp frames: all of them by
    # default, since a polyp frame judged polyp-free loses its whole mask
    min_sensitivity: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.hidden <= 4096, f"hidden={self.hidden} must be in 1..4096"),
            (1 <= self.views <= 64, f"views={self.views} must be in 1..64"),
            (1 <= self.steps <= 1_000_000, f"steps={self.steps} must be in 1..1000000"),
            (self.batch_size >= 2, f"batch_size={self.batch_size} must be >= 2"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr} must be > 0"),
            (self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0"),
            (
                0.5 <= self.min_sensitivity <= 1.0,
                f"min_sensitivity={self.min_sensitivity} must be between 0.5 and 1",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def frame_views(
    pair: Pair, views: int, seed: int, kind: str, max_side: int = 0
) -> Iterable[tuple[np.ndarray, bool]]:
    """The training views of one image: ``(RGB image, holds a polyp)`` each.

    ``kind`` is ``"frame"`` (the image itself, augmented after the first view) or ``"crop"``
    (polyp-free crops of a polyp frame, a new random one per view; none if the polyp leaves no
    room). ``max_side`` > 0 first shrinks an image whose shorter side is longer (aspect kept),
    so a 1920 x 1072 frame is not augmented at full size to be encoded at 256.
    """
    image, mask = load_sample(pair)
    if max_side and min(image.shape[:2]) > max_side:
        import cv2

        f = max_side / min(image.shape[:2])
        size = (round(image.shape[1] * f), round(image.shape[0] * f))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    positive = mask is not None and bool(mask.any())
    aug = AugmentConfig()
    for v in range(views):
        rng = np.random.default_rng([seed, v, _name_seed(pair)])
        if kind == "crop":
            if not positive:
                return
            crop = polyp_free_crop(image, mask, rng=None if v == 0 else rng)
            if crop is None:
                return
            out = crop if v == 0 else augment(crop, None, rng, aug)[0]
            yield out, False
            continue
        yield (image if v == 0 else augment(image, None, rng, aug)[0]), positive


def _name_seed(pair: Pair) -> int:
    """A stable integer for a pair (its path), so views do not depend on the list's order."""
    return int.from_bytes(str(pair.image).encode()[-16:].rjust(16, b"\0")[:8], "little")


@torch.inference_mode()
def pooled_features(
    model: LatentSegmenter, images: Iterable[np.ndarray], batch: int = 16
) -> torch.Tensor:
    """RGB images (any size) -> the head's pooled input (N, 2C), at the model's size S.

    Every image is resized as inference resizes frames (:func:`lsdseg.imageio.resize_square`)
    and encoded by the frozen image encoder.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    chunk: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).to(device, torch.float32)
        x = model.normalize(x / 255.0)
        _, maps = model.image_ae.encode_with_presence_features(x)
        out.append(pool(maps).float().cpu())
        chunk.clear()

    for image in images:
        chunk.append(resize_square(image, cfg.image_size))
        if len(chunk) == batch:
            flush()
    if chunk:
        flush()
    if not out:
        return torch.zeros(0, 2 * sum(model.image_ae.presence_channels))
    return torch.cat(out)


def fit_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    channels: Sequence[int],
    cfg: PresenceTrainConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> PresenceHead:
    """Fit a :class:`PresenceHead` on pooled features (N, 2C) and 0/1 labels (N,).

    The features are standardised for the fit and the standardisation is folded into the
    first layer afterwards, so the head takes raw pooled features. Positives and negatives are
    weighted to count equally (class-balanced BCE).
    """
    if labels.min() == labels.max():
        raise ValueError("the presence head needs both polyp frames and polyp-free frames")
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    mu, sd = features.mean(0), features.std(0).clamp_min(1e-4)
    z = (features - mu) / sd
    head = PresenceHead(channels, cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos = labels.float().mean()
    weight = torch.where(labels > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    for step in range(cfg.steps):
        idx = torch.randint(0, len(z), (cfg.batch_size,), generator=g)
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # cosine decay
        for group in opt.param_groups:
            group["lr"] = lr
        logits = head.forward_pooled(z[idx])
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx].float(), weight[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, loss.item())
    with torch.no_grad():  # fold the standardisation: W (x - mu) / sd + b
        w = head.hidden.weight / sd
        head.hidden.bias -= w @ mu
        head.hidden.weight.copy_(w)
    return head.eval()


@torch.inference_mode()
def score_sets(head: PresenceHead, sets: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The presence score (a probability) of every row of each set of pooled features."""
    return {k: torch.sigmoid(head.forward_pooled(v)).numpy() for k, v in sets.items()}


def choose_threshold(
    positive: np.ndarray, min_sensitivity: float, negative: np.ndarray | None = None
) -> float:
    """The threshold (score >= threshold is a polyp) that keeps at least ``min_sensitivity`` of
    the ``positive`` scores, placed in the middle of the gap below the lowest score it keeps:
    halfway to the next score below, a polyp frame let go or a ``negative`` (polyp-free) one,
    so that it sits between validation scores rather than on one (0 below the lowest score
    when nothing is below it)."""
    if len(positive) == 0:
        raise ValueError("choosing a threshold needs validation polyp frames")
    s = np.sort(positive)
    allowed = math.floor((1.0 - min_sensitivity) * len(s) + 1e-9)  # misses allowed
    keep = s[allowed]  # the lowest score still kept
    below = [s[allowed - 1]] if allowed > 0 else []
    if negative is not None:
        below += [float(v) for v in negative if v < keep]
    return float((keep + max(below)) / 2 if below else keep / 2)


def summary(
    scores: dict[str, np.ndarray], threshold: float, positive: str = "polyp"
) -> dict[str, dict[str, float]]:
    """Per set: frames, the share judged to hold a polyp (sensitivity for ``positive``, the
    false-alarm rate for the others) and, for the others, the AUROC against ``positive``."""
    out: dict[str, dict[str, float]] = {}
    pos = scores[positive]
    for name, s in scores.items():
        row = {"frames": float(len(s)), "judged_polyp": float(np.mean(s >= threshold))}
        if name != positive and len(s) and len(pos):
            y = torch.cat([torch.ones(len(pos)), torch.zeros(len(s))]).bool()
            score = torch.from_numpy(np.concatenate([pos, s]).astype(np.float64))
            row["auroc"] = float(detection_auroc(score, y))
        out[name] = row
    return out


def validation_table(table: dict[str, dict[str, float]]) -> str:
    """:func:`summary`'s table as Markdown, for model cards: each set's frames, share judged to
    hold a polyp and AUROC against the polyp frames ("-" for the polyp frames themselves)."""
    rows = [
        f"| {name} | {int(r['frames'])} | {r['judged_polyp']:.3f} | "
        + (f"{r['auroc']:.4f} |" if "auroc" in r else "- |")
        for name, r in table.items()
    ]
    header = ["| validation set | frames | judged polyp | AUROC vs polyp frames |"]
    return "\n".join([*header, "| --- | --- | --- | --- |", *rows])


def with_head(model: LatentSegmenter, head: PresenceHead, threshold: float) -> LatentSegmenter:
    """A copy of ``model`` with ``head`` as its presence head and ``threshold`` in its sampler
    settings."""
    cfg = model.cfg
    cfg = dataclasses.replace(
        cfg,
        presence=head.hidden.out_features,
        sampler=dataclasses.replace(cfg.sampler, presence_threshold=round(threshold, 6)),
    )
    new = LatentSegmenter(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("presence.")}
    state.update({f"presence.{k}": v for k, v in head.state_dict().items()})
    new.load_state_dict(state)
    return new.to(next(model.parameters()).device).eval()
