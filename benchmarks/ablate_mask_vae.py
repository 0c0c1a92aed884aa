"""Ablation: mask VAE reconstruction loss, weighted cross-entropy vs MSE.

Trains the mask VAE alone (same architecture, data, seed and steps) with each loss and reports
reconstruction Dice on the validation masks, overall and on small polyps (mask < 2% of the
image), where compression hurts most.

    python benchmarks/ablate_mask_vae.py --data ../shared/data/kvasir-seg \
        --data ../shared/data/cvc-clinicdb --epochs 6
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from lsdseg.augment import AugmentConfig
from lsdseg.config import MaskVAEConfig
from lsdseg.data import load_pairs
from lsdseg.dataset import SegmentationDataset
from lsdseg.losses import mask_vae_losses
from lsdseg.metrics import dice
from lsdseg.vae import MaskVAE


def masks(ds: SegmentationDataset) -> torch.Tensor:
    return torch.stack([ds[i]["mask"] for i in range(len(ds))])  # (N, 1, S, S)


def run(
    cfg: MaskVAEConfig,
    train: SegmentationDataset,
    val_y: torch.Tensor,
    epochs: int,
    batch: int,
    seed: int,
) -> dict[str, float]:
    torch.manual_seed(seed)
    vae = MaskVAE(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=1e-4)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        train.set_epoch(epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(order) - batch + 1, batch):
            y = torch.stack([train[int(j)]["mask"] for j in order[i : i + batch]])
            logits, mean, logvar = vae(y)
            loss = mask_vae_losses(cfg, y, logits, mean, logvar)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    vae.eval()
    with torch.no_grad():
        rec = torch.sigmoid(vae.decode(vae.encode(val_y)[0]))[:, 0] > 0.5
    d = dice(rec, val_y[:, 0] > 0.5)
    small = val_y.mean(dim=(1, 2, 3)) < 0.02
    return {
        "dice": d.mean().item(),
        "dice_small": d[small].mean().item(),
        "n_small": int(small.sum()),
        "n": len(d),
        "train_s": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    train_pairs, val_pairs = load_pairs(args.data, None, 0.1, 0)
    train = SegmentationDataset(train_pairs, 256, AugmentConfig(), seed=args.seed)
    train.preload()
    val_y = masks(SegmentationDataset(val_pairs, 256))
    results = {}
    for loss in ("wce", "mse"):
        results[loss] = run(
            replace(MaskVAEConfig(), loss=loss),
            train,
            val_y,
            args.epochs,
            args.batch_size,
            args.seed,
        )
        print(loss, json.dumps(results[loss]), flush=True)


if __name__ == "__main__":
    main()
