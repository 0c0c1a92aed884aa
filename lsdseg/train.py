"""The training loop: two stages, EMA, validation by the full sampler, resumable at any moment.

A run folder holds ``config.json`` (model + training settings), ``command.txt``, ``last/`` and
``best/`` checkpoints (``best/``: the EMA weights of the best validation Dice, or of the last
epoch when there are no validation images), ``metrics.csv`` and ``progress.png``. ``last/`` also
carries the training state (optimiser, EMA, RNG, loop counters; see :mod:`lsdseg.trainstate`)
written atomically with the weights, so a run killed at any moment, SIGKILL included, resumes
from its last completed epoch when the same command is run again, and continues exactly as if
never stopped.

Distributed data parallel: when launched by ``torchrun`` (``WORLD_SIZE > 1``) each rank trains
on its shard of every global batch (gloo on CPU, NCCL on GPU); the random draws of the whole
global batch are made on every rank and sliced, and gradients are averaged with an all-reduce
before each optimiser step (the losses call sub-modules directly, which
``DistributedDataParallel``'s forward hooks would not see). Only rank 0 validates and writes.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from lsdseg.checkpoint import (
    grow_checkpoint,
    load_checkpoint,
    recover_checkpoint,
    save_checkpoint,
    swap_image_encoder,
)
from lsdseg.config import ModelConfig, TrainConfig, to_dict
from lsdseg.dataset import SegmentationDataset
from lsdseg.diffusion import draw_noise
from lsdseg.featcache import FeatureCache
from lsdseg.files import atomic_path
from lsdseg.imagesize import check_image_size, latent_shape
from lsdseg.losses import autoencoder_losses, diffusion_losses
from lsdseg.model import LatentSegmenter
from lsdseg.trainstate import LoopState, has_state, restore_state, resume_loop, write_state
from lsdseg.validation import validate

log = logging.getLogger(__name__)

Event = dict[str, Any]


# ----------------------------------------------------------------------------- the loop


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _ema_update(ema: LatentSegmenter, model: LatentSegmenter, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)


@torch.no_grad()
def rescale_batch(x: torch.Tensor, y: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch resized to ``size`` x ``size`` (multi-scale training).

    Images are resized bilinearly (antialiased when shrinking), masks bilinearly and then
    thresholded at 0.5, so they stay in {0, 1} with boundaries where the resized image has them.

    Shapes:
        x: (B, 3, S, S); y: (B, 1, S, S) in {0, 1} -> (B, 3, size, size), (B, 1, size, size).
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x, y
    shrink = size < x.shape[-1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x, (y > 0.5).to(x.dtype)


def estimate_latent_scale(model: LatentSegmenter, dataset: SegmentationDataset) -> float:
    """1 / std of the mask VAE's posterior means over (up to 256) training masks."""
    n = min(len(dataset), 256)
    y = torch.from_numpy(np.stack([dataset.load_resized(i)[1] for i in range(n)])).float()[:, None]
    device = next(model.parameters()).device
    with torch.no_grad():  # a statistic, not a loss: no graph (and no requires_grad warning)
        mean, _ = model.mask_vae.encode(y.to(device))
    return float(1.0 / mean.float().std().clamp_min(1e-6))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes; returns (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class Trainer:
    """Runs (or resumes) the stages of ``cfg`` into the run folder ``out``.

    Args:
        model_cfg: the architecture (ignored when resuming or when ``cfg.init`` is set: the
            saved config wins, with ``cfg.grow`` applied; see
            :func:`lsdseg.checkpoint.grow_checkpoint`).
        cfg: training settings.
        train_set, val_set: datasets (the training one with augmentation).
        out: the run folder.
        device: where to train.
        on_event: called with dicts (``kind`` = "phase", "step" or "epoch") for display.
        card: builds the model card text for saved checkpoints.
        data: what the run trains on (JSON-ready: the CLI's folders and split), saved in
            ``config.json`` and compared on resume.
        extend: resuming, allow more epochs than the run was started with (see
            :func:`lsdseg.trainstate.check_resume`); the cosine learning-rate schedule then
            stretches to the new length.

    Raises:
        ValueError: a resume with other settings (each named), or an unusable setup.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        train_set: SegmentationDataset,
        val_set: SegmentationDataset | None,
        out: str | Path,
        device: str | torch.device = "cpu",
        on_event: Callable[[Event], None] | None = None,
        card: Callable[[LatentSegmenter, LoopState], str] | None = None,
        data: dict[str, Any] | None = None,
        extend: bool = False,
    ) -> None:
        self.cfg, self.train_set, self.val_set = cfg, train_set, val_set
        self.data = data
        self.out, self.device = Path(out), torch.device(device)
        self.emit = on_event or (lambda event: None)
        self.card = card
        self.rank, self.world = init_distributed(self.device)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by {self.world} ranks")
        torch.manual_seed(cfg.seed)
        if self.rank == 0:  # a kill inside save_checkpoint: the newest complete one, back
            for name in ("last", "best"):
                said = recover_checkpoint(self.out / name)
                if said:
                    log.warning(said)
        self.resume = has_state(self.out / "last")
        if self.resume:
            self.loop = resume_loop(self.out, cfg, data, extend)
            self.model = load_checkpoint(self.out / "last", self.device)
            log.info("resuming %s: phase %s, epoch %d", out, self.loop.phase, self.loop.epoch)
        else:
            self.model = (
                swap_image_encoder(
                    cfg.init, cfg.image_encoder, cfg.pyramid_width, self.device, cfg.grow
                )
                if cfg.image_encoder
                else grow_checkpoint(cfg.init, cfg.grow, self.device)
                if cfg.grow
                else load_checkpoint(cfg.init, self.device)
                if cfg.init
                else LatentSegmenter(model_cfg).to(self.device)
            )
            self.loop = LoopState(phase="diffusion" if cfg.stage == "diffusion" else "autoencoders")
        size = self.model.cfg.image_size
        for name, ds in (("training", train_set), ("validation", val_set)):
            if ds is not None and ds.size != size:
                raise ValueError(
                    f"the {name} images are resized to {ds.size} px but the model trains at "
                    f"{size}: build the datasets with size={size}, or grow the checkpoint with "
                    f'{{"image_size": {ds.size}}}'
                )
        if (
            self.loop.phase == "autoencoders"
            and cfg.image_recon_weight > 0
            and self.model.image_ae.decoder is None
        ):
            raise ValueError(
                f"{cfg.init or out} has no image decoder (an inference-only checkpoint, as "
                "scripts/bundle_weights.py writes), so stage 1 cannot train its image "
                "autoencoder: use stage='diffusion' to fine-tune it, or start from a training "
                "run's checkpoint"
            )
        for s in cfg.train_sizes:
            try:
                check_image_size(self.model.cfg, s)
            except ValueError as e:
                raise ValueError(f"train_sizes: {e}") from None
        self.local_bs = cfg.batch_size // self.world
        self.steps_per_epoch = len(train_set) // cfg.batch_size
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training set has {len(train_set)} items, fewer than batch_size="
                f"{cfg.batch_size}: lower batch_size or add data"
            )

    def run(self, time_limit_s: float = 0.0) -> LoopState:
        """Train until every requested stage is done; returns the final loop state.

        With ``time_limit_s > 0`` the run also stops, checkpointed, at the end of the first
        epoch after which one more epoch of the same length would end past the limit (a
        cluster's wall-time slot, say). The returned phase is then not ``"done"``, and running
        again resumes from ``last/`` exactly as after a kill.
        """
        start = time.perf_counter()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            meta = {"model": to_dict(self.model.cfg), "train": to_dict(self.cfg)}
            if self.data is not None:
                meta["data"] = self.data
            (self.out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        stopped = False
        while self.loop.phase != "done" and not stopped:
            self._start_phase()
            phase = self.loop.phase
            while self.loop.phase == phase and not stopped:
                t0 = time.perf_counter()
                self._epoch()
                now = time.perf_counter()
                over = now - start + (now - t0) > time_limit_s
                stopped = time_limit_s > 0 and self.loop.phase != "done" and self._rank0(over)
        if self.rank == 0 and (self.out / "metrics.csv").exists():
            from lsdseg.plot import MissingPlotting, plot_progress

            try:
                plot_progress(self.out / "metrics.csv", self.out / "progress.png")
            except MissingPlotting as e:  # the run is whole without its picture
                log.warning("progress.png not drawn: %s", e)
        return self.loop

    def _rank0(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank, so that all ranks stop after the same epoch."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def _start_phase(self) -> None:
        """Choose what trains in this phase; build (or restore) optimiser and EMA."""
        m, cfg = self.model, self.cfg
        if self.loop.phase == "autoencoders":
            params = list(m.mask_vae.parameters())
            if cfg.image_recon_weight > 0:
                params += m.image_ae.trainable_parameters()
            self.epochs, self.base_lr = cfg.ae_epochs, cfg.lr
        else:
            params = list(m.unet.parameters())
            if cfg.train_image_encoder:
                enc = m.image_ae.encoder
                params += (
                    list(enc.parameters()) if cfg.train_early_stages else enc.trainable_parameters()
                )
            self.epochs, self.base_lr = cfg.epochs, cfg.diffusion_lr
        m.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.params = params
        backbone = getattr(m.image_ae.encoder, "backbone", None)
        ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        groups = [
            {"params": [p for p in params if id(p) not in ids], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in ids], "lr_scale": cfg.backbone_lr_scale},
        ]
        groups = [g for g in groups if g["params"]]
        self.opt = torch.optim.AdamW(groups, lr=self.base_lr, weight_decay=cfg.weight_decay)
        self.items = self.train_set
        if self.loop.phase == "diffusion" and cfg.feature_views:
            self.emit({"kind": "cache", "views": cfg.feature_views, "items": len(self.train_set)})
            self.items = FeatureCache(m, self.train_set, cfg.feature_views)
        self.ema = copy.deepcopy(m).eval() if self.loop.phase == "diffusion" else None
        if self.resume:
            restore_state(self.out / "last", self.opt, self.ema, self.loop.phase, self.model)
            self.resume = False
        if self.world > 1:
            for p in m.parameters():
                dist.broadcast(p.data, src=0)
        self.emit(
            {
                "kind": "phase",
                "phase": self.loop.phase,
                "epochs": self.epochs,
                "steps": self.steps_per_epoch,
            }
        )
        if self.epochs == 0:
            self._next_phase()

    def _batches(self) -> DataLoader:
        """This rank's batches of the epoch: a seeded permutation cut into global batches."""
        cfg, loop = self.cfg, self.loop
        self.items.set_epoch(loop.epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + loop.epoch)
        order = torch.randperm(len(self.items), generator=gen)
        order = order[: self.steps_per_epoch * cfg.batch_size]
        shard = order.view(self.steps_per_epoch, self.world, self.local_bs)[:, self.rank]
        return DataLoader(
            Subset(self.items, shard.reshape(-1).tolist()),
            batch_size=self.local_bs,
            num_workers=cfg.num_workers,
        )

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimiser step on this rank's part of a global batch."""
        m, cfg, loop, dev = self.model, self.cfg, self.loop, self.device
        y = batch["mask"].to(dev)
        feats = batch.get("features")  # cached frozen-backbone output (FeatureCache)
        x = m.normalize(batch["image"].to(dev)) if feats is None else None
        # draws for the whole global batch, sliced per rank: DDP == one process
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + loop.step)
        size = m.cfg.image_size
        if cfg.train_sizes:  # multi-scale: this step's S, the first draw (none without it)
            size = cfg.train_sizes[int(torch.randint(len(cfg.train_sizes), (1,), generator=gen))]
            x, y = rescale_batch(x, y, size)  # (B, 3, S', S'), (B, 1, S', S')
        shape = (cfg.batch_size, *latent_shape(m.cfg, size))
        t = m.schedule.sample_timesteps(cfg.batch_size, gen)
        noise = draw_noise(shape, gen, "cpu")  # (B, c_m, S/f, S/f), after t's draws
        mine = slice(self.rank * self.local_bs, (self.rank + 1) * self.local_bs)
        t, noise = t[mine].to(dev), noise[mine].to(dev)
        with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda"):
            if loop.phase == "autoencoders":
                losses = autoencoder_losses(m, x, y, cfg.image_recon_weight, noise)
            else:
                z_x = None if feats is None else m.image_ae.encoder.from_frozen(feats.to(dev))
                losses = diffusion_losses(m, x, y, t, noise, z_x)
        total = self.steps_per_epoch * self.epochs
        for g in self.opt.param_groups:
            lr = _lr_at(loop.step, total, self.base_lr, cfg.warmup_steps)
            g["lr"] = lr * g.get("lr_scale", 1.0)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.world > 1:
            for p in self.params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.world)
        norm = torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        if not bool(torch.isfinite(losses["loss"]) & torch.isfinite(norm)):  # one sync
            self._diverged(f"loss {float(losses['loss'].detach())}, gradient norm {float(norm)}")
        self.opt.step()
        if self.ema is not None:
            _ema_update(self.ema, m, cfg.ema_decay, loop.step)
        loop.step += 1
        return {k: v.detach() for k, v in losses.items()}

    def _epoch(self) -> None:
        """Train one epoch, then validate, advance the phase if it is over, and save."""
        loop, phase = self.loop, self.loop.phase
        t0 = time.perf_counter()
        self.model.train()
        sums: dict[str, float] = {}
        for i, batch in enumerate(self._batches()):
            losses = self._step(batch)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            self.emit(
                {
                    "kind": "step",
                    "phase": phase,
                    "epoch": loop.epoch,
                    "i": i + 1,
                    "of": self.steps_per_epoch,
                    "loss": float(losses["loss"]),
                }
            )
        loop.epoch += 1
        loop.elapsed_s += time.perf_counter() - t0
        row: Event = {
            "phase": phase,
            "epoch": loop.epoch,
            "step": loop.step,
            "lr": self.opt.param_groups[0]["lr"],
            "time_s": round(loop.elapsed_s, 1),
        }
        row.update({k: v / self.steps_per_epoch for k, v in sums.items()})
        last = loop.epoch == self.epochs
        if phase == "autoencoders" and last:
            scale = estimate_latent_scale(self.model, self.train_set)
            self.model.cfg = replace(self.model.cfg, latent_scale=scale)
            row["latent_scale"] = scale
        improved = False
        if (
            phase == "diffusion"
            and self.val_set is not None
            and self.rank == 0
            and (loop.epoch % self.cfg.val_every == 0 or last)
        ):
            self.ema.cfg = self.model.cfg
            metrics = validate(
                self.ema, self.val_set, self.cfg.val_hypotheses, self.cfg.val_steps, self.cfg.seed
            )
            row.update({f"val_{k}": v for k, v in metrics.items()})
            improved = metrics["dice"] > loop.best_dice
            loop.best_dice = max(loop.best_dice, metrics["dice"])
        elif phase == "diffusion" and self.val_set is None:
            improved = True  # nothing to rank epochs by: best/ follows the last epoch
        if not all(bool(torch.isfinite(p).all()) for p in self.params):  # a step overflowed
            self._diverged("weights that are not finite after the epoch")
        loop.history.append(row)
        if last:
            self._next_phase()
        self._save(phase, improved)
        self.emit({"kind": "epoch", **row})

    def _diverged(self, what: str) -> None:
        """Stop the run: nothing of this epoch is saved (see :class:`TrainingDiverged`)."""
        loop = self.loop
        lr = "lr" if loop.phase == "autoencoders" else "diffusion_lr"
        kept = (
            f"{self.out / 'last'} keeps the last checkpoint, all finite"
            if (self.out / "last").exists()
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"training diverged at {loop.phase} epoch {loop.epoch + 1}, step {loop.step + 1}: "
            f"{what}; lower the learning rate ({lr}={getattr(self.cfg, lr):g}). {kept}"
        )

    def _next_phase(self) -> None:
        loop = self.loop
        nxt = "diffusion" if loop.phase == "autoencoders" and self.cfg.stage == "all" else "done"
        loop.phase, loop.epoch, loop.step = nxt, 0, 0

    def _save(self, phase: str, improved: bool) -> None:
        """Rank 0 writes last/ (live weights + training state), best/ (EMA) and metrics.csv."""
        if self.rank == 0:
            loop, out = self.loop, self.out
            saved = self.ema if self.ema is not None else self.model
            saved.cfg = self.model.cfg
            text = self.card(saved, loop) if self.card else ""
            extra = {
                "loop": {k: v for k, v in loop.__dict__.items() if k != "history"},
                "train": to_dict(self.cfg),
                **({} if self.data is None else {"data": self.data}),
            }
            if improved or (phase == "diffusion" and not (out / "best").exists()):
                save_checkpoint(saved, out / "best", text, extra)
            save_checkpoint(
                self.model,
                out / "last",
                text,
                extra,
                write_more=lambda d: write_state(d, self.opt, self.ema, loop, self.model, phase),
            )
            _write_metrics(out / "metrics.csv", loop.history)
        if self.world > 1:
            dist.barrier()


class TrainingDiverged(RuntimeError):
    """The loss, a gradient or a weight stopped being a finite number: training stops before
    anything non-finite is saved, so ``last/`` keeps the last finite checkpoint."""


def train(*args: Any, **kwargs: Any) -> LoopState:
    """Run or resume a training run; the arguments are those of :class:`Trainer`."""
    return Trainer(*args, **kwargs).run()


def _write_metrics(path: Path, rows: list[Event]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
