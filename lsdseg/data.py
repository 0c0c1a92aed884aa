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
import operator
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lsdseg.augment import AugmentConfig, augment, resize_pair

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "AugmentConfig",
    "DataError",
    "Pair",
    "SegmentationDataset",
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


class DataError(ValueError):
    """A dataset problem (unreadable file, bad layout, size mismatch...) with a fix hint."""


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


# ----------------------------------------------------------------------------- reading


def _decode(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Decode a file to an array in RGB(A) channel order; also return whether it is JPEG."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            import tifffile
        except ImportError:
            raise RuntimeError(
                f"reading TIFF {path} needs tifffile: pip install tifffile"
            ) from None
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                arr, axes = page.asarray(), getattr(page, "axes", "")
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise DataError(f"cannot decode TIFF {path}: {exc}; re-save it as PNG") from exc
        if arr.ndim == 3 and (
            axes.startswith("S") or (axes == "" and arr.shape[0] <= 4 < arr.shape[2])
        ):
            arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
        return arr, False
    import cv2

    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(f"cannot decode image {path}: not a readable JPEG/PNG/BMP/TIFF file")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    return arr, head[:2] == b"\xff\xd8"


def _colour_channels(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Return (H, W, C) with alpha removed: C is 1 (grey) or 3 (RGB)."""
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or min(arr.shape[:2]) < 1:
        raise DataError(
            f"unsupported image layout {arr.shape} in {path}: expected (H, W) or (H, W, 1-4)"
        )
    c = arr.shape[2]
    return arr[..., :1] if c in (1, 2) else arr[..., :3]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB.

    JPEG/PNG/BMP are decoded with OpenCV (``IMREAD_UNCHANGED``, BGR converted to RGB, EXIF
    orientation ignored so images and masks stay consistent). TIFF (detected by magic bytes,
    not extension) is read with tifffile, which honours samples-per-pixel (CVC-ClinicDB TIFFs
    are RGB tagged as greyscale) and planar ``(3, H, W)`` storage. Channels: grey is
    replicated, grey+alpha keeps grey, RGBA drops alpha. Values: uint8 as is; uint16 is
    divided by 257 (full 16-bit range -> 8-bit, so dim 12-bit data stays dim); other integer
    types are cast if max <= 255 else scaled by their max; floats are clipped to [0, 1] when
    max <= 1, else min-max normalised; NaN -> 0.

    Args:
        path: Image file.

    Returns:
        Contiguous ``(H, W, 3)`` uint8 RGB array.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: If the file cannot be decoded or has an unsupported layout.
        RuntimeError: If a TIFF is given and tifffile is not installed.
    """
    arr, _ = _decode(path)
    return to_rgb8(arr, str(path))


def to_rgb8(arr: np.ndarray, source: str = "array") -> np.ndarray:
    """Convert a decoded image (grey, grey+alpha, RGB, RGBA; any numeric type) to uint8 RGB.

    The value rules are those of :func:`read_image`; channel order is kept as given.

    Shapes:
        (H, W) or (H, W, 1|2|3|4) -> (H, W, 3) uint8.

    Raises:
        DataError: an unsupported layout or pixel type (``source`` names it in the message).
    """
    arr = _colour_channels(np.asarray(arr), source)
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.integer):
        hi = max(int(arr.max()), 1)
        arr = np.clip(arr, 0, None)
        arr = arr.astype(np.uint8) if hi <= 255 else (arr * (255.0 / hi) + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        x = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if x.max() > 1.0:
            lo, hi = min(float(x.min()), 0.0), float(x.max())
            x = (x - lo) / (hi - lo)
        arr = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise DataError(f"unsupported pixel type {arr.dtype} in {source}: re-save as 8-bit PNG")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a segmentation mask as ``(H, W)`` bool.

    Binarisation: colour masks are reduced by the max over colour channels (alpha ignored);
    then foreground = ``value > scale / 2`` where ``scale`` is 1 if max <= 1 (0/1 masks, any
    dtype, incl. float probability maps -> ``> 0.5``), 255 if max <= 255 (``> 127``, robust to
    JPEG artefacts and anti-aliasing), else 65535 (16-bit, ``> 32767``). JPEG masks always use
    ``> 127`` so faint compression noise in an empty mask is never foreground.

    Args:
        path: Mask file.

    Returns:
        ``(H, W)`` bool array.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: If the file cannot be decoded or has an unsupported layout.
    """
    arr, is_jpeg = _decode(path)
    arr = _colour_channels(arr, Path(path)).max(axis=2)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr, nan=0.0)
    hi = float(arr.max()) if arr.size else 0.0
    scale = 255.0 if is_jpeg or 1.0 < hi <= 255.0 else 1.0 if hi <= 1.0 else 65535.0
    return np.ascontiguousarray(arr > scale / 2.0)


# ----------------------------------------------------------------------------- pairing


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _list_images(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(files, key=_natural_key)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=_natural_key,
    )


def _named_dir(folder: Path, names: Sequence[str]) -> Path | None:
    by_name = {p.name.lower(): p for p in _subdirs(folder)}
    return next((by_name[n] for n in names if n in by_name), None)


def _by_stem(files: Sequence[Path], what: str, key=lambda p: p.stem) -> dict[str, Path]:
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
    groups = sorted({p.group for p in pairs}, key=lambda g: _natural_key(Path(g)))
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


# ----------------------------------------------------------------------------- dataset


class SegmentationDataset(Dataset):
    """Torch dataset of resized (and optionally augmented) image/mask pairs.

    Each item is ``{"image": float32 (3, S, S) RGB in [0, 1], "mask": float32 (1, S, S) in
    {0, 1}, "index": i}``. Images are decoded once and resized to ``S x S`` (see
    :func:`resize_pair`); with ``cache=True`` the resized uint8 arrays are kept in memory
    (about ``3.25 * S * S`` bytes per item) and augmentation runs on them at ``S x S``.

    Randomness for item ``i`` comes from ``np.random.default_rng([seed, epoch, i])``, so
    results do not depend on DataLoader workers or on resuming. ``set_epoch`` writes to a
    shared-memory tensor, so it reaches (persistent) forked workers too; call it before
    iterating the DataLoader. With ``num_workers > 0`` call :meth:`preload` first so workers
    share one cache instead of each decoding every file.

    Args:
        pairs: Pairs with masks.
        size: Output side length S (>= 8).
        augment: Augmentation settings, or ``None`` for none.
        seed: Base seed for per-item randomness.
        cache: Keep resized arrays in memory.

    Raises:
        DataError: If ``pairs`` is empty or a pair has no mask.
        ValueError: If ``size`` is invalid.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        size: int = 256,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.pairs = list(pairs)
        if not self.pairs:
            raise DataError("SegmentationDataset got no pairs: check find_pairs/split_pairs")
        unlabelled = [p for p in self.pairs if p.mask is None]
        if unlabelled:
            raise DataError(
                f"{len(unlabelled)} pair(s) have no mask (first: {unlabelled[0].image}): "
                "training needs masks; add them or drop those pairs"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size={size!r}: use an int >= 8, e.g. 256")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}: use a non-negative int")
        self.size, self.seed, self.cache = size, seed, bool(cache)
        self.augment_config = augment
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def epoch(self) -> int:
        """Current epoch used for per-item randomness."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch mixed into per-item randomness (call once per epoch)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch={epoch!r}: use a non-negative int")
        self._epoch.fill_(int(epoch))

    def load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the un-augmented ``(S, S, 3)`` uint8 image and ``(S, S)`` bool mask."""
        item = self._cache.get(index)
        if item is None:
            image, mask = load_sample(self.pairs[index])
            item = resize_pair(image, mask, self.size)
            if self.cache:
                self._cache[index] = item
        return item

    def preload(self, num_threads: int = 2) -> None:
        """Decode and cache every item now (threads: OpenCV releases the GIL)."""
        if not self.cache:
            return
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            list(pool.map(self.load_resized, range(len(self))))

    def __getitem__(self, index: int) -> dict:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of {len(self)}")
        index = index % len(self)
        image, mask = self.load_resized(index)
        cfg = self.augment_config
        if cfg is not None and cfg.enabled:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = augment(image, mask, rng, cfg)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return {"image": image_t.div_(255.0), "mask": mask_t, "index": index}
