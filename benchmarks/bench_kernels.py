"""The Triton kernels against torch, at the model's real shapes and at large shapes (CUDA only).

- GroupNorm+SiLU at every distinct norm call of the default architecture (image encoder at B=1,
  denoiser step and mask decoder at K=8 hypotheses, read off the model by running it on the meta
  device), and at large shapes. Providers: ``torch`` (F.group_norm, the modulation, F.silu in the
  input dtype: plain eager), ``torch_ops`` (the ``"torch"`` ops backend: fp32 statistics, what the
  model runs without Triton), ``triton`` (auto variant) and ``triton_split`` (the split variant
  forced). ``gbps`` in extra_info counts one read of x and one write of y.
- ``copy``: ``y.copy_(x)`` at the large shapes, counted the same way: the bandwidth ceiling that
  "GroupNorm at N% of copy bandwidth" is read against.
- Attention at the model's shape and at large ones: ``torch`` (the fp32 reference, which builds
  the score matrix), ``sdpa`` (F.scaled_dot_product_attention, default dispatch), ``sdpa_flash``
  (its flash backend forced; fp16/bf16 only) and ``triton``. ``tflops`` counts 4 B h L M d.
  ``test_attention_configs`` sweeps the kernel's launch configuration at L=1024, d=64, fp16.
- One ``Segmenter`` call per ops backend (K=8, 256x256, bundled weights).

Every timed function synchronises CUDA before it returns. Without CUDA everything skips (the CPU
interpreter is for correctness tests, not timing). Run:
``pytest benchmarks/bench_kernels.py --benchmark-only --benchmark-json=kernels.json``.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from lsdseg import ops
from lsdseg.config import ModelConfig
from lsdseg.model import LatentSegmenter
from lsdseg.unet import repeat_condition

K = 8  # hypotheses per frame, the default


def _model_calls(cfg: ModelConfig | None = None, k: int = K) -> tuple[list[dict], list[dict]]:
    """Every distinct GroupNorm and attention call of one frame of the default architecture.

    The model runs on the meta device (shapes only, no arithmetic) with a backend that records
    its op calls: the image encoder at B=1, one denoiser step and the mask decoder at B=K.
    """
    norms: dict[tuple, dict] = {}
    attns: dict[tuple, dict] = {}
    stage = ""

    def norm(x, weight, bias, groups, eps=1e-5, scale=None, shift=None, silu=True):
        key = (tuple(x.shape), groups, scale is not None, silu)
        norms.setdefault(key, {"stage": stage, "shape": key[0], "groups": groups,
                               "modulated": key[2], "silu": silu, "calls": 0})  # fmt: skip
        norms[key]["calls"] += 1
        return torch.empty_like(x)

    def attention(q, k_, v):
        key = (tuple(q.shape), k_.shape[2])
        attns.setdefault(key, {"stage": stage, "q": key[0], "l_k": key[1], "calls": 0})
        attns[key]["calls"] += 1
        return torch.empty_like(q)

    ops.register_backend(ops.OpsBackend("recording", norm, attention))
    try:
        with torch.device("meta"):
            model = LatentSegmenter(cfg or ModelConfig())
        s = model.cfg.image_size
        with torch.no_grad(), ops.use_backend("recording"):
            stage = "image_encoder"
            z_x = model.encode_image(torch.empty(1, 3, s, s, device="meta"))
            stage = "denoiser"
            cond = repeat_condition(model.unet.condition(z_x), k)  # ((K, ch, h, w), ...)
            z = torch.empty(k, *model.latent_shape, device="meta")  # (K, c_m, h, w)
            model.unet.denoise(z, torch.full((k,), 999, device="meta"), cond)
            stage = "mask_decoder"
            model.decode_masks(z)
    finally:
        ops._REGISTRY.pop("recording", None)
    return list(norms.values()), list(attns.values())


MODEL_NORMS, MODEL_ATTNS = _model_calls()
# large shapes: (B, C, H, W), groups. The first fits the fused variant (C/G x H W = 16384
# elements); the others take the split variant.
LARGE_NORMS = [((32, 128, 64, 64), 32), ((16, 256, 64, 64), 32), ((4, 64, 256, 256), 8)]
LARGE_ATTNS = [  # (B, heads, L, d, dtype)
    (16, 16, 1024, 64, torch.float16),  # the target: within 1.25x of SDPA flash
    (16, 16, 1024, 64, torch.bfloat16),
    (16, 16, 1024, 64, torch.float32),
    (16, 16, 576, 64, torch.float16),  # 24x24: a partial last key block
    (4, 16, 4096, 64, torch.float16),
    (16, 16, 1024, 128, torch.float16),
    (16, 16, 1024, 32, torch.float16),
]


def _norm_id(case: dict) -> str:
    b, c, h, w = case["shape"]
    tail = ("-mod" if case["modulated"] else "") + ("" if case["silu"] else "-nosilu")
    return f"{case['stage']}-{b}x{c}x{h}x{w}-g{case['groups']}{tail}"


def _triton_version() -> str:
    import triton

    return triton.__version__


@pytest.fixture(scope="module")
def kernels(device):
    """lsdseg.kernels on a CUDA machine; skip elsewhere or when Triton cannot run."""
    if device.type != "cuda":
        pytest.skip("the kernels are timed on a CUDA GPU only (the CPU interpreter is for tests)")
    try:
        import lsdseg.kernels as kernels
    except ImportError as e:
        pytest.skip(f'Triton is not installed ({e}): pip install "lsdseg[triton]"')
    why = kernels.available()
    if why is not None:
        pytest.skip(f"the Triton kernels cannot run here: {why}")
    return kernels


def _norm_inputs(shape, groups, dtype, modulated, device):
    gen = torch.Generator(device=device).manual_seed(0)
    b, c = shape[:2]
    x = torch.randn(shape, generator=gen, device=device).to(dtype)
    w = torch.randn(c, generator=gen, device=device).to(dtype)
    bias = torch.randn(c, generator=gen, device=device).to(dtype)
    scale = shift = None
    if modulated:  # non-contiguous halves, as ResBlock makes them
        scale, shift = torch.randn(b, 2 * c, generator=gen, device=device).to(dtype).chunk(2, 1)
    return x, w, bias, scale, shift


def _torch_eager(x, w, bias, groups, scale, shift, silu):
    y = F.group_norm(x, groups, w, bias, 1e-5)
    if scale is not None:
        y = y * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    return F.silu(y) if silu else y


def _norm_provider(name, kernels):
    if name == "torch":
        return _torch_eager
    if name == "torch_ops":
        return lambda x, w, b, g, s, t, silu: ops.group_norm_silu_reference(
            x, w, b, g, 1e-5, s, t, silu
        )
    variant = "split" if name == "triton_split" else "auto"
    return lambda x, w, b, g, s, t, silu: kernels.group_norm_silu(
        x, w, b, g, 1e-5, s, t, silu, variant=variant
    )


def _time_norm(benchmark, record, sync, kernels, device, provider, shape, groups, dtype,
               modulated=False, silu=True, **info):  # fmt: skip
    x, w, bias, scale, shift = _norm_inputs(shape, groups, dtype, modulated, device)
    fn = _norm_provider(provider, kernels)
    expected = ops.group_norm_silu_reference(x, w, bias, groups, 1e-5, scale, shift, silu)
    got = fn(x, w, bias, groups, scale, shift, silu)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)

    def run():
        y = fn(x, w, bias, groups, scale, shift, silu)
        sync()
        return y

    with torch.inference_mode():
        benchmark(run)
    record(benchmark, op="group_norm_silu", provider=provider, shape=list(shape), groups=groups,
           dtype=str(dtype), modulated=modulated, silu=silu, triton=_triton_version(),
           **info)  # fmt: skip
    if benchmark.stats is not None:
        moved = 2 * x.numel() * x.element_size()  # one read of x, one write of y
        benchmark.extra_info["gbps"] = moved / benchmark.stats.stats.median / 1e9


NORM_PROVIDERS = ["torch", "torch_ops", "triton", "triton_split"]


@pytest.mark.parametrize("provider", NORM_PROVIDERS)
@pytest.mark.parametrize("case", MODEL_NORMS, ids=_norm_id)
def test_group_norm_model_shapes(benchmark, record, sync, kernels, device, case, provider):
    _time_norm(benchmark, record, sync, kernels, device, provider, case["shape"], case["groups"],
               torch.float32, case["modulated"], case["silu"], stage=case["stage"],
               calls_per_frame=case["calls"], hypotheses=K)  # fmt: skip


@pytest.mark.parametrize("provider", NORM_PROVIDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(("shape", "groups"), LARGE_NORMS, ids=str)
def test_group_norm_large(benchmark, record, sync, kernels, device, shape, groups, dtype, provider):
    _time_norm(benchmark, record, sync, kernels, device, provider, shape, groups, dtype,
               modulated=True, stage="large")  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(("shape", "groups"), LARGE_NORMS, ids=str)
def test_copy(benchmark, record, sync, kernels, device, shape, groups, dtype):
    """The ceiling: a device-to-device copy of the same tensor, bytes counted as for the norm."""
    x = torch.randn(shape, device=device).to(dtype)
    y = torch.empty_like(x)

    def run():
        y.copy_(x)
        sync()

    benchmark(run)
    record(benchmark, op="copy", provider="torch", shape=list(shape), dtype=str(dtype),
           triton=_triton_version())  # fmt: skip
    if benchmark.stats is not None:
        moved = 2 * x.numel() * x.element_size()
        benchmark.extra_info["gbps"] = moved / benchmark.stats.stats.median / 1e9


def _attn_inputs(b, h, l_q, l_k, d, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, h, l_q, d, generator=gen, device=device).to(dtype)
    k = torch.randn(b, h, l_k, d, generator=gen, device=device).to(dtype)
    v = torch.randn(b, h, l_k, d, generator=gen, device=device).to(dtype)
    return q, k, v


def _time_attention(benchmark, record, sync, kernels, device, provider, b, h, l_q, l_k, d, dtype,
                    launch=None, **info):  # fmt: skip
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if provider == "sdpa_flash" and dtype == torch.float32:
        pytest.skip("SDPA's flash backend takes float16 and bfloat16 only")
    q, k, v = _attn_inputs(b, h, l_q, l_k, d, dtype, device)
    fn = {
        "torch": ops.attention_reference,
        "sdpa": F.scaled_dot_product_attention,
        "sdpa_flash": F.scaled_dot_product_attention,
        "triton": lambda q, k, v: kernels.attention(q, k, v, **(launch or {})),
    }[provider]
    only_flash = provider == "sdpa_flash"
    backend = sdpa_kernel(SDPBackend.FLASH_ATTENTION) if only_flash else contextlib.nullcontext()
    with torch.inference_mode(), backend:  # entered once, outside the timer
        expected = ops.attention_reference(q, k, v)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(fn(q, k, v).float(), expected.float(), atol=tol, rtol=tol)
        del expected

        def run():
            out = fn(q, k, v)
            sync()
            return out

        benchmark(run)
    record(benchmark, op="attention", provider=provider, batch=b, heads=h, l_q=l_q, l_k=l_k,
           head_dim=d, dtype=str(dtype), triton=_triton_version(), **(launch or {}),
           **info)  # fmt: skip
    if benchmark.stats is not None:
        flops = 4 * b * h * l_q * l_k * d  # two matmuls of 2 B h L M d
        benchmark.extra_info["tflops"] = flops / benchmark.stats.stats.median / 1e12


ATTN_PROVIDERS = ["torch", "sdpa", "sdpa_flash", "triton"]


def _attn_id(case: dict) -> str:
    b, h, l_q, d = case["q"]
    return f"{case['stage']}-{b}x{h}x{l_q}x{d}"


@pytest.mark.parametrize("provider", ATTN_PROVIDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", MODEL_ATTNS, ids=_attn_id)
def test_attention_model_shapes(benchmark, record, sync, kernels, device, case, dtype, provider):
    b, h, l_q, d = case["q"]
    _time_attention(benchmark, record, sync, kernels, device, provider, b, h, l_q, case["l_k"], d,
                    dtype, stage=case["stage"], hypotheses=K)  # fmt: skip


@pytest.mark.parametrize("provider", ATTN_PROVIDERS)
@pytest.mark.parametrize(
    ("b", "h", "length", "d", "dtype"),
    LARGE_ATTNS,
    ids=[f"{b}x{h}x{n}x{d}-{str(t)[6:]}" for b, h, n, d, t in LARGE_ATTNS],
)
def test_attention_large(benchmark, record, sync, kernels, device, b, h, length, d, dtype,
                         provider):  # fmt: skip
    _time_attention(benchmark, record, sync, kernels, device, provider, b, h, length, length, d,
                    dtype, stage="large")  # fmt: skip


# launch configurations of the Triton kernel at the target shape; the first is the default
ATTN_CONFIGS = [
    (128, 64, 4, 3),
    (128, 64, 8, 3),
    (128, 64, 4, 4),
    (128, 128, 8, 3),
    (128, 32, 4, 3),
    (64, 64, 4, 3),
    (64, 32, 4, 2),
]


@pytest.mark.parametrize(
    ("block_m", "block_n", "warps", "stages"), ATTN_CONFIGS, ids=lambda v: str(v)
)
def test_attention_configs(benchmark, record, sync, kernels, device, block_m, block_n, warps,
                           stages):  # fmt: skip
    launch = {"block_m": block_m, "block_n": block_n, "num_warps": warps, "num_stages": stages}
    _time_attention(benchmark, record, sync, kernels, device, "triton", 16, 16, 1024, 1024, 64,
                    torch.float16, launch=launch, stage="config sweep")  # fmt: skip


@pytest.mark.parametrize("steps", [None, 4], ids=["default_steps", "steps4"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_segmenter_end_to_end(benchmark, record, kernels, segmenter_for, frame, backend, steps):
    """One frame through the whole Segmenter (K=8), ops on torch vs on the Triton kernels."""
    seg, weights = segmenter_for(backend)
    steps = steps or seg.config.sampler.steps
    result = benchmark(seg, frame, hypotheses=K, steps=steps, seed=0)  # syncs before returning
    assert result.hypotheses.shape == (K, *frame.shape[:2])
    record(benchmark, op="segmenter", provider=backend, backend=backend, hypotheses=K,
           steps=steps, image_size=frame.shape[0], weights=weights,
           triton=_triton_version())  # fmt: skip
