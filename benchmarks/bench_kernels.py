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

How the kernels are timed: a round runs many calls (enough for about 1 ms of work, at most
``MAX_CALLS``) and synchronises once, so the microseconds of a sync do not land on every
model-shape result; the medians in the JSON are per round and ``calls_per_round`` in extra_info
divides them (``median_per_call_s``, and ``gbps``/``tflops`` are per call). The bandwidth cases
(large norms, copy, large attention) cycle through enough input sets to be ``ROTATE_L2`` times the
GPU's L2 (60 MB on an H200, which would otherwise hold a 32 MB fp16 tensor and turn "GB/s vs
copy" into an L2 number); the model-shape cases reuse one input set, as the model reads
activations its previous kernel just wrote.

Without CUDA everything skips (the CPU interpreter is for correctness tests, not timing), unless
``LSDSEG_BENCH_SMOKE=1`` (what ``scripts/gpu_checks.py --smoke`` sets): then every case runs
once at tiny shapes through Triton's interpreter (``TRITON_INTERPRET=1``), to check this file's
control flow on a CPU; its numbers mean nothing. Run:
``pytest benchmarks/bench_kernels.py --benchmark-only --benchmark-json=kernels.json``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time

import pytest
import torch
import torch.nn.functional as F

from lsdseg import ops
from lsdseg.config import ImageAEConfig, MaskVAEConfig, ModelConfig, SamplerConfig, UNetConfig
from lsdseg.model import LatentSegmenter
from lsdseg.unet import repeat_condition

SMOKE = os.environ.get("LSDSEG_BENCH_SMOKE") == "1"  # tiny shapes on the CPU interpreter
K = 2 if SMOKE else 8  # hypotheses per frame (8: the default)
DEFAULT_L2_BYTES = 60 * 2**20  # an H200's L2, when torch cannot tell
ROTATE_L2 = 3  # bandwidth cases cycle through inputs this many times the L2's size
MAX_SETS = 256  # input sets at most (tiny cases would otherwise want thousands)
ROUND_SECONDS = 1e-3  # work per synchronisation
MAX_CALLS = 200  # calls per round at most


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


def smoke_config() -> ModelConfig:
    """A tiny architecture with every kind of norm and attention call (smoke mode)."""
    return ModelConfig(
        image_size=32,
        image_ae=ImageAEConfig(channels=(8, 8, 16), context_channels=(16,), latent_channels=4,
                               groups=4),
        mask_vae=MaskVAEConfig(encoder_channels=(8, 8, 8), decoder_channels=(8, 8), groups=4),
        unet=UNetConfig(channels=(8, 16), attention_levels=(1,), head_dim=8, groups=4,
                        time_embed_dim=16),
        sampler=SamplerConfig(steps=1, hypotheses=K),
    )  # fmt: skip


MODEL_NORMS, MODEL_ATTNS = _model_calls(smoke_config() if SMOKE else None)
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
if SMOKE:  # one of each kind, small enough for the interpreter
    LARGE_NORMS = [((2, 16, 8, 8), 4)]
    LARGE_ATTNS = [(1, 2, 40, 16, torch.float16), (1, 2, 40, 16, torch.float32)]


def l2_bytes(device: torch.device) -> int:
    """The GPU's L2 cache size (``DEFAULT_L2_BYTES`` when torch does not say, or no GPU)."""
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        if size:
            return int(size)
    return DEFAULT_L2_BYTES


def input_sets(make, nbytes: int, device: torch.device, rotate: bool) -> list[tuple]:
    """``make(i)`` for enough ``i`` that the sets (``nbytes`` each) exceed ``ROTATE_L2`` times
    the L2, so that every call reads its inputs from memory; one set unless ``rotate``."""
    n = 1
    if rotate:
        n = min(MAX_SETS, max(2, math.ceil(ROTATE_L2 * l2_bytes(device) / nbytes)))
    if SMOKE:
        n = min(n, 2)
    return [make(i) for i in range(n)]


def calls_per_round(fn, sets: list[tuple], sync) -> int:
    """How many calls make ``ROUND_SECONDS`` of work (one synchronised call timed, warm)."""
    if SMOKE:
        return 2
    fn(*sets[0])
    sync()
    t0 = time.perf_counter()
    fn(*sets[-1])
    sync()
    once = time.perf_counter() - t0
    return max(1, min(MAX_CALLS, round(ROUND_SECONDS / max(once, 1e-9))))


