"""Tests for lsdseg.checkpoint: round trips, atomic writes, and errors a person can act on."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import model_outputs
from safetensors.torch import load_file, save_file

import lsdseg
from lsdseg import checkpoint as ckpt
from lsdseg.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_hash,
    load_checkpoint,
    read_config,
    recover_checkpoint,
    save_checkpoint,
)
from lsdseg.model import LatentSegmenter


@pytest.fixture
def saved(tmp_path: Path, tiny_model: LatentSegmenter) -> Path:
    return save_checkpoint(tiny_model, tmp_path / "ckpt", card="# tiny\n", extra={"dice": 0.5})


def test_round_trip_gives_identical_outputs(saved: Path, tiny_model: LatentSegmenter) -> None:
    loaded = load_checkpoint(saved)
    assert loaded.cfg == tiny_model.cfg
    assert not loaded.training
    for a, b in zip(model_outputs(tiny_model), model_outputs(loaded), strict=True):
        assert torch.equal(a, b)
    for (ka, va), (kb, vb) in zip(
        tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_folder_holds_weights_config_and_card(saved: Path, tiny_model: LatentSegmenter) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "card.md",
        "config.json",
        "model.safetensors",
    ]
    meta = json.loads((saved / "config.json").read_text())
    assert meta["lsdseg_version"] == lsdseg.__version__
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model"]["latent_scale"] == tiny_model.cfg.latent_scale == 1.5
    assert meta["model"]["image_mean"] == list(tiny_model.cfg.image_mean)
    assert meta["extra"] == {"dice": 0.5}
    assert (saved / "card.md").read_text() == "# tiny\n"
    cfg, whole = read_config(saved)
    assert cfg == tiny_model.cfg and whole == meta


def test_default_card_is_written(tmp_path: Path, tiny_model: LatentSegmenter) -> None:
    path = save_checkpoint(tiny_model, tmp_path / "c")
    assert lsdseg.__version__ in (path / "card.md").read_text()


def test_overwrite_is_atomic_and_leaves_no_temporaries(
    tmp_path: Path, make_model: Callable[..., LatentSegmenter]
) -> None:
    first, second = make_model(seed=0), make_model(seed=1)
    save_checkpoint(first, tmp_path / "ckpt", card="first")
    save_checkpoint(second, tmp_path / "ckpt", card="second")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no .ckpt.* temp or .old folders
    assert (tmp_path / "ckpt" / "card.md").read_text() == "second"
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(model_outputs(loaded)[2], model_outputs(second)[2])
    assert not torch.equal(model_outputs(loaded)[2], model_outputs(first)[2])


def test_a_failed_save_keeps_the_old_checkpoint(
    saved: Path, make_model: Callable[..., LatentSegmenter], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = checkpoint_hash(saved)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make_model(seed=1), saved)
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    assert checkpoint_hash(saved) == before
    load_checkpoint(saved)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_old_checkpoint(
    saved: Path, make_model: Callable[..., LatentSegmenter], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import SafetensorError

    before = checkpoint_hash(saved)

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(OSError, match=f"cannot write the checkpoint {saved}: .*previous one is"):
        save_checkpoint(make_model(seed=1), saved)
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    assert checkpoint_hash(saved) == before


_KILL_AT_RENAME = """
import os, signal, sys
from pathlib import Path
from lsdseg.checkpoint import load_checkpoint, save_checkpoint
new, target, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = load_checkpoint(new)
calls = 0
rename = Path.rename
def kill_at(self, to):
    global calls
    calls += 1
    if calls == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, to)
