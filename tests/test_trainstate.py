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
    with pytest.raises(ValueError, match=r"does not fit this model.*start a new run with init="):
        restore_state(tmp_path, opt, None, "diffusion")


class _Two(nn.Module):
    """Two layers registered in either order; forward always runs ``a`` then ``b``."""

    def __init__(self, b_first: bool = False) -> None:
        super().__init__()
        if b_first:
            self.b, self.a = nn.Linear(3, 1), nn.Linear(2, 3)
        else:
            self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_optimiser_state_saved_with_names_follows_the_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Two()
    opt = _stepped(model)
    write_state(tmp_path, opt, None, LoopState(phase="diffusion", epoch=1), model)
    other = _Two(b_first=True)  # same parameters, registered in another order
    other.load_state_dict(model.state_dict())
    fresh = torch.optim.AdamW(other.parameters(), lr=1e-3)
    restore_state(tmp_path, fresh, None, "diffusion", other)
    for name, p in model.named_parameters():
        q = other.get_parameter(name)
        torch.testing.assert_close(fresh.state[q]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
    x = torch.randn(4, 2)  # and the next step is the same step
    for m, o in ((model, opt), (other, fresh)):
        m.zero_grad()
        m(x).sum().backward()
        o.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(other.get_parameter(name), p)

    with pytest.raises(ValueError, match=r"is for other parameters.*start a new run with init="):
        wider = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))  # names 0.*, 1.*
        restore_state(tmp_path, torch.optim.AdamW(wider.parameters()), None, "diffusion", wider)


def test_optimiser_state_with_older_encoder_names_restores(tmp_path: Path) -> None:
    old, new = nn.Module(), nn.Module()
    old.encoder = nn.Module()
    old.encoder.body = nn.Sequential(nn.Conv2d(3, 4, 3))  # lsdseg 0.1.0: encoder.body.0
    new.encoder = nn.Module()
    new.encoder.stem = nn.Conv2d(3, 4, 3)  # now: encoder.stem
    new.load_state_dict({k.replace("body.0", "stem"): v for k, v in old.state_dict().items()})
    opt = torch.optim.AdamW(old.parameters())
    old.encoder.body(torch.randn(1, 3, 5, 5)).sum().backward()
    opt.step()
    write_state(tmp_path, opt, None, LoopState(phase="diffusion", epoch=1), old)
    fresh = torch.optim.AdamW(new.parameters())
    restore_state(tmp_path, fresh, None, "diffusion", new)
    torch.testing.assert_close(
        fresh.state[new.encoder.stem.weight]["exp_avg"],
        opt.state[old.encoder.body[0].weight]["exp_avg"],
    )