def time_calls(benchmark, fn, sets: list[tuple], sync) -> float | None:
    """Benchmark rounds of many ``fn`` calls over the rotating ``sets`` and one sync each;
    returns the median seconds per call (None when nothing was timed)."""
    calls = calls_per_round(fn, sets, sync)
    cycle = itertools.cycle(sets)  # the rotation goes on across rounds

    def run():
        for _ in range(calls):
            out = fn(*next(cycle))
        sync()
        return out

    benchmark(run)
    benchmark.extra_info.update(calls_per_round=calls, input_sets=len(sets))
    if benchmark.stats is None:  # --benchmark-disable
        return None
    per_call = benchmark.stats.stats.median / calls
    benchmark.extra_info["median_per_call_s"] = per_call
    return per_call


def _norm_id(case: dict) -> str:
    b, c, h, w = case["shape"]
    tail = ("-mod" if case["modulated"] else "") + ("" if case["silu"] else "-nosilu")
    return f"{case['stage']}-{b}x{c}x{h}x{w}-g{case['groups']}{tail}"


def _triton_version() -> str:
    import triton

    return triton.__version__


@pytest.fixture(scope="module")
def kernels(device):
    """lsdseg.kernels on a CUDA machine (or the interpreter in smoke mode); skip elsewhere or
    when Triton cannot run."""
    if device.type != "cuda" and not SMOKE:
        pytest.skip("the kernels are timed on a CUDA GPU only (the CPU interpreter is for tests)")
    try:
        import lsdseg.kernels as kernels
    except ImportError as e:
        pytest.skip(f'Triton is not installed ({e}): pip install "lsdseg[triton]"')
    why = kernels.available()
    if why is not None:
        pytest.skip(f"the Triton kernels cannot run here: {why}")
    return kernels


def _norm_inputs(shape, groups, dtype, modulated, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
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
               modulated=False, silu=True, rotate=False, **info):  # fmt: skip
    x, w, bias, scale, shift = _norm_inputs(shape, groups, dtype, modulated, device)
    fn = _norm_provider(provider, kernels)
    expected = ops.group_norm_silu_reference(x, w, bias, groups, 1e-5, scale, shift, silu)
    got = fn(x, w, bias, groups, scale, shift, silu)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=tol)
    del expected, got

    def make(i):
        if i == 0:
            return x, w, bias, groups, scale, shift, silu
        xi, _, _, si, ti = _norm_inputs(shape, groups, dtype, modulated, device, seed=i)
        return xi, w, bias, groups, si, ti, silu

    sets = input_sets(make, x.numel() * x.element_size(), device, rotate)
    with torch.inference_mode():
        per_call = time_calls(benchmark, fn, sets, sync)
    record(benchmark, op="group_norm_silu", provider=provider, shape=list(shape), groups=groups,
           dtype=str(dtype), modulated=modulated, silu=silu, triton=_triton_version(),
           **info)  # fmt: skip
    if per_call is not None:
        moved = 2 * x.numel() * x.element_size()  # one read of x, one write of y
        benchmark.extra_info["gbps"] = moved / per_call / 1e9


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
               modulated=True, rotate=True, stage="large")  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(("shape", "groups"), LARGE_NORMS, ids=str)
def test_copy(benchmark, record, sync, kernels, device, shape, groups, dtype):
    """The ceiling: a device-to-device copy of the same tensor, bytes counted as for the norm,
    its inputs rotated past L2 the same way."""
    x = torch.randn(shape, device=device).to(dtype)
    y = torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    sets = input_sets(lambda i: (x if i == 0 else torch.randn_like(x),), nbytes, device, True)
    per_call = time_calls(benchmark, y.copy_, sets, sync)
    record(benchmark, op="copy", provider="torch", shape=list(shape), dtype=str(dtype),
           triton=_triton_version())  # fmt: skip
    if per_call is not None:
        moved = 2 * x.numel() * x.element_size()
        benchmark.extra_info["gbps"] = moved / per_call / 1e9


