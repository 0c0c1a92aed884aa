"""Frozen-backbone features of several augmented views per training image, kept in memory.

With a pretrained image encoder (``image_ae.encoder = "efficientnet_lite*"``) the stem and the
blocks up to S/8 stay as imported, and at 256 px they hold most of the encoder's arithmetic at
full resolution. Computing their output once per augmented view, and training the rest of the
encoder, the feature pyramid and the denoiser on that cache, makes every later epoch cheaper
on a CPU. Epoch ``e`` reads view ``e % views``, whose augmentation is the dataset's own for
epoch ``e % views`` (``SegmentationDataset.set_epoch``), so a run is reproducible and resumable.

Memory: ``views * N * (2 * C * (S/8)**2 + S**2)`` bytes (features fp16, masks bool); for
Lite2 at 256 px about 160 kB per view and image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from lsdseg.dataset import SegmentationDataset
from lsdseg.model import LatentSegmenter

__all__ = ["FeatureCache"]


class FeatureCache(Dataset):
    """Items ``{"features": (C, S/8, S/8) float32, "mask": (1, S, S) float32, "index": i}``.

    Args:
        model: a model with a pretrained image encoder (its frozen part is run here).
        dataset: the augmented training set.
        views: augmented views per item (>= 1).
        batch: images per forward pass while building.
        on_progress: called with (views done, views) after each view.

    Raises:
        ValueError: the model's image encoder has no frozen part to cache.
    """

    def __init__(
        self,
        model: LatentSegmenter,
        dataset: SegmentationDataset,
        views: int,
        batch: int = 32,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        encoder = model.image_ae.encoder
        if not hasattr(encoder, "encode_frozen"):
            raise ValueError(
                "feature caching needs a pretrained image encoder (image_ae.encoder = "
                f"'efficientnet_lite0' or 'efficientnet_lite2'), not {model.cfg.image_ae.encoder!r}"
            )
        if views < 1:
            raise ValueError(f"views={views} must be >= 1")
        self.views, self.view, self.pairs = views, 0, dataset.pairs
        device = next(model.parameters()).device
        feats, masks = [], []
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for v in range(views):
                dataset.set_epoch(v)
                for start in range(0, len(dataset), batch):
                    items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
                    x = model.normalize(torch.stack([it["image"] for it in items]).to(device))
                    feats.append(encoder.encode_frozen(x).to("cpu", torch.float16))
                    masks.append(torch.stack([it["mask"][0] > 0.5 for it in items]))
                if on_progress is not None:
                    on_progress(v + 1, views)
        model.train(was_training)
        n = len(dataset)
        self.features = torch.cat(feats).view(views, n, *feats[0].shape[1:])  # (V, N, C, h, w)
        self.masks = torch.cat(masks).view(views, n, *masks[0].shape[1:])  # (V, N, S, S) bool

    def __len__(self) -> int:
        return self.features.shape[1]

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` reads view ``epoch % views``."""
        self.view = int(epoch) % self.views

    def __getitem__(self, index: int) -> dict:
        return {
            "features": self.features[self.view, index].float(),
            "mask": self.masks[self.view, index].float()[None],
            "index": index,
        }
