"""Reading, pairing, splitting and serving polyp segmentation datasets.

Layouts understood by :func:`find_pairs` (``layout="auto"`` detects them in this order):

* ``"kvasir"``: ``root/images/*`` + ``root/masks/*.jpg`` with the same stem (Kvasir-SEG).
* ``"cvc"`` (alias ``"pranet"``): ``root/images/*`` + ``root/masks/*.png|tif`` with the same
  stem (CVC-ClinicDB, PraNet ``TestDataset/<name>/``); optional ``root/sequences.csv``.
* ``"generic"``: an image folder (``images|image|imgs|img|original``) and a mask folder
  (``masks|mask|labels|label|gt|groundtruth|ground truth|annotations``), paired by stem (e.g.
  the original CVC-ClinicDB ``Original/`` + ``Ground Truth/``); mask stems may end in
  ``_mask``, ``_segmentation``, ``_seg``, ``_gt`` or ``_label``.
* ``"isic"``: ``ISIC_<id>.jpg`` and ``ISIC_<id>_segmentation.png`` anywhere in ``root`` or its
  direct sub-folders (e.g. ``ISIC2018_Task1-2_Training_Input/`` + ``..._GroundTruth/``).
* ``"images-only"``: a folder of images (``root`` itself or ``root/images``), no masks.

If nothing matches and ``root`` holds a single sub-folder (an unzipped wrapper), it is searched.
A ``sequences.csv`` in ``root`` (columns ``file`` and ``sequence``) sets each pair's group, so
:func:`split_pairs` never puts frames of one video in both splits; otherwise group = stem.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsdseg.augment import AugmentConfig, augment, resize_pair
from lsdseg.imageio import DataError, read_image, read_mask, to_rgb8

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "AugmentConfig",
    "DataError",
    "Pair",
    "augment",
    "find_pairs",
    "load_sample",
    "read_image",
    "read_mask",
    "resize_pair",
    "split_pairs",
    "to_rgb8",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
LAYOUTS = ("auto", "kvasir", "cvc", "pranet", "isic", "generic", "images-only")
_IMAGE_DIRS = ("images", "image", "imgs", "img", "original")
_MASK_DIRS = ("masks", "mask", "labels", "label", "gt", "groundtruth", "ground truth")
_MASK_DIRS += ("ground_truth", "annotations")
_MASK_SUFFIX = re.compile(r"[_-](mask|masks|segmentation|seg|gt|label)$", re.IGNORECASE)
_ISIC_IMAGE = re.compile(r"^ISIC_\d+$", re.IGNORECASE)
_ISIC_MASK = re.compile(r"^(ISIC_\d+)_segmentation$", re.IGNORECASE)
_EXPECTED = (
    "expected one of: images/ + masks/ (Kvasir-SEG, CVC-ClinicDB, PraNet), "
    "ISIC_<id>.jpg + ISIC_<id>_segmentation.png (ISIC-2018), "
    "image|imgs/ + mask|labels|gt/ (generic), or a folder of images (images-only)"
)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image and its (optional) mask.

    Attributes:
        image: Path to the image file.
        mask: Path to the mask file, or ``None`` for unlabelled images.
        group: Split unit: the video sequence id when known, else ``name``.
        name: Image stem; defaults to ``image.stem``.
    """

    image: Path
    mask: Path | None = None
    group: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", Path(self.image))
        if self.mask is not None:
            object.__setattr__(self, "mask", Path(self.mask))
        if not self.name:
            object.__setattr__(self, "name", self.image.stem)
        if not self.group:
            object.__setattr__(self, "group", self.name)


# ----------------------------------------------------------------------------- pairing