def _attn_inputs(b, h, l_q, l_k, d, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, h, l_q, d, generator=gen, device=device).to(dtype)
    k = torch.randn(b, h, l_k, d, generator=gen, device=device).to(dtype)
    v = torch.randn(b, h, l_k, d, generator=gen, device=device).to(dtype)
    return q, k, v


def _time_attention(benchmark, record, sync, kernels, device, provider, b, h, l_q, l_k, d, dtype,
                    launch=None, rotate=False, **info):  # fmt: skip
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if provider == "sdpa_flash" and (dtype == torch.float32 or device.type != "cuda"):
        pytest.skip("SDPA's flash backend takes float16 and bfloat16 on CUDA only")
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

        def make(i):
            return (q, k, v) if i == 0 else _attn_inputs(b, h, l_q, l_k, d, dtype, device, i)

        sets = input_sets(make, 3 * q.numel() * q.element_size(), device, rotate)
        per_call = time_calls(benchmark, fn, sets, sync)
    record(benchmark, op="attention", provider=provider, batch=b, heads=h, l_q=l_q, l_k=l_k,
           head_dim=d, dtype=str(dtype), triton=_triton_version(), **(launch or {}),
           **info)  # fmt: skip
    if per_call is not None:
        flops = 4 * b * h * l_q * l_k * d  # two matmuls of 2 B h L M d
        benchmark.extra_info["tflops"] = flops / per_call / 1e12


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
                    dtype, rotate=True, stage="large")  # fmt: skip


# launch configurations of the Triton kernel at the target shape; the first is the default
ATTN_CONFIGS = [
    (128, 64, 8, 3),
    (128, 64, 4, 3),
    (128, 64, 4, 4),
    (128, 128, 8, 3),
    (128, 32, 4, 3),
    (64, 64, 4, 3),
    (64, 32, 4, 2),
]
SWEEP_SHAPE = (16, 16, 1024, 64)  # B, heads, L, d
if SMOKE:
    ATTN_CONFIGS = [(16, 16, 4, 2), (32, 16, 4, 2)]
    SWEEP_SHAPE = (1, 2, 40, 16)


@pytest.mark.parametrize(
    ("block_m", "block_n", "warps", "stages"), ATTN_CONFIGS, ids=lambda v: str(v)
)
def test_attention_configs(benchmark, record, sync, kernels, device, block_m, block_n, warps,
                           stages):  # fmt: skip
    launch = {"block_m": block_m, "block_n": block_n, "num_warps": warps, "num_stages": stages}
    b, h, length, d = SWEEP_SHAPE
    _time_attention(benchmark, record, sync, kernels, device, "triton", b, h, length, length, d,
                    torch.float16, launch=launch, rotate=True, stage="config sweep")  # fmt: skip


@pytest.fixture(scope="module")
def smoke_segmenter_for(tmp_path_factory):
    """``segmenter_for`` of smoke mode: an untrained tiny model (``smoke_config``) on the CPU."""
    import lsdseg
    from lsdseg.checkpoint import save_checkpoint

    torch.manual_seed(0)
    folder = save_checkpoint(LatentSegmenter(smoke_config()), tmp_path_factory.mktemp("smoke"))
    return lambda backend: (lsdseg.load(folder, device="cpu", backend=backend), "untrained tiny")


@pytest.mark.parametrize("steps", [None, 4], ids=["default_steps", "steps4"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_segmenter_end_to_end(benchmark, record, kernels, request, frame, backend, steps):
    """One frame through the whole Segmenter (K=8), ops on torch vs on the Triton kernels."""
    segmenter_for = request.getfixturevalue("smoke_segmenter_for" if SMOKE else "segmenter_for")
    seg, weights = segmenter_for(backend)
    if SMOKE:
        frame = frame[:32, :32]
    steps = steps or seg.config.sampler.steps
    result = benchmark(seg, frame, hypotheses=K, steps=steps, seed=0)  # syncs before returning
    assert result.hypotheses.shape == (K, *frame.shape[:2])
    record(benchmark, op="segmenter", provider=backend, backend=backend, hypotheses=K,
           steps=steps, image_size=frame.shape[0], weights=weights,
           triton=_triton_version())  # fmt: skip
