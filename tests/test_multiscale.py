"""Multi-scale training (``TrainConfig.train_sizes``, ``lsdseg train --train-sizes``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsdseg.config import ModelConfig, TrainConfig, from_dict
from tests.test_train import TINY, make_dataset


def test_rescale_batch_resizes_images_and_keeps_masks_binary() -> None:
    from lsdseg.train import rescale_batch

    x = torch.rand(2, 3, 64, 64)
    y = torch.zeros(2, 1, 64, 64)
    y[:, :, 16:48, 20:40] = 1
    for size in (48, 96):
        xs, ys = rescale_batch(x, y, size)
        assert xs.shape == (2, 3, size, size) and ys.shape == (2, 1, size, size)
        assert set(ys.unique().tolist()) == {0.0, 1.0}
        # the foreground keeps its share of the frame (32 x 20 of 64 x 64) to a pixel's rim
        assert ys.mean().item() == pytest.approx(y.mean().item(), abs=0.02)
    same = rescale_batch(x, y, 64)
    assert same[0] is x and same[1] is y


def test_train_sizes_refuse_a_feature_cache_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="cannot use feature_views=4"):
        TrainConfig(train_sizes=(224, 256), feature_views=4)
    with pytest.raises(ValueError, match="must be positive integers"):
        TrainConfig(train_sizes=(256, 0))


def _run(tmp_path: Path, sizes: tuple[int, ...], monkeypatch) -> list[int]:
    """A two-step diffusion run of the tiny model; the batch sizes its losses saw."""
    import lsdseg.train as train_mod
    from lsdseg.checkpoint import save_checkpoint
    from lsdseg.data import find_pairs
    from lsdseg.dataset import SegmentationDataset
    from lsdseg.model import LatentSegmenter

    seen: list[int] = []
    losses = train_mod.diffusion_losses

    def spy(model, x, y, t, noise, z_x=None):
        assert x.shape[-1] == y.shape[-1] == noise.shape[-1] * model.cfg.image_ae.factor
        seen.append(x.shape[-1])
        return losses(model, x, y, t, noise, z_x)

    monkeypatch.setattr(train_mod, "diffusion_losses", spy)
    torch.manual_seed(0)
    init = save_checkpoint(LatentSegmenter(from_dict(ModelConfig, TINY)), tmp_path / "init")
    _, pairs = find_pairs(make_dataset(tmp_path / "data", n=16))
    cfg = TrainConfig(
        stage="diffusion",
        epochs=1,
        batch_size=2,
        max_steps_per_epoch=8,
        warmup_steps=1,
        init=str(init),
        train_sizes=sizes,
    )
    model_cfg = from_dict(ModelConfig, TINY)
    train_mod.train(model_cfg, cfg, SegmentationDataset(pairs, 64), None, tmp_path / "r", "cpu")
    return seen


def test_each_step_trains_at_one_of_the_train_sizes(tmp_path: Path, monkeypatch) -> None:
    seen = _run(tmp_path, (48, 64, 80), monkeypatch)
    assert len(seen) == 8
    assert set(seen) <= {48, 64, 80} and len(set(seen)) > 1  # 8 draws of 3: not all alike


def test_a_size_the_model_cannot_run_at_is_refused_before_training(
    tmp_path: Path, monkeypatch
) -> None:
    with pytest.raises(ValueError, match=r"train_sizes: image_size=60 must be a multiple"):
        _run(tmp_path, (64, 60), monkeypatch)
    assert not (tmp_path / "r" / "last").exists()


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--train-sizes", "224,x"], 2, "--train-sizes: '224,x': pass comma-separated sizes"),
        (
            ["--train-sizes", "224,256", "--feature-views", "2"],
            1,
            "--train-sizes resizes every batch after loading: it cannot use --feature-views 2",
        ),
    ],
)
def test_bad_train_sizes_are_one_message_and_a_non_zero_exit(
    capsys, tmp_path: Path, extra: list[str], code: int, needle: str
) -> None:
    from lsdseg.cli.main import main

    data = make_dataset(tmp_path / "data", n=4)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "r"), *extra]
    try:
        got = main(argv)
    except SystemExit as e:  # argparse's own refusal of a bad value
        got = e.code
    err = " ".join(capsys.readouterr().err.split())
    assert got == code, err
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()