def natural_key(path: Path) -> list:
    """Sort key that orders ``2.png`` before ``10.png`` (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _list_images(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=natural_key)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=natural_key,
    )


def _named_dir(folder: Path, names: Sequence[str]) -> Path | None:
    by_name = {p.name.lower(): p for p in _subdirs(folder)}
    return next((by_name[n] for n in names if n in by_name), None)


def _by_stem(
    files: Sequence[Path], what: str, key: Callable[[Path], str] = lambda p: p.stem
) -> dict[str, Path]:
    out: dict[str, Path] = {}
    dupes = 0
    for p in files:
        k = key(p)
        if k in out:
            dupes += 1
        else:
            out[k] = p
    if dupes:
        log.warning("%d %s share a stem with another file and were skipped", dupes, what)
    return out


def _read_groups(root: Path) -> dict[str, str]:
    csv_path = root / "sequences.csv"
    if not csv_path.is_file():
        return {}
    try:
        return _read_groups_csv(csv_path)
    except csv.Error as e:  # a field over csv's limit (128 KB), a NUL byte...
        raise DataError(f"{csv_path} is not a readable CSV file ({e}): fix or delete it") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path} is not UTF-8 text ({e.reason}): fix or delete it") from None


def _read_groups_csv(csv_path: Path) -> dict[str, str]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        fcol = next((cols[c] for c in ("file", "filename", "image", "frame") if c in cols), None)
        gcol = next((cols[c] for c in ("sequence", "group", "video", "seq") if c in cols), None)
        if fcol is None or gcol is None:
            raise DataError(
                f"{csv_path} needs a 'file' and a 'sequence' column, found {reader.fieldnames}: "
                "fix the header or delete the file"
            )
        groups: dict[str, str] = {}
        for row in reader:
            name, group = (row.get(fcol) or "").strip(), (row.get(gcol) or "").strip()
            if name and group:
                groups[name] = groups[Path(name).stem] = group
    return groups


def _pair_dirs(image_files: list[Path], mask_files: list[Path], strip: re.Pattern) -> list[Pair]:
    images = _by_stem(image_files, "images")
    exact = _by_stem(mask_files, "masks")
    loose = {strip.sub("", s): p for s, p in reversed(list(exact.items()))}
    pairs, used = [], set()
    for stem, img in images.items():
        mask = exact.get(stem) or loose.get(stem)
        if mask is not None:
            used.add(mask)
        pairs.append(Pair(img, mask))
    unmatched = sum(p.mask is None for p in pairs)
    if unmatched:
        log.warning("%d of %d images have no mask (kept with mask=None)", unmatched, len(pairs))
    orphans = len(set(exact.values()) - used)
    if orphans:
        log.warning("%d masks have no matching image and were ignored", orphans)
    return pairs


def _isic_pairs(root: Path) -> list[Pair]:
    images, masks = [], []
    for folder in [root, *_subdirs(root)]:
        for p in _list_images(folder):
            if _ISIC_IMAGE.match(p.stem):
                images.append(p)
            elif _ISIC_MASK.match(p.stem):
                masks.append(p)
    if not images or not masks:
        return []
    return _pair_dirs(images, masks, re.compile(r"_segmentation$", re.IGNORECASE))


def _detect(root: Path, layout: str) -> tuple[str, list[Pair]]:
    img_dir, mask_dir = _named_dir(root, _IMAGE_DIRS), _named_dir(root, _MASK_DIRS)
    if layout in ("auto", "kvasir", "cvc", "generic") and img_dir and mask_dir:
        masks = _list_images(mask_dir)
        found = layout
        if layout == "auto":
            standard = img_dir.name.lower() == "images" and mask_dir.name.lower() == "masks"
            jpeg = sum(p.suffix.lower() in (".jpg", ".jpeg") for p in masks)
            found = "generic" if not standard else "kvasir" if jpeg * 2 > len(masks) else "cvc"
        return found, _pair_dirs(_list_images(img_dir), masks, _MASK_SUFFIX)
    if layout in ("auto", "isic"):
        pairs = _isic_pairs(root)
        if pairs:
            return "isic", pairs
    if layout in ("auto", "images-only"):
        files = _list_images(root)
        if not files and img_dir is not None:
            files = _list_images(img_dir)
        if files:
            return "images-only", [Pair(p) for p in _by_stem(files, "images").values()]
    return layout, []


def find_pairs(root: str | os.PathLike, layout: str = "auto") -> tuple[str, list[Pair]]:
    """Find image/mask pairs under ``root`` (see the module docstring for layouts).

    Images without a mask in a labelled layout are kept with ``mask=None`` and a warning is
    logged; masks without an image are ignored with a warning. Non-image and hidden files are
    ignored. Order is deterministic (natural sort of the image path, so ``2.png < 10.png``).

    Args:
        root: Dataset folder.
        layout: One of :data:`LAYOUTS`; ``"auto"`` detects it, ``"pranet"`` means ``"cvc"``.

    Returns:
        ``(layout, pairs)`` with the detected/used layout name (never ``"auto"``/``"pranet"``).

    Raises:
        FileNotFoundError: If ``root`` does not exist.
        ValueError: If ``layout`` is unknown.
        DataError: If no images are found, or ``sequences.csv`` is malformed.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown: use one of {', '.join(LAYOUTS)}")
    layout = "cvc" if layout == "pranet" else layout
    root = Path(root).expanduser()
    if not root.is_dir():
        kind = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"dataset root {root} {kind}: pass the folder holding the data")
    search = root
    found, pairs = _detect(search, layout)
    for _ in range(2):  # descend through single wrapper folders, e.g. Kvasir-SEG.zip's
        subs = _subdirs(search)
        if pairs or len(subs) != 1 or _list_images(search):
            break
        search = subs[0]
        found, pairs = _detect(search, layout)
    if not pairs:
        what = "any dataset" if layout == "auto" else f"a {layout!r} dataset"
        raise DataError(f"no images found as {what} under {root}: {_EXPECTED}")
    groups = _read_groups(search)
    if groups:
        missing = sum(p.name not in groups and p.image.name not in groups for p in pairs)
        if missing:
            log.warning("%d images are not in sequences.csv; each is its own group", missing)
        pairs = [
            dataclasses.replace(p, group=groups.get(p.image.name, groups.get(p.name, p.name)))
            for p in pairs
        ]
    log.info("found %d pairs (%s layout) under %s", len(pairs), found, search)
    return found, pairs


