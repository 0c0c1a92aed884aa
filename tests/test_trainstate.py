"""Tests for lsdseg.trainstate: optimiser state restores only into the parameters it belongs to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lsdseg.trainstate import LoopState, restore_state, write_state


def _stepped(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    return opt


def test_optimiser_state_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = _stepped(model)
    write_state(tmp_path, opt, None, LoopState(phase="diffusion", epoch=1))
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restore_state(tmp_path, fresh, None, "diffusion")
    for p in model.parameters():
        torch.testing.assert_close(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_optimiser_state_of_other_parameters_is_refused(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    write_state(tmp_path, _stepped(model), None, LoopState(phase="diffusion", epoch=1))
    # same tensors, other order: AdamW would only fail later, at its first step, on tensor sizes
    reordered = nn.Sequential(nn.Linear(3, 1), nn.Linear(2, 3))
    opt = torch.optim.AdamW(reordered.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"does not fit this model.*--init"):
        restore_state(tmp_path, opt, None, "diffusion")
