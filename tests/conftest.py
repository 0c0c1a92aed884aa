"""Shared fixtures: tiny model configurations and models that run in milliseconds on a CPU."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from lsdseg.config import (
    DiffusionConfig,
    ImageAEConfig,
    MaskVAEConfig,
    ModelConfig,
    SamplerConfig,
    UNetConfig,
)
from lsdseg.model import LatentSegmenter

ROOT = Path(__file__).resolve().parents[1]

# The Triton kernels run on the CPU through Triton's interpreter when no CUDA GPU is visible (and
# compiled on a GPU). Triton picks the interpreter when a kernel is *defined*, so this must be set
# before anything imports lsdseg.kernels: conftest is imported before every test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The models here are tiny: one thread is faster than two, and far faster when the 2-core CI
# machine is busy (OpenMP workers spinning against another process cost 100x on small convs).
torch.set_num_threads(1)


def _tiny_config(factor: int = 8, image_size: int = 64, **overrides: Any) -> ModelConfig:
    """A valid ModelConfig with every width tiny; ``overrides`` replace top-level fields.

    Levels: log2(factor) encoder widths; the UNet and the context branch each go one level down,
    so ``image_size`` must be a multiple of ``2 * factor``. Normalisation and the latent scale are
    deliberately not the defaults, so code that ignores them is caught.
    """
    levels = factor.bit_length() - 1
    parts: dict[str, Any] = {
        "image_size": image_size,
        "image_mean": (0.4, 0.5, 0.6),
        "image_std": (0.2, 0.25, 0.3),
        "latent_scale": 1.5,
        "image_ae": ImageAEConfig(
            factor=factor,
            latent_channels=4,
            channels=(8,) * (levels - 1) + (16,),
            context_channels=(16,),
            groups=4,
        ),
        "mask_vae": MaskVAEConfig(
            factor=factor,
            latent_channels=2,
            encoder_channels=(8,) * levels,
            decoder_channels=(8, 8),
            groups=4,
        ),
        "unet": UNetConfig(
            channels=(8, 16), attention_levels=(1,), head_dim=8, groups=4, time_embed_dim=16
        ),
        "diffusion": DiffusionConfig(prediction="v"),
        # presence threshold 0: every frame is a polyp frame, so the masks are what the tests
        # of the mask check; tests of the decision set their own threshold
        "sampler": SamplerConfig(steps=2, hypotheses=3, presence_threshold=0.0),
        "presence": 8,  # a presence head, so every backend's score is checked against torch's
    }
    parts.update(overrides)
    return ModelConfig(**parts)


def _tiny_model(
    cfg: ModelConfig | None = None, seed: int = 0, head_std: float = 0.1
) -> LatentSegmenter:
    """A seeded tiny LatentSegmenter in eval mode.

    The UNet's output convolution is zero-initialised, which would make the denoiser ignore the
    image; ``head_std > 0`` re-draws it so that every input actually matters in the tests.
    """
    torch.manual_seed(seed)
    model = LatentSegmenter(cfg or _tiny_config())
    if head_std > 0:
        with torch.no_grad():
            model.unet.conv_out.weight.normal_(0.0, head_std)
            model.unet.conv_out.bias.normal_(0.0, head_std)
    return model.eval()


def load_script(path: str) -> ModuleType:
    """Import a script of the repository (``"scripts/gpu_train.py"``) as a module; its folder
    is on ``sys.path`` while it loads, as when it runs, so it can import its neighbours."""
    file = ROOT / path
    sys.path.insert(0, str(file.parent))
    try:
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(file.parent))


def model_outputs(model: LatentSegmenter) -> tuple[torch.Tensor, ...]:
    """Everything ``model`` returns for a fixed image batch and noise (B = 2, K = 3)."""
    gen = torch.Generator().manual_seed(0)
    s = model.cfg.image_size
    x = torch.randn(2, 3, s, s, generator=gen)
    noise = torch.randn(2, 3, *model.latent_shape, generator=gen)
    with torch.no_grad():
        return model(x, noise)


@pytest.fixture
def make_config() -> Callable[..., ModelConfig]:
    """Factory: ``make_config(factor=8, image_size=64, **top_level_overrides)``."""
    return _tiny_config


@pytest.fixture
def tiny_config() -> ModelConfig:
    return _tiny_config()


@pytest.fixture
def make_model() -> Callable[..., LatentSegmenter]:
    """Factory: ``make_model(cfg=None, seed=0, head_std=0.1)``."""
    return _tiny_model


@pytest.fixture
def tiny_model() -> LatentSegmenter:
    return _tiny_model()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A checkpoint folder of a ~10k-parameter model at S=32 (milliseconds per frame)."""
    from lsdseg.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=32,
        image_ae=ImageAEConfig(channels=(8, 8, 8), context_channels=(8,), latent_channels=4),
        mask_vae=MaskVAEConfig(encoder_channels=(8, 8, 8), decoder_channels=(8,)),
        unet=UNetConfig(channels=(8, 16), attention_levels=(), head_dim=8, time_embed_dim=16),
        sampler=SamplerConfig(steps=1, hypotheses=2, presence_threshold=0.0),
        presence=4,
    )
    return str(save_checkpoint(LatentSegmenter(cfg), tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="session")
def twin(tiny, tmp_path_factory) -> str:
    """A copy of ``tiny`` in another folder: other weights by path, the same by content."""
    return str(shutil.copytree(tiny, tmp_path_factory.mktemp("twin") / "tiny"))


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """``cli_error(argv)`` runs ``lsdseg`` with ``argv`` and checks that it fails as a user
    error: a nonzero status (argparse's SystemExit included), no traceback and exactly one
    stderr line that says ``error``. Returns the captured stderr."""
    from lsdseg.cli.main import main

    def run(argv: list[str]) -> str:
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        assert code != 0
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert len([line for line in err.splitlines() if "error" in line]) == 1, err
        return err

    return run