def split_pairs(
    pairs: Sequence[Pair],
    val_fraction: float = 0.15,
    seed: int = 0,
    val_groups: Sequence[str] | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """Split pairs into train/val by group, so frames of one video never straddle splits.

    Args:
        pairs: Pairs from :func:`find_pairs`.
        val_fraction: Target share of pairs in validation, in [0, 1). Unique groups are
            shuffled with ``seed`` and taken until at least this share is reached (at least
            one group when > 0; at least one group always stays in training).
        seed: Shuffle seed; the same inputs and seed always give the same split.
        val_groups: Exact groups for validation (overrides ``val_fraction``/``seed``).

    Returns:
        ``(train, val)`` lists, each in the input order.

    Raises:
        ValueError: If ``val_fraction`` is out of range or ``val_groups`` names unknown groups.
        DataError: If ``val_groups`` covers every group, leaving training empty.
    """
    pairs = list(pairs)
    groups = sorted({p.group for p in pairs}, key=lambda g: natural_key(Path(g)))
    if val_groups is not None:
        chosen = {str(g) for g in val_groups}
        unknown = sorted(chosen - set(groups))
        if unknown:
            raise ValueError(
                f"val_groups {unknown} are not groups of these pairs; known: {groups[:20]}"
            )
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r}: use a value in [0, 1)")
        sizes: dict[str, int] = {}
        for p in pairs:
            sizes[p.group] = sizes.get(p.group, 0) + 1
        chosen, taken = set(), 0
        order = np.random.default_rng(seed).permutation(len(groups))
        for i in order[:-1] if val_fraction > 0 else []:
            if taken >= val_fraction * len(pairs):
                break
            chosen.add(groups[i])
            taken += sizes[groups[i]]
    train = [p for p in pairs if p.group not in chosen]
    val = [p for p in pairs if p.group in chosen]
    if pairs and not train:
        raise DataError(
            f"split leaves no training data ({len(groups)} group(s), all in validation): "
            "lower val_fraction, choose fewer val_groups, or add sequences"
        )
    return train, val


def dataset_of(group: str) -> str:
    """The dataset a :func:`load_pairs` group belongs to: ``kvasir:12`` -> ``kvasir``
    (``""`` for a group without a dataset prefix)."""
    return group.split(":", 1)[0] if ":" in group else ""


NEGATIVE_BLOCK = 50  # a negatives folder without sequences.csv is split in runs of this many


