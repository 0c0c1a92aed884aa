"""The training loop: two stages, EMA, validation by the full sampler, resumable at any moment.

A run folder holds ``config.json`` (model + training settings), ``command.txt``, ``last/`` and
``best/`` checkpoints, ``trainer/`` (optimiser, EMA, RNG and loop state, all in safetensors +
JSON, never pickle) and ``metrics.csv``. Every write is atomic (temporary folder + rename), so a
run killed at any moment, SIGKILL included, resumes from its last completed epoch when the same
command is run again.

Distributed data parallel: when launched by ``torchrun`` (``WORLD_SIZE > 1``) each rank trains
on its shard of every global batch (gloo on CPU, NCCL on GPU), gradients are averaged with an
all-reduce before every optimiser step (the losses call sub-modules directly, which
``DistributedDataParallel``'s forward hooks would not see), and only rank 0 writes.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from lsdseg.augment import AugmentConfig
from lsdseg.checkpoint import load_checkpoint, save_checkpoint
from lsdseg.config import ModelConfig, from_dict, to_dict
from lsdseg.data import SegmentationDataset
from lsdseg.losses import autoencoder_losses, diffusion_losses
from lsdseg.model import LatentSegmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (saved in the run folder)."""

    stage: Literal["all", "autoencoders", "diffusion"] = "all"  # which stage(s) to run
    ae_epochs: int = 10  # stage 1 epochs
    epochs: int = 60  # stage 2 epochs
    batch_size: int = 16  # global batch (split across DDP ranks)
    lr: float = 1e-3  # stage 1 learning rate
    diffusion_lr: float = 5e-4  # stage 2 learning rate (cosine decay, warmup)
    warmup_steps: int = 200  # linear warm-up of the learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    ema_decay: float = 0.999  # EMA of stage-2 weights (validated and saved)
    image_recon_weight: float = 1.0  # stage 1 image reconstruction loss weight (0 = skip D_x)
    train_image_encoder: bool = True  # fine-tune E_x jointly in stage 2
    val_every: int = 1  # validate every N stage-2 epochs
    val_hypotheses: int = 8  # K used for validation Dice
    val_steps: int = 4  # DDIM steps used for validation Dice
    seed: int = 0  # seeds data order, augmentation, noise
    num_workers: int = 0  # DataLoader workers per rank
    max_steps_per_epoch: int = 0  # cap for smoke tests (0 = full epochs)
    init: str = ""  # checkpoint folder to start from (e.g. the bundled weights)

    def __post_init__(self) -> None:
        checks = [
            (
                self.stage in ("all", "autoencoders", "diffusion"),
                f"stage={self.stage!r} must be 'all', 'autoencoders' or 'diffusion'",
            ),
            (self.ae_epochs >= 0, f"ae_epochs={self.ae_epochs} must be >= 0"),
            (self.epochs >= 0, f"epochs={self.epochs} must be >= 0"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.lr > 0 and self.diffusion_lr > 0, "learning rates must be > 0"),
            (0 <= self.ema_decay < 1, f"ema_decay={self.ema_decay} must be in [0, 1)"),
            (self.val_every >= 1, f"val_every={self.val_every} must be >= 1"),
            (self.val_hypotheses >= 1, f"val_hypotheses={self.val_hypotheses} must be >= 1"),
            (self.val_steps >= 1, f"val_steps={self.val_steps} must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class LoopState:
    """Where the loop is; saved with every ``last`` checkpoint."""

    phase: str = "autoencoders"  # "autoencoders", "diffusion" or "done"
    epoch: int = 0  # epochs completed in this phase
    step: int = 0  # optimiser steps in this phase
    best_dice: float = -1.0  # best validation Dice (stage 2)
    elapsed_s: float = 0.0  # training wall time so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch


# ----------------------------------------------------------------------------- distributed


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def init_distributed(device: torch.device) -> None:
    """Join the process group that ``torchrun`` describes (no-op when WORLD_SIZE <= 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


# ----------------------------------------------------------------------------- state I/O


def _atomic_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Write a folder via a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_trainer_state(
    path: Path,
    opt: torch.optim.Optimizer,
    ema: LatentSegmenter | None,
    loop: LoopState,
    np_rng: np.random.Generator,
) -> None:
    """Optimiser, EMA weights, RNG states and the loop counters, atomically."""

    def write(tmp: Path) -> None:
        opt_t, opt_meta = _optimizer_tensors(opt)
        save_file(opt_t, str(tmp / "optimizer.safetensors"))
        tensors = {"torch_rng": torch.get_rng_state()}
        if ema is not None:
            tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()})
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = {
            "optimizer_phase": loop.phase if loop.epoch else "",
            "optimizer": opt_meta,
            "loop": loop.__dict__,
            "numpy_rng": np_rng.bit_generator.state,
            "python_rng": list(random.getstate()[1]),
        }
        (tmp / "state.json").write_text(json.dumps(meta))

    _atomic_dir(path, write)


# ----------------------------------------------------------------------------- validation


@torch.inference_mode()
def validate(
    model: LatentSegmenter,
    dataset: SegmentationDataset,
    hypotheses: int,
    steps: int,
    seed: int = 0,
    batch: int = 8,
) -> dict[str, float]:
    """Dice and IoU of the full sampler (mean mask > 0.5) at S x S, per dataset group prefix.

    Returns:
        ``dice``, ``iou`` over all images, plus ``dice/<source>`` for each source prefix of the
        pairs' groups (``kvasir``, ``cvc``, ...).
    """
    from lsdseg.metrics import dice as dice_fn
    from lsdseg.metrics import iou as iou_fn

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    dices, ious = [], []
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        x = model.normalize(torch.stack([it["image"] for it in items]).to(device))
        y = torch.stack([it["mask"] for it in items])[:, 0] > 0.5  # (B, S, S)
        noise = torch.randn((len(items), hypotheses, *model.latent_shape), generator=gen)
        p = model.hypotheses(x, noise.to(device), steps, 0.0)  # (B, K, S, S)
        pred = (p.mean(dim=1) > 0.5).cpu()
        dices.append(dice_fn(pred, y))
        ious.append(iou_fn(pred, y))
    d, j = torch.cat(dices), torch.cat(ious)
    out = {"dice": float(d.mean()), "iou": float(j.mean())}
    sources = [p.group.split(":", 1)[0] if ":" in p.group else "" for p in dataset.pairs]
    for src in sorted(set(sources) - {""}):
        idx = torch.tensor([s == src for s in sources])
        out[f"dice/{src}"] = float(d[idx].mean())
    return out


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
def estimate_latent_scale(model: LatentSegmenter, dataset: SegmentationDataset) -> float:
    """1 / std of the mask VAE's posterior means over (up to 256) training masks."""
    n = min(len(dataset), 256)
    y = torch.from_numpy(np.stack([dataset.load_resized(i)[1] for i in range(n)])).float()[:, None]
    device = next(model.parameters()).device
    mean, _ = model.mask_vae.encode(y.to(device))
    return float(1.0 / mean.float().std().clamp_min(1e-6))


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset | None,
    out: str | Path,
    device: str | torch.device = "cpu",
    on_event: Callable[[dict[str, Any]], None] | None = None,
    card: Callable[[LatentSegmenter, LoopState], str] | None = None,
) -> LoopState:
    """Run (or resume) the training described by ``cfg`` into the run folder ``out``.

    Args:
        model_cfg: the architecture (ignored when resuming or when ``cfg.init`` is set: the
            saved config wins).
        cfg: training settings.
        train_set, val_set: datasets (the training one with augmentation).
        out: the run folder.
        device: where to train.
        on_event: called with dicts (``kind`` = "step", "epoch", "phase") for progress display.
        card: builds the model card text for saved checkpoints.

    Returns:
        The final loop state.
    """
    out, device = Path(out), torch.device(device)
    emit = on_event or (lambda event: None)
    init_distributed(device)
    rank, world = _world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by {world} ranks")
    loop = LoopState()
    np_rng = np.random.default_rng(cfg.seed)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    resume = (out / "last" / "model.safetensors").is_file() and (out / "trainer").is_dir()
    if resume:
        model = load_checkpoint(out / "last", device)
        meta = json.loads((out / "trainer" / "state.json").read_text())
        loop = LoopState(**meta["loop"])
        np_rng.bit_generator.state = meta["numpy_rng"]
        random.setstate((3, tuple(meta["python_rng"]), None))
        log.info("resuming %s: phase %s, epoch %d", out, loop.phase, loop.epoch)
    elif cfg.init:
        model = load_checkpoint(cfg.init, device)
    else:
        model = LatentSegmenter(model_cfg).to(device)
    if cfg.stage == "diffusion" and loop.phase == "autoencoders":
        loop.phase = "diffusion"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(
            json.dumps({"model": to_dict(model.cfg), "train": to_dict(cfg)}, indent=2) + "\n"
        )

    while loop.phase != "done":
        phase = loop.phase
        if phase == "autoencoders":
            params = list(model.mask_vae.parameters())
            if cfg.image_recon_weight > 0:
                params += list(model.image_ae.parameters())
            epochs, base_lr = cfg.ae_epochs, cfg.lr
        else:
            params = list(model.unet.parameters())
            if cfg.train_image_encoder:
                params += list(model.image_ae.encoder.parameters())
            epochs, base_lr = cfg.epochs, cfg.diffusion_lr
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay)
        ema = copy.deepcopy(model).eval() if phase == "diffusion" else None
        if resume:
            if meta.get("optimizer_phase") == phase:  # not at the start of a new phase
                tensors = load_file(str(out / "trainer" / "optimizer.safetensors"))
                _restore_optimizer(opt, tensors, meta["optimizer"])
            st = load_file(str(out / "trainer" / "state.safetensors"))
            torch.set_rng_state(st["torch_rng"])
            if ema is not None and any(k.startswith("ema.") for k in st):
                ema.load_state_dict({k[4:]: v for k, v in st.items() if k.startswith("ema.")})
            resume = False
        if world > 1:
            for p in model.parameters():
                dist.broadcast(p.data, src=0)

        local_bs = cfg.batch_size // world
        steps_per_epoch = len(train_set) // cfg.batch_size
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        if steps_per_epoch < 1:
            raise ValueError(
                f"the training set has {len(train_set)} items, fewer than batch_size="
                f"{cfg.batch_size}: lower --batch-size or add data"
            )
        total = steps_per_epoch * epochs
        emit({"kind": "phase", "phase": phase, "epochs": epochs, "steps": steps_per_epoch})
        while loop.epoch < epochs:
            t_epoch = time.perf_counter()
            train_set.set_epoch(loop.epoch)
            order = torch.randperm(
                len(train_set), generator=torch.Generator().manual_seed(cfg.seed + loop.epoch)
            )[: steps_per_epoch * cfg.batch_size]
            shard = order.view(steps_per_epoch, world, local_bs)[:, rank].reshape(-1)
            loader = DataLoader(
                torch.utils.data.Subset(train_set, shard.tolist()),
                batch_size=local_bs,
                num_workers=cfg.num_workers,
                shuffle=False,
                drop_last=True,
            )
            model.train()
            sums: dict[str, float] = {}
            for i, batch in enumerate(loader):
                x = model.normalize(batch["image"].to(device))
                y = batch["mask"].to(device)
                # draws for the whole global batch, sliced per rank: DDP == one process
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + loop.step)
                shape = (cfg.batch_size, *model.latent_shape)
                mine = slice(rank * local_bs, (rank + 1) * local_bs)
                t = torch.randint(0, model.cfg.diffusion.timesteps, shape[:1], generator=gen)
                noise = torch.randn(shape, generator=gen)
                t, noise = t[mine].to(device), noise[mine].to(device)
                with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                    if phase == "autoencoders":
                        losses = autoencoder_losses(model, x, y, cfg.image_recon_weight, noise)
                    else:
                        losses = diffusion_losses(model, x, y, t, noise)
                for g in opt.param_groups:
                    g["lr"] = _lr_at(loop.step, total, base_lr, cfg.warmup_steps)
                opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                if world > 1:
                    _allreduce_grads(params, world)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                if ema is not None:
                    _ema_update(ema, model, cfg.ema_decay, loop.step)
                loop.step += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                emit(
                    {
                        "kind": "step",
                        "phase": phase,
                        "epoch": loop.epoch,
                        "i": i + 1,
                        "of": steps_per_epoch,
                        "loss": float(losses["loss"].detach()),
                    }
                )
            loop.epoch += 1
            loop.elapsed_s += time.perf_counter() - t_epoch
            row: dict[str, Any] = {
                "phase": phase,
                "epoch": loop.epoch,
                "step": loop.step,
                "lr": opt.param_groups[0]["lr"],
                "time_s": round(loop.elapsed_s, 1),
            }
            row.update({k: v / max(1, steps_per_epoch) for k, v in sums.items()})
            if phase == "autoencoders" and loop.epoch == epochs:
                scale = estimate_latent_scale(model, train_set)
                model.cfg = replace(model.cfg, latent_scale=scale)
                row["latent_scale"] = scale
            improved = False
            if (
                phase == "diffusion"
                and val_set is not None
                and ema is not None
                and (loop.epoch % cfg.val_every == 0 or loop.epoch == epochs)
            ):
                ema.cfg = model.cfg
                metrics = validate(ema, val_set, cfg.val_hypotheses, cfg.val_steps, cfg.seed)
                row.update({f"val_{k}": v for k, v in metrics.items()})
                improved = metrics["dice"] > loop.best_dice
                loop.best_dice = max(loop.best_dice, metrics["dice"])
            loop.history.append(row)
            if phase == "autoencoders" and loop.epoch == epochs:
                loop.phase, loop.epoch, loop.step = (
                    "diffusion" if cfg.stage == "all" else "done",
                    0,
                    0,
                )
            elif phase == "diffusion" and loop.epoch == epochs:
                loop.phase = "done"
            if rank == 0:
                saved = ema if ema is not None else model
                saved.cfg = model.cfg
                text = card(saved, loop) if card else ""
                extra = {
                    "loop": {k: v for k, v in loop.__dict__.items() if k != "history"},
                    "train": to_dict(cfg),
                }
                if improved:
                    save_checkpoint(saved, out / "best", text, extra)
                # the live model goes to last/ so a resume continues exactly; EMA rides along
                save_checkpoint(model, out / "last", text, extra)
                save_trainer_state(out / "trainer", opt, ema, loop, np_rng)
                _write_metrics(out / "metrics.csv", loop.history)
                if phase == "diffusion" and ema is not None and not (out / "best").exists():
                    save_checkpoint(saved, out / "best", text, extra)
            if world > 1:
                dist.barrier()
            emit({"kind": "epoch", **row})
            if loop.phase != phase:
                break
    if rank == 0 and (out / "metrics.csv").exists():
        _plot(out / "metrics.csv", out / "progress.png")
    return loop


def _allreduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average gradients across ranks."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _plot(csv_path: Path, png: Path) -> None:
    """Losses and validation Dice per epoch, drawn with OpenCV (no matplotlib dependency)."""
    from lsdseg.plot import plot_progress

    plot_progress(csv_path, png)


def load_run_config(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read a run folder's config.json back (unknown keys are an error)."""
    meta = json.loads(Path(path).read_text())
    return from_dict(ModelConfig, meta["model"]), from_dict(TrainConfig, meta["train"])


def augment_default() -> AugmentConfig:
    """The augmentation used for the default weights."""
    return AugmentConfig()
