"""The Triton kernels as lsdseg's "triton" ops backend: registration, the whole model, errors.

The whole-model test runs a tiny Segmenter with backend "triton" (Triton's interpreter on a CPU,
compiled on a GPU) against backend "torch" on the same seed. The availability errors are checked
in fresh interpreters, since whether the kernels are interpreted is fixed at import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch

import lsdseg
from lsdseg import ops
from lsdseg.layers import GroupNormAct
from lsdseg.segmenter import Segmenter

pytest.importorskip("triton")
kernels = pytest.importorskip("lsdseg.kernels")

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
needs_kernels = pytest.mark.skipif(
    kernels.available() is not None, reason=f"Triton kernels cannot run here: {kernels.available()}"
)


def _frame(h: int = 37, w: int = 53) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_importing_the_kernels_registers_the_triton_backend() -> None:
    backend = ops._REGISTRY["triton"]
    assert backend.group_norm_silu is kernels.group_norm_silu
    assert backend.attention is kernels.attention
    assert "triton" in ops.available_backends()


@pytest.fixture
def no_tf32():
    """Full-fp32 convolutions and matmuls on a GPU: with TF32 (cuDNN's default), a 1e-6
    difference in a norm's output can flip the rounding of a convolution's input and move the
    result by 1e-3, which would hide the comparison of the two backends."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def counted_triton():
    """The registered triton backend, wrapped to count its calls, for one test."""
    real = ops._REGISTRY["triton"]
    calls: Counter[str] = Counter()

    def counting(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return call

    ops.register_backend(
        dataclasses.replace(
            real,
            group_norm_silu=counting("group_norm_silu", real.group_norm_silu),
            attention=counting("attention", real.attention),
        )
    )
    try:
        yield calls
    finally:
        ops.register_backend(real)


@needs_kernels
def test_segmenter_with_triton_equals_torch(make_model, counted_triton, no_tf32) -> None:
    """Tiny model with attention (head dim 8, padded in the kernel), K = 3, two DDIM steps."""
    model = make_model().to(DEVICE)
    assert model.cfg.unet.attention_levels
    by_torch = Segmenter(model, DEVICE, backend="torch")(_frame(), hypotheses=3, steps=2, seed=5)
    assert not counted_triton
    by_triton = Segmenter(model, DEVICE, backend="triton")(_frame(), hypotheses=3, steps=2, seed=5)
    assert counted_triton["group_norm_silu"] > 10 and counted_triton["attention"] >= 2
    for name in ("mean", "std", "hypotheses"):
        np.testing.assert_allclose(
            getattr(by_triton, name), getattr(by_torch, name), atol=1e-4, err_msg=name
        )
    assert by_triton.hypotheses.std() > 1e-3  # the comparison is not between constants
    assert by_triton.latents is not None  # warm starts work with this backend too


@needs_kernels
def test_the_kernels_get_one_timestep_row(make_model, no_tf32, monkeypatch) -> None:
    """Under backend triton the B*K hypotheses share one (1, C) scale/shift per ResBlock norm
    (broadcast in the kernel), and the model's outputs match the torch ops."""
    model = make_model().to(DEVICE)
    real = ops._REGISTRY["triton"]
    rows: Counter[tuple[int, ...]] = Counter()

    def recording(*args, scale=None, shift=None, **kwargs):
        for t in (scale, shift):
            if t is not None:
                rows[tuple(t.shape[:1])] += 1
        return real.group_norm_silu(*args, scale=scale, shift=shift, **kwargs)

    monkeypatch.setitem(
        ops._REGISTRY, "triton", dataclasses.replace(real, group_norm_silu=recording)
    )
    gen = torch.Generator().manual_seed(0)
    s = model.cfg.image_size
    x = torch.randn(2, 3, s, s, generator=gen).to(DEVICE)  # B = 2
    noise = torch.randn(2, 3, *model.latent_shape, generator=gen).to(DEVICE)  # K = 3
    with torch.no_grad():
        with ops.use_backend("triton"):
            by_triton = model(x, noise)  # mean, std, hypotheses
        by_torch = model(x, noise)
    assert set(rows) == {(1,)} and rows[(1,)] > 4  # scale and shift of every modulated norm
    for got, want in zip(by_triton, by_torch, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_load_with_the_triton_backend(tiny, no_tf32) -> None:
    seg = lsdseg.load(tiny, device=DEVICE, backend="triton")
    assert seg.backend == "triton"
    got = seg(_frame(16, 16), seed=3)
    expected = lsdseg.load(tiny, device=DEVICE)(_frame(16, 16), seed=3)
    np.testing.assert_allclose(got.mean, expected.mean, atol=1e-4)


@needs_kernels
def test_model_code_with_grad_enabled_says_how_to_run() -> None:
    norm = GroupNormAct(8, 4).to(DEVICE)  # its weight and bias require grad
    x = torch.randn(2, 8, 3, 3, device=DEVICE)
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="no_grad"):
        norm(x)
    with ops.use_backend("triton"), torch.no_grad():
        torch.testing.assert_close(norm(x), GroupNormAct(8, 4).to(DEVICE)(x), atol=1e-5, rtol=1e-5)


def _run_fresh(code: str) -> dict[str, str]:
    """Run ``code`` in a new interpreter without TRITON_INTERPRET; it prints a JSON dict."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _error(message: str) -> str:
    return f"except Exception as e:\n    seen[{message!r}] = f'{{type(e).__name__}}: {{e}}'\n"


@pytest.mark.skipif(CUDA, reason="checks the message shown on a machine without a CUDA GPU")
def test_without_gpu_or_interpreter_the_error_names_the_fix(tiny) -> None:
    seen = _run_fresh(
        "import json, torch, lsdseg\n"
        "from lsdseg import ops\n"
        "seen = {}\n"
        "try:\n    ops.get_backend('triton')\n"
        + _error("ops")
        + f"try:\n    lsdseg.load({tiny!r}, backend='triton')\n"
        + _error("load")
        + "from lsdseg.kernels import attention\n"
        "q = torch.zeros(1, 1, 4, 16)\n"
        "try:\n    attention(q, q, q)\n" + _error("call") + "print(json.dumps(seen))\n"
    )
    for where in ("ops", "load"):
        msg = seen[where]
        assert msg.startswith("RuntimeError: ops backend 'triton' cannot run here"), msg
        assert "no CUDA GPU is visible" in msg and "TRITON_INTERPRET=1" in msg, msg
        assert "before lsdseg.kernels is imported" in msg, msg
    assert seen["call"].startswith("RuntimeError: attention: the tensors are on the CPU"), seen
    assert "compiled for a GPU: move them with .cuda()" in seen["call"], seen


@pytest.mark.skipif(CUDA, reason="checks the message shown on a machine without a CUDA GPU")
def test_interpreter_switched_on_too_late_is_explained() -> None:
    seen = _run_fresh(
        "import json, os\n"
        "from lsdseg import ops\n"
        "import lsdseg.kernels\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "seen = {}\n"
        "try:\n    ops.get_backend('triton')\n" + _error("ops") + "print(json.dumps(seen))\n"
    )
    assert "TRITON_INTERPRET=1 was set after lsdseg.kernels was imported" in seen["ops"], seen


@needs_kernels
def test_a_pretrained_image_encoder_runs_its_norms_through_triton(
    make_config, make_model, counted_triton, no_tf32
) -> None:
    """The EfficientNet-Lite encoder's feature pyramid (GroupNorm + SiLU) under backend triton."""
    cfg = make_config()
    image_ae = dataclasses.replace(
        cfg.image_ae, encoder="efficientnet_lite0", decoder=False, pyramid_width=16
    )
    model = make_model(dataclasses.replace(cfg, image_ae=image_ae)).to(DEVICE)
    x = torch.randn(1, 3, 64, 64, device=DEVICE)
    with torch.inference_mode():
        want = model.encode_image(x)
        with ops.use_backend("triton"):
            got = model.encode_image(x)
    assert counted_triton["group_norm_silu"] >= 7  # 3 residual blocks x 2, plus the output norm
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