def load_pairs(
    dirs: Sequence[str],
    val_dirs: Sequence[str] | None,
    val_fraction: float,
    seed: int,
    datasets: dict[str, dict] | None = None,
    negatives: Sequence[str] = (),
) -> tuple[list[Pair], list[Pair]]:
    """The pairs of every dataset and their train/validation split, as training uses.

    Each group is prefixed by its dataset's folder name (``dataset:group``, see
    :func:`dataset_of`), so groups of two datasets never merge. Without ``val_dirs`` each
    dataset is split on its own by :func:`split_pairs` (``val_fraction``, ``seed``); with them,
    ``dirs`` all train and ``val_dirs`` all validate.

    Background images, as Ultralytics takes them: an image of a labelled dataset without a
    mask is a polyp-free frame (``mask=None``; an empty mask means the same), and every image
    of a ``negatives`` folder is one (any layout; masks there are ignored). A negatives folder
    is split like the others; without a ``sequences.csv`` its images are grouped in runs of
    :data:`NEGATIVE_BLOCK` neighbours in name order, since neighbouring video frames are
    near-duplicates. A dataset needs at least one mask unless it is a negatives folder.

    ``datasets``, when given, is filled with each dataset's ``root``, ``layout``, how its
    groups were set (``grouped_by``: sequences.csv or file names) and, for a folder split here
    without group information, ``video_frame_share`` (:func:`lsdseg.splits.video_frame_share`).

    Raises:
        DataError: a folder without image/mask pairs.
    """

    def prefixed(root: str, split: bool, negative: bool = False) -> list[Pair]:
        layout, pairs = find_pairs(root)
        name = Path(root).resolve().name
        if negative:
            pairs = [dataclasses.replace(p, mask=None) for p in pairs]
        labelled = [p for p in pairs if p.mask is not None]
        if not labelled and not negative:
            raise DataError(
                f"{root}: no image/mask pairs found (layout {layout}); training needs masks "
                "(pass a folder of polyp-free images with --negatives)"
            )
        grouped = any(p.group != p.name for p in pairs)
        if negative and not grouped:
            pairs = [
                dataclasses.replace(p, group=f"run{i // NEGATIVE_BLOCK}")
                for i, p in enumerate(pairs)
            ]
        if datasets is not None:
            info: dict[str, Any] = {"root": str(Path(root).resolve()), "layout": layout}
            info["grouped_by"] = (
                "sequences.csv"
                if grouped
                else f"runs of {NEGATIVE_BLOCK} neighbours"
                if negative
                else "file names (one image a group)"
            )
            info["negatives"] = len(pairs) - len(labelled)
            if split and not grouped and not negative:
                from lsdseg.splits import video_frame_share  # splits imports this module

                info["video_frame_share"] = round(video_frame_share(labelled), 3)
            datasets[name] = info
        return [dataclasses.replace(p, group=f"{name}:{p.group}") for p in pairs]

    train: list[Pair] = []
    val: list[Pair] = []
    for d in negatives:
        t, v = split_pairs(prefixed(d, split=True, negative=True), val_fraction, seed)
        train, val = train + t, val + v
    for d in dirs:
        pairs = prefixed(d, split=not val_dirs)
        if val_dirs:
            train += pairs
        else:
            t, v = split_pairs(pairs, val_fraction=val_fraction, seed=seed)
            train, val = train + t, val + v
    for d in val_dirs or []:
        val += prefixed(d, split=False)
    return train, val


def load_sample(pair: Pair) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a pair's image (``(H, W, 3)`` uint8 RGB) and mask (``(H, W)`` bool or ``None``).

    Raises:
        FileNotFoundError: If a file is missing.
        DataError: If a file is unreadable or the mask size differs from the image size.
    """
    image = read_image(pair.image)
    if pair.mask is None:
        return image, None
    mask = read_mask(pair.mask)
    if mask.shape != image.shape[:2]:
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape
        raise DataError(
            f"mask {pair.mask} is {mw}x{mh} but image {pair.image} is {iw}x{ih} (WxH): "
            "fix or remove this pair; masks are never resized silently"
        )
    return image, mask
