"""The exported ONNX graph and the ``onnx`` backend, against the torch model.

A tiny model with non-default normalisation and latent scale, attention and a re-drawn UNet
head (so every input matters) is exported once per module through the backend's cache; the
bundled default weights are exported once for the checks on real frames of the demo clip. The
graph checkers themselves, on hand-made graphs, are tested in ``test_onnx_checks.py``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import lsdseg  # noqa: E402
from lsdseg.checkpoint import checkpoint_hash, save_checkpoint  # noqa: E402
from lsdseg.export import cache  # noqa: E402
from lsdseg.export.check import GraphError, check_graph  # noqa: E402
from lsdseg.export.onnx import (  # noqa: E402
    INPUT_NAMES,
    OUTPUT_NAMES,
    convert_fp16,
    export_onnx,
    read_metadata,
)
from lsdseg.export.ort import OrtRunner, providers, session_options  # noqa: E402
from lsdseg.files import atomic_path, write_bytes_atomic  # noqa: E402
from lsdseg.version import __version__  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "assets" / "demo" / "cvc_seq5.mp4"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny graphs: one thread is fastest on a busy 2-core machine (for torch and ORT)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """A private export cache for this module (never the user's ~/.cache)."""
    root = tmp_path_factory.mktemp("lsdseg-cache")
    old = os.environ.get(cache.ENV)
    os.environ[cache.ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(cache.ENV, None)
    else:
        os.environ[cache.ENV] = old


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """S=64 tiny model: normalisation (0.4, 0.5, 0.6)/(0.2, 0.25, 0.3), latent scale 1.5.

    Two residual blocks per encoder and context level, the second ones (which start as the
    identity) drawn at random, and a condition pyramid with its zero projections drawn too, so
    the exported graph covers every block a grown model has.
    """
    from conftest import _tiny_config, _tiny_model

    cfg = _tiny_config()
    cfg = replace(
        cfg,
        image_ae=replace(cfg.image_ae, encoder_depth=2, context_depth=2),
        unet=replace(cfg.unet, cond_channels=(8, 16)),
    )
    model = _tiny_model(cfg, seed=1, head_std=0.3)
    with torch.no_grad():
        for name, p in model.image_ae.encoder.named_parameters():
            if name.endswith("conv2.weight") and not p.any():
                p.normal_(0.0, 0.1)
        for proj in model.unet.cond_pyramid.proj:
            proj.weight.normal_(0.0, 0.1)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny-attn")


@pytest.fixture(scope="module")
def onnx_seg(ckpt, cache_root) -> lsdseg.Segmenter:
    """The ``onnx`` backend on the tiny checkpoint (exports its 2-step graph into the cache)."""
    return lsdseg.load(ckpt, backend="onnx")


@pytest.fixture(scope="module")
def torch_seg(ckpt) -> lsdseg.Segmenter:
    return lsdseg.load(ckpt)


def _graph_path(seg: lsdseg.Segmenter, steps: int) -> Path:
    return cache.onnx_path(checkpoint_hash(seg.checkpoint), steps, seg.config.image_size, "fp32")


def _frames(n: int, size: tuple[int, int] = (48, 80), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        f = rng.integers(0, 60, (*size, 3), dtype=np.uint8)
        cv2.circle(f, (20 + 10 * i, 24), 12, (60, 80, 220), -1)
        frames.append(f)
    return frames


def demo_frames(n: int) -> list[np.ndarray]:
    """``n`` frames spread over the bundled demo clip (real colonoscopy video)."""
    cap = cv2.VideoCapture(str(DEMO))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for i in np.linspace(0, total - 1, n).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, frame = cap.read()
        assert ok, f"cannot read frame {i} of {DEMO}"
        frames.append(frame)
    cap.release()
    return frames


# ---------------------------------------------------------------- the graph


def test_graph_interface_metadata_and_checks(onnx_seg, ckpt):
    path = _graph_path(onnx_seg, 2)
    check_graph(path)  # checker (full), strict shape inference, interface, TensorRT ops
    proto = onnx.load(str(path))
    assert tuple(i.name for i in proto.graph.input) == INPUT_NAMES == ("image", "noise")
    assert tuple(o.name for o in proto.graph.output) == OUTPUT_NAMES
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)]  # fmt: skip
    assert dims == [
        ["B", 3, 64, 64],
        ["B", "K", 2, 8, 8],
        ["B", 64, 64],
        ["B", 64, 64],
        ["B", "K", 64, 64],
        ["B"],
    ]
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    # inner shapes name B and K too (the exporter's own symbols, s11*s30 and so on, are renamed)
    symbols = {d.dim_param for v in proto.graph.value_info for d in v.type.tensor_type.shape.dim}
    assert {"B", "K"} < symbols <= {"", "B", "K", "K*B", "B*K"}, symbols
    meta = read_metadata(path)
    assert meta["lsdseg_version"] == __version__
    assert meta["checkpoint_hash"] == checkpoint_hash(ckpt)
    assert meta["steps"] == "2" and meta["timesteps"] == "[999, 499]" and meta["eta"] == "0.0"
    assert meta["spacing"] == "trailing" and meta["shift"] == "1.0" and meta["prediction"] == "v"
    assert meta["image_mean"] == "[0.4, 0.5, 0.6]" and meta["image_std"] == "[0.2, 0.25, 0.3]"
    assert meta["threshold"] == "0.5" and meta["precision"] == "fp32"


def test_parity_with_torch_for_k_1_3_8_and_b_1_2(onnx_seg, torch_seg, cache_root):
    """One exported file serves every (B, K); the graph's mean matches torch to 1e-4."""
    model = torch_seg.model
    session = onnx_seg.runner.session(2)
    gen = torch.Generator().manual_seed(0)
    for b in (1, 2):
        for k in (1, 3, 8):
            x = torch.randn(b, 3, 64, 64, generator=gen)
            noise = torch.randn(b, k, *model.latent_shape, generator=gen)
            with torch.inference_mode():
                ref = [t.numpy() for t in model(x, noise, 2)]
            got = session.run(None, {"image": x.numpy(), "noise": noise.numpy()})
            for name, r, g in zip(OUTPUT_NAMES, ref, got, strict=True):
                assert g.shape == r.shape, (b, k, name)
                assert np.abs(g - r).max() <= 1e-4, (b, k, name, np.abs(g - r).max())
            assert ref[2].std() > 0.01  # the hypotheses differ: the check is not vacuous
    graphs = sorted(p.name for p in (cache_root / "onnx").glob("*.onnx"))
    assert len(graphs) == 1 and "-s2-" in graphs[0]


def test_segmenter_results_match_torch(onnx_seg, torch_seg):
    frames = _frames(2)
    for k in (1, 3):
        a = torch_seg(frames, hypotheses=k, seed=5)
        b = onnx_seg(frames, hypotheses=k, seed=5)
        for ra, rb in zip(a, b, strict=True):
            assert np.abs(ra.mean - rb.mean).max() <= 1e-4
            assert np.abs(ra.hypotheses - rb.hypotheses).max() <= 1e-4
            assert rb.latents is None and rb.hypotheses.shape == (k, 48, 80)


def test_other_steps_export_another_cached_graph(onnx_seg, torch_seg, cache_root):
    frame = _frames(1)[0]
    a, b = torch_seg(frame, steps=3, seed=1), onnx_seg(frame, steps=3, seed=1)
    assert np.abs(a.mean - b.mean).max() <= 1e-4
    assert read_metadata(_graph_path(onnx_seg, 3))["timesteps"] == "[999, 666, 332]"
    # a second runner finds both graphs in the cache and exports nothing
    runner = OrtRunner(torch_seg.model, torch_seg.checkpoint, torch.device("cpu"))
    before = {p: p.stat().st_mtime_ns for p in (cache_root / "onnx").glob("*.onnx")}
    runner.session(3)
    assert before == {p: p.stat().st_mtime_ns for p in (cache_root / "onnx").glob("*.onnx")}


def test_first_call_under_inference_mode_exports(onnx_seg, torch_seg, cache_root):
    # torch.export fails inside inference_mode ("Inference tensors cannot be saved for
    # backward"); the backend's first call at a new step count must export anyway
    frame = _frames(1)[0]
    with torch.inference_mode():
        b = onnx_seg(frame, steps=5, seed=2)
    assert _graph_path(onnx_seg, 5).is_file()
    assert np.abs(torch_seg(frame, steps=5, seed=2).mean - b.mean).max() <= 1e-4


def test_damaged_or_foreign_cache_file_is_exported_again(onnx_seg, torch_seg, cache_root):
    path = _graph_path(onnx_seg, 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an onnx file")
    runner = OrtRunner(torch_seg.model, torch_seg.checkpoint, torch.device("cpu"))
    runner.session(4)
    assert read_metadata(path)["steps"] == "4"
    # a graph of other settings under this name (copied by hand) is detected by its metadata
    other = read_metadata(_graph_path(onnx_seg, 2))
    expected = cache.expected_metadata(checkpoint_hash(torch_seg.checkpoint), 4, 64, "fp32")
    assert cache.mismatches(other, expected) == ["steps: 2 vs 4"]
    assert cache.mismatches(read_metadata(path), expected) == []


def test_a_graph_whose_content_changed_is_exported_again_with_one_notice(
    onnx_seg, torch_seg, cache_root, caplog
):
    import onnx

    frame = _frames(1)[0]
    onnx_seg(frame, steps=1, seed=3)  # the 1-step graph, cached
    path = _graph_path(onnx_seg, 6)
    onnx_seg(frame, steps=6, seed=3)
    # swap in the 1-step graph, its metadata edited to claim this file's settings: the
    # metadata check alone passes it
    forged = onnx.load(str(_graph_path(onnx_seg, 1)))
    meta = read_metadata(path)
    del forged.metadata_props[:]
    for key, value in meta.items():
        forged.metadata_props.add(key=key, value=value)
    path.write_bytes(forged.SerializeToString())
    expected = cache.expected_metadata(checkpoint_hash(torch_seg.checkpoint), 6, 64, "fp32")
    assert cache.mismatches(read_metadata(path), expected) == []
    fresh = lsdseg.load(torch_seg.checkpoint, backend="onnx")
    caplog.clear()
    with caplog.at_level("WARNING"):
        got = fresh(frame, steps=6, seed=3)
    notices = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(notices) == 1 and "SHA-256 differs" in notices[0], notices
    want = torch_seg(frame, steps=6, seed=3)
    assert np.abs(got.mean - want.mean).max() <= 1e-4  # the checkpoint's masks, not the forgery
    assert cache.graph_changed(path) is None


def test_eta_and_warm_starts_are_refused(onnx_seg):
    frame = _frames(1)[0]
    with pytest.raises(ValueError, match=r"eta=0.5.*deterministic"):
        onnx_seg(frame, eta=0.5, seed=0)
    first = onnx_seg(frame, seed=0)
    with pytest.raises(ValueError, match="latents"):
        onnx_seg(frame, seed=0, warm_start=first)
    with pytest.raises(ValueError, match="warm starts"):
        onnx_seg.runner(torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 2, 8, 8), 2, 0.0, None, 499)


def test_export_refuses_eta_and_bad_settings_before_tracing(ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"eta=0.3.*deterministic DDIM"):
        export_onnx(ckpt, tmp_path / "a.onnx", eta=0.3)
    with pytest.raises(ValueError, match="steps=0"):
        export_onnx(ckpt, tmp_path / "a.onnx", steps=0)
    with pytest.raises(ValueError, match="is a folder"):
        export_onnx(ckpt, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        export_onnx(ckpt, blocker / "sub" / "a.onnx")
    with pytest.raises(ValueError, match="image_size=30 must be a multiple of 16"):
        export_onnx(ckpt, tmp_path / "a.onnx", image_size=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_export_leaves_no_file(ckpt, tmp_path, monkeypatch):
    import lsdseg.export.onnx as exporter

    def broken(proto):
        raise GraphError("broken on purpose")

    monkeypatch.setattr(exporter, "check_graph", broken)  # the name export_onnx calls
    with pytest.raises(GraphError, match="on purpose"):
        export_onnx(ckpt, tmp_path / "a.onnx", steps=1)
    assert list(tmp_path.iterdir()) == []  # no graph, no temporary file


def test_an_interrupted_write_leaves_no_file(tmp_path):
    target = tmp_path / "graph.onnx"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of a new graph")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["graph.onnx"]  # no temporary file left
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_fp16_graph_has_float32_io(onnx_seg, torch_seg, tmp_path):
    half = convert_fp16(_graph_path(onnx_seg, 2), tmp_path / "half.onnx")
    check_graph(half)
    proto = onnx.load(str(half))
    assert read_metadata(half)["precision"] == "fp16"
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]  # conv kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    session = ort.InferenceSession(
        str(half), session_options(1), providers=["CPUExecutionProvider"]
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    mean, _, p, score = session.run(None, {"image": x.numpy(), "noise": noise.numpy()})
    assert score.dtype == np.float32 and score.shape == (2,)
    assert mean.dtype == np.float32 and p.shape == (2, 3, 64, 64)
    with torch.inference_mode():
        ref = torch_seg.model(x, noise, 2)[0].numpy()
    assert np.abs(mean - ref).max() < 2e-2
    with pytest.raises(ValueError, match="fp16 graph"):
        convert_fp16(half, tmp_path / "twice.onnx")


# ---------------------------------------------------------------- runtime settings


def test_session_options_are_set_for_speed(monkeypatch):
    torch.set_num_threads(1)
    options = session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 1 and not options.enable_profiling
    # passive by default, as torch's OpenMP threads (lsdseg.threads); ACTIVE spins
    spin = "1" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE" else "0"
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spin
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    monkeypatch.setenv("LSDSEG_ORT_THREADS", "3")
    assert session_options().intra_op_num_threads == 3
    monkeypatch.setenv("LSDSEG_ORT_THREADS", "zero")
    with pytest.raises(ValueError, match="LSDSEG_ORT_THREADS"):
        session_options()
    monkeypatch.delenv("LSDSEG_ORT_THREADS")
    monkeypatch.setenv("LSDSEG_ORT_SPINNING", "0")  # wins over the wait policy
    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("LSDSEG_ORT_SPINNING", "yes")
    with pytest.raises(ValueError, match="LSDSEG_ORT_SPINNING='yes' must be 0 or 1"):
        session_options()


def test_providers_cpu_and_a_cuda_device_without_a_gpu_provider(monkeypatch):
    assert providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        providers(torch.device("cuda:0"))
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    chosen = providers(torch.device("cuda:1"))
    assert chosen == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def _tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return True
    return False


@pytest.mark.skipif(not _tensorrt_missing(), reason="TensorRT is installed here")
def test_trt_backend_without_tensorrt_says_how_to_install(ckpt):
    with pytest.raises(
        RuntimeError, match=r'TensorRT is not installed: pip install "lsdseg\[trt\]"'
    ):
        lsdseg.load(ckpt, backend="trt")


# ---------------------------------------------------------------- default weights, real frames


@pytest.fixture(scope="module")
def default_graphs(tmp_path_factory) -> tuple[Path, Path]:
    """The bundled weights exported once (fp32, 2 steps) and converted to fp16."""
    folder = tmp_path_factory.mktemp("default-onnx")
    fp32 = export_onnx("default", folder / "default-fp32.onnx", steps=2)
    return fp32, convert_fp16(fp32, folder / "default-fp16.onnx")


def test_default_weights_fp32_parity_on_demo_frames(default_graphs):
    seg = lsdseg.load("default")
    frames = demo_frames(2)
    session = ort.InferenceSession(
        str(default_graphs[0]), session_options(1), providers=["CPUExecutionProvider"]
    )
    x = seg.preprocess(frames, "bgr")  # (2, 3, 256, 256)
    noise = torch.randn((2, 8, *seg.model.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = seg.model(x, noise, 2)[0].numpy()
    mean = session.run(["mean"], {"image": x.numpy(), "noise": noise.numpy()})[0]
    assert np.abs(mean - ref).max() <= 1e-4
    assert (ref > seg.config.sampler.threshold).any()  # a polyp is found: the check is real


def test_default_weights_fp16_mask_dice_on_demo_frames(default_graphs):
    """FP16 vs FP32 binary masks (mean > the checkpoint's threshold) on real frames."""
    seg = lsdseg.load("default")
    threshold = seg.config.sampler.threshold
    frames = demo_frames(6)
    x = seg.preprocess(frames, "bgr").numpy()
    noise = np.random.default_rng(0).standard_normal((6, 8, *seg.model.latent_shape))
    feeds = {"image": x, "noise": noise.astype(np.float32)}
    masks = []
    for path in default_graphs:
        session = ort.InferenceSession(
            str(path), session_options(1), providers=["CPUExecutionProvider"]
        )
        masks.append(session.run(["mean"], feeds)[0] > threshold)  # (6, 256, 256)
    full, half = masks
    assert full.sum() > 1000, "the frames must contain polyp pixels for the Dice to mean much"
    dice = 2 * (full & half).sum() / (full.sum() + half.sum())
    assert dice >= 0.99, dice
