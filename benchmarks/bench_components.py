"""Latency of each stage of the network at the default architecture (256x256 input).

Image encoder (B=1, once per frame), one denoiser step over K hypotheses (K = 1, 8, 16; the
conditioning on z_x is computed once outside the timer, as the sampler does), the mask decoder
over K = 8 latents, and the aggregation of 8 probability maps into mean, std, entropy and
mutual information. On a CUDA machine the same stages also run with the Triton ops.

Run: ``pytest benchmarks/bench_components.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from lsdseg import ops
from lsdseg.uncertainty import aggregate
from lsdseg.unet import repeat_condition

OPS_BACKENDS = ["torch", "triton"]


@pytest.fixture(params=OPS_BACKENDS)
def ops_backend(request, device):
    if request.param == "triton" and device.type != "cuda":
        pytest.skip("Triton ops are timed on a CUDA device only (the CPU interpreter is slow)")
    try:
        with ops.use_backend(request.param):
            yield request.param
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"ops backend {request.param} cannot run here: {e}")


def _image(model, device, batch=1):
    s = model.cfg.image_size
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)


@torch.inference_mode()
def test_image_encoder(benchmark, model, device, sync, record, ops_backend) -> None:
    x = _image(model, device)  # (1, 3, S, S)

    def run():
        z = model.encode_image(x)
        sync()
        return z

    z = benchmark(run)
    assert z.shape[-1] == model.cfg.latent_size
    record(benchmark, stage="image encoder", batch=1, ops=ops_backend)


@torch.inference_mode()
@pytest.mark.parametrize("hypotheses", [1, 8, 16], ids=lambda k: f"K{k}")
def test_denoiser_step(benchmark, model, device, sync, record, ops_backend, hypotheses) -> None:
    z_x = model.encode_image(_image(model, device))  # (1, c_x, h, w)
    cond = repeat_condition(model.unet.condition(z_x), hypotheses)  # ((K, ch, h, w), ...)
    z_t = torch.randn(hypotheses, *model.latent_shape, device=device)  # (K, c_m, h, w)
    t = torch.full((hypotheses,), 999, dtype=torch.long, device=device)

    def run():
        out = model.unet.denoise(z_t, t, cond)
        sync()
        return out

    out = benchmark(run)
    assert out.shape == z_t.shape
    record(
        benchmark, items=hypotheses, stage="denoiser step", hypotheses=hypotheses, ops=ops_backend
    )


@torch.inference_mode()
def test_mask_decoder(benchmark, model, device, sync, record, ops_backend) -> None:
    z = torch.randn(8, *model.latent_shape, device=device)  # (K, c_m, h, w)

    def run():
        logits = model.decode_masks(z)  # (K, 1, S, S)
        sync()
        return logits

    logits = benchmark(run)
    assert logits.shape[-1] == model.cfg.image_size
    record(benchmark, items=8, stage="mask decoder", hypotheses=8, ops=ops_backend)


@torch.inference_mode()
def test_aggregation(benchmark, model, device, sync, record) -> None:
    s = model.cfg.image_size
    p = torch.rand(8, s, s, generator=torch.Generator().manual_seed(0)).to(device)  # (K, S, S)

    def run():
        out = aggregate(p)
        sync()
        return out

    out = benchmark(run)
    assert out.mean.shape == (s, s)
    record(benchmark, stage="aggregation", hypotheses=8)
