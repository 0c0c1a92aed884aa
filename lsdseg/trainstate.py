"""Training state beside a checkpoint: optimiser, EMA weights, RNG and loop counters.

Tensors go to safetensors files and everything else to JSON, so resuming never unpickles. The
files are written into the checkpoint's temporary folder (``save_checkpoint(write_more=...)``),
so the weights and the state that belongs to them appear together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lsdseg.checkpoint import migrate_keys, read_config
from lsdseg.config import TrainConfig, to_dict

OPTIMIZER, STATE_TENSORS, STATE_JSON = (
    "optimizer.safetensors",
    "trainer.safetensors",
    "trainer.json",
)


@dataclass
class LoopState:
    """Where the loop is; saved with every ``last`` checkpoint."""

    phase: str = "autoencoders"  # "autoencoders", "diffusion" or "done"
    epoch: int = 0  # epochs completed in this phase
    step: int = 0  # optimiser steps in this phase
    best_dice: float = -1.0  # best validation Dice (stage 2)
    elapsed_s: float = 0.0  # training wall time so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch

    def best_text(self) -> str:
        """``best validation Dice 0.8123``, or why there is none (never the -1 placeholder)."""
        if self.best_dice >= 0:
            return f"best validation Dice {self.best_dice:.4f}"
        if not any(row.get("phase") == "diffusion" for row in self.history):
            return "no validation Dice yet (validation runs in stage 2, diffusion)"
        return "no validation images (the validation split is empty): best/ is the last epoch"


def _param_names(opt: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """The model's name of each optimised parameter, in the optimiser's order (its state keys)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for group in opt.param_groups for p in group["params"]]


