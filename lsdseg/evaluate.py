"""Evaluate a segmenter on image/mask pairs at each image's original resolution.

Two kinds of frame are scored. A polyp frame (a mask with foreground) gets the mask metrics
(Dice, IoU, ..., averaged over polyp frames only, the convention of the polyp literature) and
counts for the per-frame sensitivity: the share of polyp frames on which a mask is drawn. A
polyp-free frame (no mask file, or an empty mask) counts for the false-alarm rate: the share
on which a mask is drawn anyway (1 - specificity). A folder of polyp-free frames alone is a
valid evaluation.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lsdseg.data import DataError, Pair, load_sample
from lsdseg.metrics import SegmentationMetrics, detection_auroc, uncertainty_auroc
from lsdseg.segmenter import Result, Segmenter

log = logging.getLogger(__name__)

LOW_DICE = 0.5  # an image below this Dice counts as failed for the unsure-score AUROC
# the keys of every row, in order; the metric keys only on labelled rows
COLUMNS = (
    "name",
    "group",
    "labelled",
    "polyp",
    "score",
    "present",
    "height",
    "width",
    "area_fraction",
    "agreement",
    "mean_entropy",
    "unsure",
    "latency_ms",
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95",
    "ece",
    "uncertainty_auroc",
    "mi_auroc",
    "std_auroc",
)
# the other uncertainty maps scored as the entropy is (uncertainty_auroc): column -> Result field
OTHER_MAPS = {"mi_auroc": "mutual_info", "std_auroc": "std"}


@dataclass
class Evaluation:
    """Per-image rows, the summary, and the pairs that could not be read."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    stopped: bool = False  # ``stop`` was set before every pair was done


