"""TensorRT engines built from the exported ONNX graph, with a JSON sidecar.

:func:`build_engine` uses the TensorRT Python API (10.x): a strongly typed network filled by the
ONNX parser (every parser error reported), one optimisation profile over B and K, a workspace
limit, and a timing cache file keyed by TensorRT version and GPU that later builds reuse. An
FP16 engine is built from the FP16 graph (:func:`~lsdseg.export.onnx.convert_fp16`), whose
types decide every layer's precision: ``BuilderFlag.FP16`` and ``trtexec --fp16`` are
deprecated since TensorRT 10.12 and gone in 11, while strongly typed networks build the same on
10 and 11. The engine is written with a sidecar ``<engine>.json`` that records the TensorRT
version, the GPU and its compute capability, the ONNX file's hash and metadata, the precision
and the profile. An engine only runs on the GPU model and TensorRT version that built it:
:func:`check_sidecar` refuses any other with a message that says to rebuild.

The profile, the sidecar and the machine identity live in :mod:`lsdseg.export.trt_spec`, the
equivalent ``trtexec`` build (for Jetson users who build on the device) in
:mod:`lsdseg.export.trtexec`; both are re-exported here, so ``lsdseg.export.trt`` stays the one
import for TensorRT engines. TensorRT is imported only inside the functions that need it;
without it they raise ``TensorRT is not installed: ...`` with the install hint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lsdseg.files import write_bytes_atomic

from .onnx import read_metadata
from .trt_spec import (
    EngineMismatch,
    Profile,
    check_sidecar,
    engine_graph,
    fp16_graph,
    gpu_info,
    graph_precision,
    keyed_timing_cache,
    machine_tag,
    make_sidecar,
    parse_range,
    read_sidecar,
    rebuild_command,
    sidecar_path,
    version3,
    write_sidecar,
)
from .trtexec import format_command, run_trtexec, trtexec_build_info, trtexec_command

__all__ = [
    "INSTALL_HINT",
    "MIN_TENSORRT",
    "EngineMismatch",
    "Profile",
    "build_engine",
    "check_sidecar",
    "engine_graph",
    "format_command",
    "fp16_graph",
    "gpu_info",
    "graph_precision",
    "keyed_timing_cache",
    "machine_tag",
    "make_sidecar",
    "network_flags",
    "parse_range",
    "read_sidecar",
    "rebuild_command",
    "require_tensorrt",
    "run_trtexec",
    "sidecar_path",
    "trtexec_build_info",
    "trtexec_command",
    "version3",
    "write_sidecar",
]

INSTALL_HINT = (
    'pip install "lsdseg[trt]" on a machine with an NVIDIA GPU (on a Jetson, TensorRT comes '
    "with JetPack)"
)
MIN_TENSORRT = 10  # the graph is opset 18; TensorRT 10.0 parses opsets 9 to 20
log = logging.getLogger(__name__)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a RuntimeError that says how to install it."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:
        raise RuntimeError(f"TensorRT is not installed: {INSTALL_HINT} ({e})") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < MIN_TENSORRT:
        raise RuntimeError(
            f"TensorRT {tensorrt.__version__} is too old: lsdseg's graphs need TensorRT "
            f"{MIN_TENSORRT} or newer (ONNX opset 18)"
        )
    return tensorrt


def network_flags(trt: Any) -> int:
    """``create_network`` flags: strongly typed (the flag is ignored, always on, in 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _attach_timing_cache(config: Any, cache_file: Path) -> None:
    """Give the builder the timing cache in ``cache_file`` (empty if there is none yet).

    Raises:
        RuntimeError: TensorRT refused even an empty cache.
    """
    blob = cache_file.read_bytes() if cache_file.is_file() else b""
    cache = config.create_timing_cache(blob)
    # ignore_mismatch=False: a cache of another TensorRT or GPU is refused, not used
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if blob:
        log.warning(
            "TensorRT refused the timing cache %s (damaged, or from another TensorRT or GPU); "
            "building with an empty one, which replaces it",
            cache_file,
        )
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, False):
            return
    raise RuntimeError(
        f"TensorRT could not attach a timing cache ({cache_file}); build without one "
        "(timing_cache=None, or no --timing-cache)"
    )


def _parser_errors(parser: Any) -> str:
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        lines.append(str(error).strip() or f"{error.code()}: {error.desc()}")
    return " | ".join(lines) or "no error was reported"


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    half: bool = True,
    workspace_gb: float = 4.0,
    profile: Profile | None = None,
    timing_cache: str | Path | None = None,
    device: int = 0,
) -> Path:
    """Build a TensorRT engine from an lsdseg ONNX graph; write it and its sidecar atomically.

    The network is strongly typed: the graph's types are the engine's. With ``half`` it is
    built from the FP16 graph (``onnx_path`` if it is one, else the copy :func:`fp16_graph`
    writes beside it).

    Args:
        onnx_path: a graph from :func:`~lsdseg.export.onnx.export_onnx`, FP32 or FP16.
        engine_path: the engine file to write (``.engine``); the sidecar goes beside it.
        half: build an FP16 engine (from the FP16 graph); False needs an FP32 graph.
        workspace_gb: the builder's workspace memory limit, GiB.
        profile: the (min, opt, max) ranges of B and K (default 1,1,4 and 1,8,16).
        timing_cache: a timing cache file name; the TensorRT version and GPU are put into it
            (:func:`keyed_timing_cache`), and that file is read if present and rewritten.
        device: the CUDA device index the engine is built for.

    Raises:
        ValueError: ``half=False`` with an FP16 graph, or a bad ``workspace_gb``.
        RuntimeError: TensorRT is missing or too old, no GPU, the parser rejected the graph
            (all its errors listed), the timing cache could not be attached, or the build
            failed.
    """
    trt = require_tensorrt()
    import torch

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    profile = profile or Profile()
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb={workspace_gb} must be > 0")
    graph = engine_graph(onnx_path, half)
    gpu = gpu_info(device)
    meta = read_metadata(graph)
    torch.cuda.set_device(device)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        raise RuntimeError(f"TensorRT's ONNX parser rejected {graph}: {_parser_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    optimisation = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes(meta).items():
        optimisation.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimisation)
    cache_file = None
    if timing_cache:
        cache_file = keyed_timing_cache(timing_cache, trt.__version__, gpu)
        log.info("TensorRT timing cache: %s", cache_file)
        _attach_timing_cache(config, cache_file)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {graph} (see its log)")
    write_bytes_atomic(engine_path, bytes(serialized))
    if cache_file is not None:
        write_bytes_atomic(cache_file, bytes(config.get_timing_cache().serialize()))
    precision = "fp16" if half else "fp32"
    write_sidecar(
        engine_path,
        make_sidecar(engine_path, graph, precision, profile, trt.__version__, gpu, workspace_gb),
    )
    return engine_path