def write_state(
    folder: Path,
    opt: torch.optim.Optimizer,
    ema: nn.Module | None,
    loop: LoopState,
    model: nn.Module | None = None,
    optimizer_phase: str | None = None,
) -> None:
    """Write optimiser, EMA and RNG state and the loop counters into ``folder``.

    With ``model``, the parameter names are saved too, so the optimiser state can be restored
    into a model whose parameters come in another order (a later lsdseg, same architecture).
    ``optimizer_phase`` is the phase the optimiser trained (restored only into that phase; a
    run extended after it is done continues with it); None: ``loop.phase``, or none at a phase
    boundary.
    """
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    save_file(tensors, str(folder / OPTIMIZER))
    more = {"torch_rng": torch.get_rng_state()}
    if ema is not None:
        more.update(
            {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
        )
    save_file(more, str(folder / STATE_TENSORS))
    meta = {
        # an optimiser saved at a phase boundary belongs to the finished phase
        "optimizer_phase": (loop.phase if loop.epoch else "")
        if optimizer_phase is None
        else optimizer_phase,
        "param_groups": sd["param_groups"],
        "param_names": _param_names(opt, model) if model is not None else None,
        "scalars": scalars,
        "loop": loop.__dict__,
    }
    (folder / STATE_JSON).write_text(json.dumps(meta))


def has_state(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint with training state."""
    return all((folder / n).is_file() for n in (OPTIMIZER, STATE_TENSORS, STATE_JSON))


def read_loop(folder: Path) -> LoopState:
    """The loop counters saved in ``folder``."""
    return LoopState(**json.loads((folder / STATE_JSON).read_text())["loop"])


def ema_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The stage-2 EMA weights saved beside a ``last`` checkpoint, as a model state dict.

    ``last/model.safetensors`` holds the live weights (what training resumes from); the EMA,
    which validation and ``best/`` use, is only in the training state.
    """
    folder = Path(folder)
    if not has_state(folder):
        raise FileNotFoundError(f"{folder} has no training state: pass a run's last/ checkpoint")
    ema = _ema_state(load_file(str(folder / STATE_TENSORS)))
    if not ema:
        raise ValueError(f"{folder} has no EMA weights: they exist once stage 2 (diffusion) ran")
    return ema


def _ema_state(more: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``ema.*`` tensors of a loaded training state as a model state dict (current names)."""
    return migrate_keys({k[4:]: v for k, v in more.items() if k.startswith("ema.")})


def _check_shapes(
    folder: Path, opt: torch.optim.Optimizer, state: dict[int, dict[str, Any]]
) -> None:
    """Refuse optimiser state saved for other parameters (it is keyed by parameter order)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    for pid, st in state.items():
        for name, v in st.items():
            if not torch.is_tensor(v) or v.ndim == 0:
                continue  # step counters
            if pid >= len(params) or v.shape != params[pid].shape:
                have = tuple(params[pid].shape) if pid < len(params) else "no such parameter"
                raise ValueError(
                    f"the optimiser state in {folder} does not fit this model (parameter #{pid}"
                    f" {name}: saved {tuple(v.shape)}, model {have}); the run was saved by "
                    "another lsdseg version or architecture: start a new run with "
                    f"init={str(folder)!r}"
                )


def _by_name(
    folder: Path,
    opt: torch.optim.Optimizer,
    model: nn.Module,
    saved_names: list[str],
    state: dict[int, dict[str, Any]],
    groups: list[dict[str, Any]],
) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Optimiser state and groups renumbered from the saved parameter order to the current one."""
    names = _param_names(opt, model)
    saved = list(migrate_keys(dict.fromkeys(saved_names)))  # older lsdseg names
    if sorted(saved) != sorted(names):
        extra = sorted(set(saved) ^ set(names))
        raise ValueError(
            f"the optimiser state in {folder} is for other parameters ({', '.join(extra[:3])}"
            f"{' ...' if len(extra) > 3 else ''}); start a new run with init={str(folder)!r}"
        )
    now = {n: i for i, n in enumerate(names)}
    new_id = [now[n] for n in saved]  # saved position -> current position
    state = {new_id[pid]: st for pid, st in state.items()}
    groups = [{**g, "params": sorted(new_id[pid] for pid in g["params"])} for g in groups]
    return state, groups


def restore_state(
    folder: Path,
    opt: torch.optim.Optimizer,
    ema: nn.Module | None,
    phase: str,
    model: nn.Module | None = None,
) -> None:
    """Load optimiser (if it belongs to ``phase``), EMA weights and the torch RNG state.

    With ``model``, and a state saved with parameter names, the optimiser state is matched to the
    parameters by name (checkpoints of older lsdseg versions included); otherwise by position.
    """
    meta = json.loads((folder / STATE_JSON).read_text())
    if meta["optimizer_phase"] == phase:
        state: dict[int, dict[str, Any]] = {}
        for key, v in load_file(str(folder / OPTIMIZER)).items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        for key, v in meta["scalars"].items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        groups = meta["param_groups"]
        if model is not None and meta.get("param_names"):
            state, groups = _by_name(folder, opt, model, meta["param_names"], state, groups)
        _check_shapes(folder, opt, state)
        opt.load_state_dict({"state": state, "param_groups": groups})
    more = load_file(str(folder / STATE_TENSORS))
    torch.set_rng_state(more["torch_rng"])
    ema_state = _ema_state(more)
    if ema is not None and ema_state:
        ema.load_state_dict(ema_state)


# ----------------------------------------------------------------------------- resuming
EPOCHS = {"ae_epochs": "autoencoders", "epochs": "diffusion"}  # epoch count -> its phase
# settings a resume may change: they do not alter the weights (loading, validation)
FREE = frozenset({"num_workers", "val_every", "val_steps", "val_hypotheses"})


@dataclass(frozen=True)
class Change:
    """A setting a resume asks for that differs from the one the run was started with."""

    key: str  # TrainConfig field, or ``data.<key>`` for the data
    saved: Any  # the run's value
    now: Any  # the value asked for


def resume_changes(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[Change]:
    """The settings of ``now`` that differ from ``saved`` (both JSON-ready dicts), minus
    :data:`FREE`; a key ``saved`` lacks (a run of an older lsdseg) is not compared."""
    return [
        Change(prefix + k, saved[k], v)
        for k, v in now.items()
        if k in saved and k not in FREE and saved[k] != v
    ]


def check_resume(
    folder: Path,
    changes: list[Change],
    loop: LoopState,
    stage: str,
    extend: bool,
    name: Callable[[str], str] = str,
) -> LoopState:
    """The loop to resume from ``folder``, if the resume keeps the run's settings.

    With ``extend`` an epoch count (:data:`EPOCHS`) may grow: that of the phase under way, of
    one still to come, or of the run's last phase once it is done, which reopens that phase
    at the epoch and step it ended (from ``loop.history``). Every other change is refused.

    Args:
        folder: the run folder (for the messages).
        changes: what differs (:func:`resume_changes`).
        loop: the loop state saved in ``folder/last``.
        stage: the run's stages (TrainConfig.stage).
        extend: more epochs are asked for on purpose.
        name: how a setting is called in the messages (the CLI passes its option names).

    Raises:
        ValueError: naming each setting that differs, with its saved and asked-for values.
    """
    problems, grown = [], []
    order = ["autoencoders", "diffusion", "done"]
    last = "autoencoders" if stage == "autoencoders" else "diffusion"
    for c in changes:
        shown = f"{name(c.key)} {c.now} (the run has {c.saved})"
        if c.key not in EPOCHS:
            problems.append(shown)
        elif not extend:
            problems.append(f"{shown}: pass {name('extend')} to train the run for more epochs")
        elif not c.now > c.saved:
            problems.append(
                f"{shown}: {name('extend')} takes more epochs than the run's, not fewer"
            )
        elif order.index(EPOCHS[c.key]) < order.index(loop.phase) and not (
            loop.phase == "done" and EPOCHS[c.key] == last
        ):
            problems.append(f"{shown}: that stage is over and the next one trained after it")
        else:
            grown.append(c)
    if problems:
        raise ValueError(
            f"{folder} was started with other settings: {'; '.join(problems)}. Resume with "
            "the run's settings (its config.json), or start a new run in another folder"
        )
    if loop.phase == "done" and any(EPOCHS[c.key] == last for c in grown):
        ended = [r for r in loop.history if r.get("phase") == last]
        if ended:  # reopen the last phase where it stopped
            row = ended[-1]
            loop = LoopState(**{**loop.__dict__, "phase": last})
            loop.epoch, loop.step = int(row["epoch"]), int(row["step"])
    return loop


def resume_loop(
    out: Path,
    cfg: TrainConfig,
    data: dict[str, Any] | None = None,
    extend: bool = False,
    name: Callable[[str], str] = str,
) -> LoopState:
    """The loop state a resume of the run in ``out`` starts from, once its settings are
    checked against those ``out/last`` was saved with (:func:`check_resume`;
    ``name`` gives a setting's name in the messages).

    Raises:
        ValueError: a setting differs from the run's (each named), or ``extend`` cannot apply.
    """
    extra = read_config(out / "last")[1].get("extra", {})
    saved = {**to_dict(TrainConfig()), **extra.get("train", {})}  # older runs: the defaults
    changes = resume_changes(saved, to_dict(cfg))
    if data is not None and "data" in extra:
        changes += resume_changes(extra["data"], data, "data.")
    return check_resume(out, changes, read_loop(out / "last"), cfg.stage, extend, name)