def evaluate(
    segmenter: Segmenter,
    pairs: Sequence[Pair],
    hypotheses: int | None = None,
    steps: int | None = None,
    eta: float | None = None,
    seed: int = 0,
    threshold: float | None = None,
    on_image: Callable[[Pair, np.ndarray, np.ndarray | None, Result], None] | None = None,
    on_skip: Callable[[Pair, str], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    presence_threshold: float | None = None,
) -> Evaluation:
    """Segment every pair and score it against its mask (if it has one).

    Uncertainty for the error-detection AUROC is the entropy of the mean (bits,
    ``uncertainty_auroc``); the mutual information and the std of the K hypotheses are scored
    the same way (``mi_auroc``, ``std_auroc``). Pairs whose
    files cannot be read are skipped with a warning and listed in ``Evaluation.skipped``;
    pairs without a mask are segmented and reported as unlabelled.

    Args:
        segmenter: the model to evaluate.
        pairs: images with optional masks.
        hypotheses, steps, eta, threshold, presence_threshold: sampler settings (None =
            checkpoint defaults).
        seed: base seed; image i uses ``seed + i`` so results do not depend on batching.
        on_image: called with (pair, image RGB, mask or None, result) after each image.
        on_skip: called with (pair, reason) for each pair that cannot be read, instead of
            logging a warning.
        on_row: called with each row as soon as it is computed (to write it at once).
        stop: when set, the pairs after the current one are left out and the summary covers
            those done (``Evaluation.stopped``).

    Returns:
        The per-image rows (``name``, ``labelled``, metrics..., ``unsure``, ``latency_ms``) and
        a summary (means over labelled images, counts, mean latency, and ``unsure_auroc``: how
        well the per-frame unsure score finds the images below Dice 0.5; see
        :func:`unsure_summary`). Calibration is reported twice, under two names:
        ``ece_pooled``, the ECE of all labelled pixels binned together (15 bins,
        :func:`lsdseg.metrics.ece_pooled`), and ``ece_image_mean``, the mean of the rows'
        per-image ``ece``; a large image weighs more in the first.
    """
    metrics = SegmentationMetrics()
    ev = Evaluation()
    latencies = []
    for i, pair in enumerate(pairs):
        if stop is not None and stop.is_set():
            ev.stopped = True
            break
        try:
            image, mask = load_sample(pair)
        except (DataError, FileNotFoundError, OSError) as e:
            if on_skip is None:
                log.warning("skipping %s: %s", pair.image, e)
            else:
                on_skip(pair, str(e))
            ev.skipped.append((str(pair.image), str(e)))
            continue
        r = segmenter(
            image,
            hypotheses=hypotheses,
            steps=steps,
            eta=eta,
            seed=seed + i,
            threshold=threshold,
            order="rgb",
            presence_threshold=presence_threshold,
            hypotheses_size="model",  # the K maps are not scored: never K frame-sized copies
        )
        latencies.append(r.timings["total"])
        polyp = mask is not None and bool(mask.any())
        row: dict[str, Any] = {
            "name": pair.name,
            "group": pair.group,
            "labelled": mask is not None,
            "polyp": polyp,  # the ground truth: the frame holds a polyp
            "score": r.score,  # the presence score
            "present": r.present,  # the model's frame-level decision
            "height": image.shape[0],
            "width": image.shape[1],
            "area_fraction": float(r.mask.mean()),
            "agreement": r.agreement,
            "mean_entropy": float(r.entropy.mean()),
            "unsure": r.unsure,
            "latency_ms": r.timings["total"],
        }
        if polyp:
            values = metrics.update(
                torch.from_numpy(r.mask)[None],
                torch.from_numpy(mask)[None],
                prob=torch.from_numpy(r.mean)[None],
                uncertainty=torch.from_numpy(r.entropy)[None],
                ids=[pair.name],
            )
            row.update({k: float(v[0]) for k, v in values.items()})
            error = torch.from_numpy(r.mask != mask)[None]  # (1, H, W)
            for key, name in OTHER_MAPS.items():
                u = torch.from_numpy(getattr(r, name))[None]
                row[key] = float(uncertainty_auroc(u, error)[0])
        ev.rows.append(row)
        if on_row is not None:
            on_row(row)
        if on_image is not None:
            on_image(pair, image, mask, r)
    labelled = [r for r in ev.rows if r["polyp"]]
    ev.summary = {
        "images": len(ev.rows),
        "labelled": sum(r["labelled"] for r in ev.rows),
        "unlabelled": sum(not r["labelled"] for r in ev.rows),
        "skipped": len(ev.skipped),
        "mean_latency_ms": float(np.mean(latencies)) if latencies else math.nan,
        **frame_summary(ev.rows),
    }
    if labelled:
        means = metrics.compute()
        # two ECEs, each under a name of its own: ece_pooled (every labelled pixel in one set
        # of bins, the figure reported) and the mean of the per-image ECEs of per_image.csv
        means["ece_image_mean"] = means.pop("ece")
        ev.summary.update(means)
        for key in OTHER_MAPS:  # the mean over the images that have an AUROC, as means has it
            values = [r[key] for r in labelled if not math.isnan(r[key])]
            ev.summary[key] = float(np.mean(values)) if values else math.nan
        ev.summary.update(unsure_summary(labelled))
    return ev


def frame_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Frame-level figures: ``polyp_frames`` and ``polyp_free_frames`` (no mask, or an empty
    one), ``sensitivity`` (polyp frames with a mask drawn), ``false_alarm_rate`` (polyp-free
    frames with a mask drawn) and ``false_alarm_rate_05`` (drawn over more than 0.5% of the
    frame), and ``score_auroc``, how well the presence score separates the two kinds (NaN
    unless both are there). Rates are NaN when their frames are missing."""
    polyp = [r for r in rows if r["polyp"]]
    free = [r for r in rows if not r["polyp"]]

    def share(items: Sequence[dict[str, Any]], min_area: float = 0.0) -> float:
        if not items:
            return math.nan
        return float(np.mean([r["area_fraction"] > min_area for r in items]))

    auroc = math.nan
    if polyp and free:
        auroc = float(
            detection_auroc(
                torch.tensor([r["score"] for r in rows], dtype=torch.float64),
                torch.tensor([r["polyp"] for r in rows], dtype=torch.bool),
            )
        )
    return {
        "polyp_frames": len(polyp),
        "polyp_free_frames": len(free),
        "sensitivity": share(polyp),
        "false_alarm_rate": share(free),
        "false_alarm_rate_05": share(free, 0.005),
        "score_auroc": auroc,
    }


def unsure_summary(rows: Sequence[dict[str, Any]], below: float = LOW_DICE) -> dict[str, Any]:
    """How well the per-frame unsure score finds the failed images (Dice < ``below``).

    Returns ``low_dice_images`` (how many failed) and ``unsure_auroc``, the AUROC of the
    ``unsure`` column for detecting them (NaN when none or all failed, or no row has a score).
    """
    scored = [r for r in rows if not math.isnan(r.get("unsure", math.nan))]
    failed = [r["dice"] < below for r in scored]
    auroc = math.nan
    if scored:
        auroc = float(
            detection_auroc(
                torch.tensor([r["unsure"] for r in scored]), torch.tensor(failed, dtype=torch.bool)
            )
        )
    return {"low_dice_images": int(sum(failed)), "unsure_auroc": auroc}
