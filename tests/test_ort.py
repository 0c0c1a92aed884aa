"""export/ort.py's GPU paths, checked on the CPU: the TensorRT provider's options (profile
shapes, FP16) and the IOBinding run that keeps CUDA frames on the device."""

from __future__ import annotations

import warnings

import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from lsdseg.checkpoint import load_checkpoint  # noqa: E402
from lsdseg.export.ort import (  # noqa: E402
    OrtRunner,
    profile_shapes,
    providers,
    run_bound,
)
from lsdseg.export.trt import Profile  # noqa: E402

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
META = {"image_size": "256", "latent_channels": "4", "latent_factor": "8"}


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LSDSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_tensorrt_provider_gets_the_profile_and_the_fp16_option(monkeypatch, cache_root):
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_PROVIDERS))
    shapes = Profile(batch=(1, 2, 4), hypotheses=(1, 8, 16)).shapes(META)
    trt, cuda, cpu = providers(torch.device("cuda:1"), shapes, half=True)
    assert trt[0] == "TensorrtExecutionProvider"
    options = trt[1]
    assert options["trt_profile_min_shapes"] == "image:1x3x256x256,noise:1x1x4x32x32"
    assert options["trt_profile_opt_shapes"] == "image:2x3x256x256,noise:2x8x4x32x32"
    assert options["trt_profile_max_shapes"] == "image:4x3x256x256,noise:4x16x4x32x32"
    assert options["trt_fp16_enable"] is True and options["device_id"] == 1
    assert options["trt_engine_cache_path"] == str(cache_root / "ort-tensorrt")
    assert cuda == ("CUDAExecutionProvider", {"device_id": 1}) and cpu == "CPUExecutionProvider"
    (trt32, *_) = providers(torch.device("cuda:0"), shapes, half=False)
    assert trt32[1]["trt_fp16_enable"] is False  # never a quiet FP16 for the fp32 graph


def test_profile_options_are_what_onnxruntime_parses():
    # "name:d0xd1x...,name2:..." as the TensorRT provider documents; dims of each input in order
    shapes = {"image": [(1, 3, 8, 8), (2, 3, 8, 8), (3, 3, 8, 8)], "noise": [(1, 2)] * 3}
    assert profile_shapes(shapes) == {
        "trt_profile_min_shapes": "image:1x3x8x8,noise:1x2",
        "trt_profile_opt_shapes": "image:2x3x8x8,noise:1x2",
        "trt_profile_max_shapes": "image:3x3x8x8,noise:1x2",
    }


def test_the_runner_passes_its_model_shapes_and_refuses_shapes_outside_them(
    tiny, monkeypatch, cache_root
):
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_PROVIDERS))
    model = load_checkpoint(tiny)  # S = 32, f = 8, 4 latent channels
    with warnings.catch_warnings():  # the session falls back to the CPU provider here
        warnings.simplefilter("ignore")
        runner = OrtRunner(model, None, torch.device("cuda"), precision="fp16")
    options = runner.providers[0][1]
    assert options["trt_profile_max_shapes"] == "image:4x3x32x32,noise:4x16x4x4x4"
    assert options["trt_fp16_enable"] is True and runner.uses_tensorrt
    x, noise = torch.zeros(5, 3, 32, 32), torch.zeros(5, 2, 4, 4, 4)
    with pytest.raises(ValueError, match=r"batch 5 x hypotheses 2 is outside .* profile"):
        runner(x, noise, 1, 0.0, None)


def test_the_bound_run_matches_the_numpy_run(tiny, cache_root):
    """IOBinding on CPU tensors: the same code path a CUDA frame takes, buffers in place."""
    runner = OrtRunner(load_checkpoint(tiny), None, torch.device("cpu"))
    session = runner.session(1)
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 4, 4, 4, generator=gen)
    want, want_score = session.run(
        ["hypotheses", "score"], {"image": x.numpy(), "noise": noise.numpy()}
    )
    got, score = run_bound(session, x, noise)
    assert got.shape == (2, 3, 32, 32) and got.dtype == torch.float32
    assert score.shape == (2,) and score.dtype == torch.float32
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=0, atol=0)
    torch.testing.assert_close(score, torch.from_numpy(want_score), rtol=0, atol=0)
    got_runner, latents, score_runner = runner(x, noise, 1, 0.0, None)
    assert latents is None
    torch.testing.assert_close(got_runner, got, rtol=0, atol=0)
    torch.testing.assert_close(score_runner, score, rtol=0, atol=0)
