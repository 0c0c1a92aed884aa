"""A torch dataset of resized, augmented image/mask pairs, cached in memory."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from lsdseg.augment import AugmentConfig, augment, resize_pair
from lsdseg.data import DataError, Pair, load_sample

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
        pairs: Pairs; one without a mask is a polyp-free image (an empty mask).
        size: Output side length S (>= 8).
        augment: Augmentation settings, or ``None`` for none.
        seed: Base seed for per-item randomness.
        cache: Keep resized arrays in memory.

    Raises:
        DataError: If ``pairs`` is empty.
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
            if mask is None:  # a polyp-free image: an empty mask
                mask = np.zeros(image.shape[:2], bool)
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
