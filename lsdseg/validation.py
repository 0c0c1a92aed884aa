"""Validation during training: Dice and IoU of the full sampler on held-out pairs.

The masks are made as :class:`lsdseg.segmenter.Segmenter` makes them: K hypotheses from seeded
noise, their mean probability, thresholded at the model's own ``cfg.sampler.threshold`` (the
threshold the checkpoint ships with), so the validation Dice that picks ``best/`` is the Dice
that inference gets.
"""

from __future__ import annotations

import torch

from lsdseg.data import dataset_of
from lsdseg.dataset import SegmentationDataset
from lsdseg.diffusion import draw_noise
from lsdseg.metrics import dice as dice_fn
from lsdseg.metrics import iou as iou_fn
from lsdseg.model import LatentSegmenter


@torch.inference_mode()
def validate(
    model: LatentSegmenter,
    dataset: SegmentationDataset,
    hypotheses: int,
    steps: int,
    seed: int = 0,
    batch: int = 8,
) -> dict[str, float]:
    """Dice and IoU of the sampler's masks at S x S, overall and per dataset.

    A predicted mask is mean probability > ``model.cfg.sampler.threshold``; a ground-truth mask
    is its pixels > 0.5. Deterministic DDIM (eta = 0) from noise seeded by ``seed``.

    Args:
        model: the network (put in eval mode).
        dataset: the validation pairs, resized to the model's S.
        hypotheses: K, masks sampled per image.
        steps: DDIM steps.
        seed: seeds the noise.
        batch: images per forward pass.

    Returns:
        ``dice``, ``iou`` over all images, plus ``dice/<source>`` for each source prefix of the
        pairs' groups (``kvasir``, ``cvc``, ...).
    """
    model.eval()
    threshold = model.cfg.sampler.threshold
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    dices, ious = [], []
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        x = model.normalize(torch.stack([it["image"] for it in items]).to(device))
        y = torch.stack([it["mask"] for it in items])[:, 0] > 0.5  # (B, S, S)
        noise = draw_noise((len(items), hypotheses, *model.latent_shape), gen, device)
        p = model.hypotheses(x, noise, steps, 0.0)  # (B, K, S, S)
        pred = (p.mean(dim=1) > threshold).cpu()
        dices.append(dice_fn(pred, y))
        ious.append(iou_fn(pred, y))
    d, j = torch.cat(dices), torch.cat(ious)
    out = {"dice": float(d.mean()), "iou": float(j.mean())}
    sources = [dataset_of(p.group) for p in dataset.pairs]
    for src in sorted(set(sources) - {""}):
        idx = torch.tensor([s == src for s in sources])
        out[f"dice/{src}"] = float(d[idx].mean())
    return out