Path.rename = kill_at
save_checkpoint(model, target, card="new")
"""


@pytest.mark.parametrize("at", [1, 2, 3, 4])
def test_a_kill_at_any_rename_keeps_the_newest_complete_checkpoint(
    tmp_path: Path, make_model: Callable[..., LatentSegmenter], at: int
) -> None:
    import signal
    import subprocess
    import sys

    first, second = make_model(seed=0), make_model(seed=1)
    save_checkpoint(second, tmp_path / "src" / "second")
    target = save_checkpoint(first, tmp_path / "run" / "last", card="first")
    cmd = [sys.executable, "-c", _KILL_AT_RENAME, str(tmp_path / "src" / "second"), str(target)]
    done = subprocess.run([*cmd, str(at)], capture_output=True, text=True)
    killed = done.returncode == -signal.SIGKILL
    assert killed or at == 4, done.stderr  # three renames; the 4th call never comes
    said = recover_checkpoint(target)
    # 1: killed before the new folder was complete; 2 (last -> .last.old) and 3 (.last.new ->
    # last): the new one is complete and must win; 4: the save finished
    expected = first if at == 1 else second
    assert (target / "card.md").read_text() == ("first" if at == 1 else "new")
    loaded = load_checkpoint(target)
    assert torch.equal(model_outputs(loaded)[2], model_outputs(expected)[2])
    assert [p.name for p in target.parent.iterdir()] == ["last"]  # nothing left behind
    assert (said is not None) == (at in (2, 3)), said
    assert recover_checkpoint(target) is None  # nothing more to do


def test_config_that_does_not_match_the_weights(saved: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    meta["model"]["unet"]["channels"] = [8, 24]  # valid config, different model
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match") as info:
        load_checkpoint(saved)
    assert "shape" in str(info.value)


def test_weights_missing_a_tensor(saved: Path) -> None:
    state = load_file(str(saved / "model.safetensors"))
    del state["unet.conv_out.weight"]
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not match") as info:
        load_checkpoint(saved)
    assert "missing" in str(info.value) and "unet.conv_out.weight" in str(info.value)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_weights_that_are_not_finite_are_refused(saved: Path, poison: float) -> None:
    state = load_file(str(saved / "model.safetensors"))
    state["unet.conv_out.weight"][0, 0, 0, 0] = poison  # one value is enough
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    message = str(info.value)
    assert "NaN or infinite values in 1 tensor(s) (unet.conv_out.weight)" in message
    assert "\n" not in message


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.bool])
def test_weights_cast_to_integers_are_refused(saved: Path, dtype: torch.dtype) -> None:
    state = load_file(str(saved / "model.safetensors"))
    floats = [k for k, v in state.items() if v.is_floating_point()]
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    message = str(info.value)
    name = str(dtype).removeprefix("torch.")
    assert f"stores {len(floats)} floating-point tensor(s) as integers" in message
    assert f"{sorted(floats)[0]} ({name})" in message and "\n" not in message


def test_half_and_double_weights_still_load(saved: Path, tiny_model: LatentSegmenter) -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        state = load_file(str(saved / "model.safetensors"))
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(saved / "model.safetensors"))
        assert load_checkpoint(saved).cfg == tiny_model.cfg


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def test_missing_weights(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors"):
        load_checkpoint(saved)


def test_missing_config(saved: Path) -> None:
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load_checkpoint(saved)


def test_corrupt_weights(saved: Path) -> None:
    (saved / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(saved)


def test_future_format_version(saved: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"format_version={FORMAT_VERSION + 1}") as info:
        load_checkpoint(saved)
    assert "upgrade" in str(info.value)


def test_invalid_json(saved: Path) -> None:
    (saved / "config.json").write_text('{"format_version": 1,')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m["model"]["sampler"].update(steps=0), "steps=0"),
        (lambda m: m["model"].update(colour="red"), "colour"),
    ],
)
def test_invalid_config_values_are_checkpoint_errors(saved: Path, edit, fragment: str) -> None:
    meta = json.loads((saved / "config.json").read_text())
    edit(meta)
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ([], "config.json holds an array, not the JSON object lsdseg writes"),
        ([{"format_version": 1}], "config.json holds an array, not the JSON object"),
        ("model", "config.json holds a string, not the JSON object"),
        ({"format_version": 1, "model": [1]}, "config.json:model: expected a JSON object {...}"),
    ],
)
def test_config_json_that_is_no_object(saved: Path, meta, fragment: str) -> None:
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint must never be unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model = load_checkpoint(saved)
    assert isinstance(model, LatentSegmenter)
    assert (saved / "model.safetensors").read_bytes()[:2] != b"\x80\x02"  # no pickle protocol


def test_hash_follows_the_content(
    tmp_path: Path, make_model: Callable[..., LatentSegmenter]
) -> None:
    a = save_checkpoint(make_model(seed=0), tmp_path / "a")
    b = save_checkpoint(make_model(seed=0), tmp_path / "b")
    c = save_checkpoint(make_model(seed=1), tmp_path / "c")
    assert checkpoint_hash(a) == checkpoint_hash(b) != checkpoint_hash(c)
    assert len(checkpoint_hash(a)) == 16


def test_half_precision_storage_halves_the_file_and_keeps_outputs(
    tmp_path: Path, tiny_model: LatentSegmenter
) -> None:
    full = save_checkpoint(tiny_model, tmp_path / "full")
    half = save_checkpoint(tiny_model, tmp_path / "half", dtype=torch.float16)
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(half) < 0.6 * size(full)
    loaded = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(1, 3, 64, 64)
    noise = torch.randn(1, 2, *tiny_model.latent_shape)
    with torch.no_grad():
        a, b = tiny_model(x, noise)[0], loaded(x, noise)[0]
    torch.testing.assert_close(a, b, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    ("key", "where"),
    [
        ("context_depth", "image_ae.encoder.context."),
        ("encoder_depth", "image_ae.encoder.levels."),
    ],
)
def test_grow_adds_identity_blocks_and_keeps_every_output(
    saved: Path, tiny_model: LatentSegmenter, key: str, where: str
) -> None:
    grown = ckpt.grow_checkpoint(saved, {"image_ae": {key: 3}})
    assert getattr(grown.cfg.image_ae, key) == 3
    old = tiny_model.state_dict()
    new = grown.state_dict()
    assert set(old) < set(new)  # every trained tensor kept, new ones added
    added = [k for k in new if k not in old]
    assert added and all(where in k for k in added)
    for k, v in old.items():
        assert torch.equal(new[k], v), k
    for a, b in zip(model_outputs(tiny_model), model_outputs(grown), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the new blocks are wired in: once trained away from zero, they change the image latent
    x = torch.randn(1, 3, grown.cfg.image_size, grown.cfg.image_size)
    with torch.no_grad():
        before = grown.encode_image(x)
        for k in added:
            if k.endswith("conv2.weight"):
                grown.get_parameter(k).normal_(std=0.1)
        assert not torch.allclose(grown.encode_image(x), before)


def test_grow_adds_a_condition_pyramid_that_starts_silent(
    saved: Path, tiny_model: LatentSegmenter, tmp_path: Path
) -> None:
    pyramid = {"unet": {"cond_channels": [8, 16], "cond_depth": 2}}
    grown = ckpt.grow_checkpoint(saved, pyramid)
    assert grown.cfg.unet.cond_channels == (8, 16) and grown.cfg.unet.cond_depth == 2
    old, new = tiny_model.state_dict(), grown.state_dict()
    added = [k for k in new if k not in old]
    assert added and all(k.startswith("unet.cond_pyramid.") for k in added)
    for a, b in zip(model_outputs(tiny_model), model_outputs(grown), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # trained away from zero, the pyramid changes the masks
        for proj in grown.unet.cond_pyramid.proj:
            proj.weight.normal_(std=0.3)
        assert not torch.allclose(model_outputs(grown)[0], model_outputs(tiny_model)[0])
    back = load_checkpoint(save_checkpoint(grown, tmp_path / "pyramid"))
    for a, b in zip(model_outputs(grown), model_outputs(back), strict=True):
        assert torch.equal(a, b)
    # other widths would reshape the trained pyramid
    with pytest.raises(CheckpointError, match="renamed or reshaped"):
        ckpt.grow_checkpoint(tmp_path / "pyramid", {"unet": {"cond_channels": [8, 8]}})


def _legacy_name(key: str) -> str:
    """The name a tensor had in lsdseg 0.1.0 checkpoints up to the run-8 default weights:
    encoder layers in one ``body`` Sequential, extra level blocks in ``more.I.J``."""
    prefix, sep, rest = key.partition("encoder.")
    if not sep:
        return key
    head, _, tail = rest.partition(".")
    if head == "stem":
        return f"{prefix}encoder.body.0.{tail}"
    if head == "context":
        return f"{prefix}encoder.body.5.{tail}"  # after 2 levels: body.1-4
    if head == "levels":
        i, j, param = tail.split(".", 2)
        if int(j) >= 2:
            return f"{prefix}encoder.more.{i}.{int(j) - 2}.{param}"
        return f"{prefix}encoder.body.{1 + 2 * int(i) + int(j)}.{param}"
    return key


def test_each_key_migration_renames_its_old_names_and_current_names_pass() -> None:
    old_new = {  # hand-checked against the 0.1.0 layout (stem, 2 levels, context, more)
        "image_ae.encoder.body.0.weight": "image_ae.encoder.stem.weight",
        "image_ae.encoder.body.5.down.0.1.conv1.weight": (
            "image_ae.encoder.context.down.0.1.conv1.weight"
        ),
        "mask_vae.encoder.body.3.conv.bias": "mask_vae.encoder.levels.1.0.conv.bias",
        "mask_vae.encoder.body.4.conv1.weight": "mask_vae.encoder.levels.1.1.conv1.weight",
        "image_ae.encoder.more.1.0.conv2.weight": "image_ae.encoder.levels.1.2.conv2.weight",
    }
    assert ckpt.migrate_keys(dict.fromkeys(old_new)) == dict.fromkeys(old_new.values())
    used = [
        next(
            i
            for i, row in enumerate(ckpt.KEY_MIGRATIONS)
            if re.fullmatch(row[0], k.split("encoder.")[1])
        )
        for k in old_new
    ]
    assert sorted(set(used)) == list(range(len(ckpt.KEY_MIGRATIONS)))  # no row untested
    from lsdseg.segmenter import bundled_weights

    current = load_file(str(bundled_weights() / "model.safetensors"))
    assert list(ckpt.migrate_keys(current)) == list(current)


def test_checkpoints_with_the_old_encoder_names_still_load(saved: Path, tmp_path: Path) -> None:
    from lsdseg.trainstate import LoopState, ema_weights, write_state

    grown = ckpt.grow_checkpoint(saved, {"image_ae": {"encoder_depth": 2, "context_depth": 2}})
    with torch.no_grad():
        for p in grown.parameters():
            p.add_(0.01 * torch.randn_like(p))  # so that a wrong mapping changes the outputs
    folder = save_checkpoint(grown, tmp_path / "old")
    state = load_file(str(folder / "model.safetensors"))
    legacy = {_legacy_name(k): v for k, v in state.items()}
    assert "image_ae.encoder.more.1.0.conv2.weight" in legacy
    assert "mask_vae.encoder.body.4.conv1.weight" in legacy
    assert len(legacy) == len(state)
    save_file(legacy, str(folder / "model.safetensors"))
    loaded = load_checkpoint(folder)
    for a, b in zip(model_outputs(grown), model_outputs(loaded), strict=True):
        assert torch.equal(a, b)
    # the EMA in a run's training state is renamed the same way
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    write_state(folder, opt, grown, LoopState(phase="diffusion"))
    more = load_file(str(folder / "trainer.safetensors"))
    save_file({_legacy_name(k): v for k, v in more.items()}, str(folder / "trainer.safetensors"))
    assert ema_weights(folder).keys() == state.keys()


def test_grown_model_round_trips(saved: Path, tmp_path: Path) -> None:
    grown = ckpt.grow_checkpoint(saved, {"image_ae": {"context_depth": 2}})
    back = load_checkpoint(save_checkpoint(grown, tmp_path / "grown"))
    assert back.cfg.image_ae.context_depth == 2
    for a, b in zip(model_outputs(grown), model_outputs(back), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"image_ae": {"channels": [8, 8, 32]}}, "renamed or reshaped"),
        ({"image_ae": {"groups": 2}}, "not the identity"),  # same shapes, other function
        ({"image_ae": {"context_depth": 0}}, "context_depth=0"),
        ({"image_ae": {"depth": 2}}, "unknown key"),
    ],
)
def test_grow_refuses_changes_that_lose_what_was_trained(
    saved: Path, overrides: dict, fragment: str
) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        ckpt.grow_checkpoint(saved, overrides)


def test_without_image_decoder_keeps_every_output(
    tiny_model: LatentSegmenter, tmp_path: Path
) -> None:
    slim = ckpt.without_image_decoder(tiny_model)
    assert slim.cfg.image_ae.decoder is False and slim.image_ae.decoder is None
    kept = {k for k in tiny_model.state_dict() if not k.startswith("image_ae.decoder.")}
    assert set(slim.state_dict()) == kept < set(tiny_model.state_dict())
    for a, b in zip(model_outputs(tiny_model), model_outputs(slim), strict=True):
        assert torch.equal(a, b)
    folder = save_checkpoint(slim, tmp_path / "slim")
    back = load_checkpoint(folder)  # strict load of a decoder-less config
    assert back.image_ae.decoder is None
    for a, b in zip(model_outputs(slim), model_outputs(back), strict=True):
        assert torch.equal(a, b)
    full = (save_checkpoint(tiny_model, tmp_path / "full") / "model.safetensors").stat().st_size
    assert (folder / "model.safetensors").stat().st_size < full
    assert ckpt.without_image_decoder(slim) is slim


def test_decoder_less_model_refuses_to_decode_and_can_still_grow(
    tiny_model: LatentSegmenter, tmp_path: Path
) -> None:
    slim = ckpt.without_image_decoder(tiny_model)
    with pytest.raises(RuntimeError, match="no decoder"):
        slim.image_ae.decode(torch.zeros(1, slim.cfg.image_ae.latent_channels, 8, 8))
    folder = save_checkpoint(slim, tmp_path / "slim")
    grown = ckpt.grow_checkpoint(folder, {"image_ae": {"context_depth": 2}})
    assert grown.image_ae.decoder is None and grown.cfg.image_ae.context_depth == 2
    for a, b in zip(model_outputs(slim), model_outputs(grown), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # putting a decoder back is not growing: its tensors were never trained
    with pytest.raises(CheckpointError, match="untrained one cannot be added"):
        ckpt.grow_checkpoint(folder, {"image_ae": {"decoder": True}})
