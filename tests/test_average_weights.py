"""scripts/average_weights.py: the mean of checkpoints of one architecture, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_script

from lsdseg.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/average_weights.py")


def test_the_soup_holds_the_mean_of_every_tensor(script, make_model, tmp_path: Path) -> None:
    a, b = make_model(seed=0), make_model(seed=1)
    pa, pb = save_checkpoint(a, tmp_path / "a"), save_checkpoint(b, tmp_path / "b")
    assert (
        script.main(["--weights", str(pa), "--weights", str(pb), "--out", str(tmp_path / "s")]) == 0
    )
    soup = load_checkpoint(tmp_path / "s").state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    differ = [k for k in sa if sa[k].is_floating_point() and not torch.equal(sa[k], sb[k])]
    assert differ  # the two seeds give other weights, so the test can fail
    for k in sa:
        expect = (sa[k].float() + sb[k].float()) / 2 if sa[k].is_floating_point() else sa[k]
        torch.testing.assert_close(soup[k].float(), expect.float(), rtol=0, atol=1e-6, msg=k)
    assert str(pa) in (tmp_path / "s" / "card.md").read_text()


def test_other_architectures_are_one_error_line_and_exit_2(
    script, make_model, make_config, tmp_path: Path, capsys
) -> None:
    a = save_checkpoint(make_model(), tmp_path / "a")
    b = save_checkpoint(make_model(make_config(image_size=32)), tmp_path / "b")
    code = script.main(["--weights", str(a), "--weights", str(b), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: checkpoint 2 has another architecture (image_size differ)")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_missing_checkpoint_or_out_among_the_inputs_is_refused(
    script, make_model, tmp_path: Path, capsys
) -> None:
    a = save_checkpoint(make_model(), tmp_path / "a")
    assert script.main(["--weights", str(a), "--weights", str(tmp_path / "no"), "--out", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert script.main(["--weights", str(a), "--weights", str(a), "--out", str(a)]) == 2
    assert "is one of the --weights" in capsys.readouterr().err
    assert script.main(["--weights", str(a), "--out", str(tmp_path / "s")]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err
