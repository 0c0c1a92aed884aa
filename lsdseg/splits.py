"""The train/validation split of a training run: ``splits.json``, and a check for video frames
that would be split one by one.

``splits.json`` (as nnU-Net's ``splits_final.json``) lists every image of each side by its
dataset and path inside it, with its split group, so a run can be reproduced or audited::

    {"seed": 0, "val_fraction": 0.1,
     "datasets": {"cvc-clinicdb": {"root": "/data/cvc-clinicdb", "grouped_by": "sequences.csv",
                                   "train": 383, "val": 45}},
     "train": [{"image": "cvc-clinicdb/images/1.png", "group": "cvc-clinicdb:1"}, ...],
     "val": [...]}

A dataset without group information (no ``sequences.csv``) is split image by image; when its
images are frames of videos, near-duplicate neighbours then land on both sides and validation
flatters the model. :func:`video_frame_share` tells such folders by how much more alike
neighbouring images (in file-name order) are than images far apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsdseg.data import Pair
from lsdseg.files import write_text_atomic

NEAR_DUPLICATE = 0.9  # correlation of two 16x16 grey thumbnails above which they look alike
VIDEO_SHARE = 0.3  # this many more neighbours than distant pairs alike: frames of videos


def _thumb(path: Path) -> np.ndarray | None:
    """A 16x16 grey thumbnail, zero-mean and unit-norm (None if the file cannot be read)."""
    import cv2

    g = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_4)
    if g is None:
        return None
    t = cv2.resize(g, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / (float(np.linalg.norm(t)) + 1e-6)


def video_frame_share(pairs: Sequence[Pair], sample: int = 200) -> float:
    """How much more often neighbouring images are near-duplicates than distant ones.

    Images are taken in the order given (file-name order from :func:`lsdseg.data.find_pairs`);
    up to ``sample`` neighbouring pairs, evenly spaced, are compared through 16x16 grey
    thumbnails, and as many pairs half the list apart. Returns the share of neighbours whose
    correlation exceeds :data:`NEAR_DUPLICATE` minus that share of the distant pairs: about 0
    for a folder of independent images (Kvasir-SEG), 0.6 for CVC-ClinicDB's 428 video frames
    (0.64 against 0.02). Above :data:`VIDEO_SHARE` the folder holds frames of videos.
    """
    n = len(pairs)
    if n < 4:
        return 0.0
    starts = np.unique(np.linspace(0, n - 2, min(sample, n - 1)).astype(int))
    cache: dict[int, np.ndarray | None] = {}

    def thumb(i: int) -> np.ndarray | None:
        if i not in cache:
            cache[i] = _thumb(pairs[i].image)
        return cache[i]

    def alike(offset: int) -> float:
        scores = []
        for i in starts:
            a, b = thumb(int(i)), thumb(int(i + offset) % n)
            if a is not None and b is not None:
                scores.append(float(a @ b) > NEAR_DUPLICATE)
        return float(np.mean(scores)) if scores else 0.0

    return alike(1) - alike(n // 2)


def split_record(
    train: Sequence[Pair],
    val: Sequence[Pair],
    datasets: dict[str, dict[str, Any]],
    seed: int,
    val_fraction: float | None,
) -> dict[str, Any]:
    """The content of ``splits.json`` (see the module docstring).

    Args:
        train, val: the pairs of each side; their group is ``dataset:group``.
        datasets: per dataset name (the group prefix): ``root`` and ``grouped_by``.
        seed, val_fraction: how the split was drawn (``val_fraction`` None: given folders).
    """

    def entry(p: Pair) -> dict[str, str]:
        name = p.group.split(":", 1)[0]
        root = datasets.get(name, {}).get("root")
        image = os.path.relpath(p.image, root) if root else str(p.image)
        row = {"image": f"{name}/{Path(image).as_posix()}", "group": p.group}
        if p.mask is None:
            row["negative"] = True  # a polyp-free image (no mask)
        return row

    record: dict[str, Any] = {"seed": seed, "val_fraction": val_fraction, "datasets": {}}
    for name, info in datasets.items():
        counts = {
            side: sum(p.group.split(":", 1)[0] == name for p in pairs)
            for side, pairs in (("train", train), ("val", val))
        }
        record["datasets"][name] = {**info, **counts}
    record["train"] = [entry(p) for p in train]
    record["val"] = [entry(p) for p in val]
    return record


def write_splits(path: Path, record: dict[str, Any]) -> None:
    """Write ``splits.json`` atomically."""
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def find_splits(checkpoint: Path) -> tuple[Path, dict[str, Any]] | None:
    """The ``splits.json`` of the run a checkpoint came from: in the checkpoint's folder, or in
    the run folder above it (``runs/train/x/best`` -> ``runs/train/x/splits.json``); None when
    there is none or it cannot be read."""
    for path in (checkpoint / "splits.json", checkpoint.parent / "splits.json"):
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if isinstance(record, dict) and isinstance(record.get("train"), list):
                return path, record
    return None


def _key(dataset: str, image: str) -> str:
    return f"{dataset}/{image}".casefold()  # folder names differ in case between copies


@dataclass(frozen=True)
class Overlap:
    """The images of an evaluation that a run trained on (see :func:`training_overlap`)."""

    trained: int  # how many of the evaluated images are in the run's training split
    total: int  # how many were evaluated
    held_out_groups: list[str]  # the run's validation groups of these datasets (no prefix)


def training_overlap(
    record: dict[str, Any], roots: Sequence[str | Path], pairs: Sequence[Pair]
) -> Overlap:
    """Which of ``pairs`` (found under the dataset folders ``roots``) a run trained on.

    An image matches a training entry of ``record`` (a ``splits.json``) by its dataset's
    folder name and its path inside it, the way :func:`split_record` names it, so a copy of
    the data elsewhere still matches.
    """
    trained = {
        _key(*e["image"].split("/", 1)) for e in record.get("train", []) if "/" in e["image"]
    }
    folders = [Path(r).resolve() for r in roots]
    names = set()
    hits = 0
    for p in pairs:
        image = Path(p.image).resolve()
        root = next((f for f in folders if image.is_relative_to(f)), None)
        if root is None:
            continue
        names.add(root.name.casefold())
        hits += _key(root.name, image.relative_to(root).as_posix()) in trained
    held = []
    for e in record.get("val", []):
        dataset, _, group = str(e.get("group", "")).partition(":")
        if dataset.casefold() in names and group not in held:
            held.append(group)
    return Overlap(hits, len(pairs), held)
