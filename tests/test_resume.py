"""Tests for lsdseg.cli.resume: core messages in the options' names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lsdseg.cli.resume import with_options
from lsdseg.trainstate import LoopState, restore_state, write_state


@pytest.mark.parametrize(
    ("core", "cli"),
    [
        ("use stage='diffusion' to fine-tune it", "use --stage diffusion to fine-tune it"),
        (
            "fewer than batch_size=16: lower batch_size or add data",
            "fewer than --batch-size 16: lower --batch-size or add data",
        ),
        ("with init='runs/a b/last'", "with --init runs/a b/last"),
        ("diffusion_lr=0.001, val_steps=4)", "--lr 0.001, --val-steps 4)"),
        # not settings: a model field, a dotted name, prose words, an unknown name=value
        (
            "image_ae.encoder_depth=2; grow it from init; image_size=64",
            "image_ae.encoder_depth=2; grow it from init; image_size=64",
        ),
    ],
)
def test_with_options_writes_settings_as_the_options_that_set_them(core: str, cli: str) -> None:
    assert with_options(core) == cli


def test_the_optimiser_refusal_names_the_init_option(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 2)).sum().backward()
    opt.step()
    write_state(tmp_path, opt, None, LoopState(phase="diffusion", epoch=1), model)
    wider = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1), nn.Linear(1, 1))
    with pytest.raises(ValueError) as e:
        restore_state(tmp_path, torch.optim.AdamW(wider.parameters()), None, "diffusion", wider)
    assert with_options(str(e.value)).endswith(f"start a new run with --init {tmp_path}")
