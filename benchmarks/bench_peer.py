"""lsdseg against a pixel-space diffusion segmenter, timed in the same run on the same machine.

The peer is ``med-seg-diff-pytorch`` 0.3.3 (MedSegDiff), with the settings of its README:
``Unet(dim=64, image_size=256, mask_channels=1, input_img_channels=3, dim_mults=(1, 2, 4, 8))``
and 1000 timesteps. One of its denoising steps is timed (one 256x256 image, one mask: a single
hypothesis); a full sample is 1000 such steps, so its time is *extrapolated* as 1000 x the
median step (running 1000 steps per round would take minutes). lsdseg is timed as one full frame:
a ``Segmenter`` call at K = 8 hypotheses, 4 DDIM steps, 256x256, pre- and post-processing
included. ``benchmarks/peer_report.py`` turns the JSON into the ratio.

The peer imports torchvision, whose PyPI build does not load beside the project's CPU torch
2.13.0, so this suite runs in its own environment and skips everywhere else::

    make bench-peer      # creates .venv-peer (torch 2.14.1, torchvision 0.29.1, the peer), runs
                         # this file and prints the ratio
"""

from __future__ import annotations

import pytest
import torch

PEER_VERSION = "0.3.3"
PEER_TIMESTEPS = 1000
IMAGE_SIZE = 256


@pytest.fixture(scope="module")
def peer_unet():
    msd = pytest.importorskip(
        "med_seg_diff_pytorch",
        reason="the peer is not installed here; run `make bench-peer` (its own venv)",
    )
    from importlib.metadata import version

    found = version("med-seg-diff-pytorch")
    if found != PEER_VERSION:
        pytest.skip(f"med-seg-diff-pytorch {found} installed; this comparison is of {PEER_VERSION}")
    torch.manual_seed(0)
    unet = msd.Unet(
        dim=64, image_size=IMAGE_SIZE, mask_channels=1, input_img_channels=3, dim_mults=(1, 2, 4, 8)
    )
    return unet.eval()


@torch.inference_mode()
def test_peer_denoising_step(benchmark, record, peer_unet) -> None:
    g = torch.Generator().manual_seed(0)
    mask_t = torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)  # (B, 1, S, S) noised mask
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)  # (B, 3, S, S) condition
    t = torch.tensor([PEER_TIMESTEPS // 2])
    out = benchmark.pedantic(
        peer_unet, args=(mask_t, t, image), rounds=5, iterations=1, warmup_rounds=1
    )
    assert out.shape == mask_t.shape
    params = sum(p.numel() for p in peer_unet.parameters())
    record(
        benchmark,
        model="med-seg-diff-pytorch",
        version=PEER_VERSION,
        what="one denoising step, one hypothesis",
        image_size=IMAGE_SIZE,
        timesteps=PEER_TIMESTEPS,
        parameters=params,
    )
    if benchmark.stats is not None:
        step = benchmark.stats.stats.median
        benchmark.extra_info["full_sample_s_extrapolated"] = step * PEER_TIMESTEPS


def test_lsdseg_frame(benchmark, record, segmenter_for, frame, peer_unet) -> None:
    # peer_unet: skip with it, so a run outside the peer's venv reports one clear reason.
    seg, weights = segmenter_for("torch")
    result = benchmark(seg, frame, hypotheses=8, steps=4, seed=0)
    assert result.hypotheses.shape == (8, *frame.shape[:2])
    params = sum(p.numel() for p in seg.model.parameters())
    record(
        benchmark,
        model="lsdseg",
        what="one full frame: K=8 hypotheses, 4 DDIM steps",
        hypotheses=8,
        steps=4,
        image_size=frame.shape[0],
        weights=weights,
        parameters=params,
    )
