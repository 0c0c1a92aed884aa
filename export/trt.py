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

:func:`trtexec_command` gives the equivalent ``trtexec`` command line for Jetson users who build
on the device. TensorRT is imported only inside the functions that need it; without it they
raise ``TensorRT is not installed: ...`` with the install hint.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsdseg.files import atomic_path, sha256_file, write_bytes_atomic
from lsdseg.version import __version__

from .onnx import convert_fp16, read_metadata

INSTALL_HINT = (
    'pip install "lsdseg[trt]" on a machine with an NVIDIA GPU (on a Jetson, TensorRT comes '
    "with JetPack)"
)
MIN_TENSORRT = 10  # the graph is opset 18; TensorRT 10.0 parses opsets 9 to 20
log = logging.getLogger(__name__)


class EngineMismatch(RuntimeError):
    """An engine (or its sidecar) that does not belong to this GPU, TensorRT or checkpoint."""


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


@dataclass(frozen=True)
class Profile:
    """The optimisation profile: (min, opt, max) of the batch B and the hypotheses K."""

    batch: tuple[int, int, int] = (1, 1, 4)
    hypotheses: tuple[int, int, int] = (1, 8, 16)

    def __post_init__(self) -> None:
        for name, (lo, opt, hi) in (("batch", self.batch), ("hypotheses", self.hypotheses)):
            if not 1 <= lo <= opt <= hi:
                raise ValueError(
                    f"{name} range {lo},{opt},{hi} must satisfy 1 <= min <= opt <= max"
                )

    def shapes(self, meta: dict[str, str]) -> dict[str, list[tuple[int, ...]]]:
        """Input name -> [min, opt, max] shapes for a graph with metadata ``meta``."""
        s, c = int(meta["image_size"]), int(meta["latent_channels"])
        n = s // int(meta["latent_factor"])
        pairs = list(zip(self.batch, self.hypotheses, strict=True))
        return {
            "image": [(b, 3, s, s) for b, _ in pairs],
            "noise": [(b, k, c, n, n) for b, k in pairs],
        }

    def admits(self, batch: int, hypotheses: int) -> bool:
        """Whether (B, K) lies inside the profile."""
        return (
            self.batch[0] <= batch <= self.batch[2]
            and self.hypotheses[0] <= hypotheses <= self.hypotheses[2]
        )


def parse_range(text: str, option: str) -> tuple[int, int, int]:
    """``"1,8,16"`` -> (1, 8, 16); one value ``"8"`` -> (8, 8, 8).

    Raises:
        ValueError: not one or three integers with 1 <= min <= opt <= max.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected MIN,OPT,MAX integers, e.g. 1,8,16") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ValueError(f"{option} {text!r}: expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX")
    return values[0], values[1], values[2]


def version3(version: str) -> str:
    """``"10.3.0.26"`` -> ``"10.3.0"``: engines are tied to a TensorRT release."""
    return ".".join(re.findall(r"\d+", str(version))[:3])


def gpu_info(device: int = 0) -> dict[str, str]:
    """Name and compute capability of a CUDA device (via torch)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT engines need a CUDA GPU, and torch sees none here")
    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def make_sidecar(
    engine: Path,
    onnx_path: Path,
    precision: str,
    profile: Profile,
    tensorrt_version: str,
    gpu: dict[str, str],
    workspace_gb: float | None = None,
) -> dict[str, Any]:
    """The JSON written beside an engine: what it was built from, for and how."""
    meta = read_metadata(onnx_path)
    return {
        "lsdseg_version": __version__,
        "engine": engine.name,
        "engine_sha256": sha256_file(engine),
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_metadata": meta,
        "tensorrt": version3(tensorrt_version),
        "gpu": gpu["gpu"],
        "compute_capability": gpu["compute_capability"],
        "precision": precision,
        "workspace_gb": workspace_gb,
        "profiles": [
            {
                name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
                for name, s in profile.shapes(meta).items()
            }
        ],
        "batch_range": list(profile.batch),
        "hypotheses_range": list(profile.hypotheses),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: Path, sidecar: dict[str, Any]) -> Path:
    """Write the sidecar of ``engine`` atomically."""
    data = (json.dumps(sidecar, indent=2) + "\n").encode()
    return write_bytes_atomic(sidecar_path(engine), data)


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """The sidecar of ``engine``.

    Raises:
        EngineMismatch: it is missing or unreadable (an engine built elsewhere).
    """
    path = sidecar_path(engine)
    rebuild = f"rebuild it on this machine with `lsdseg export --trt` (or {rebuild_command()})"
    if not path.is_file():
        raise EngineMismatch(f"engine {engine} has no sidecar {path.name}; {rebuild}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EngineMismatch(f"sidecar {path} cannot be read ({e}); {rebuild}") from None
    if not isinstance(data, dict):
        raise EngineMismatch(f"sidecar {path} is not a JSON object; {rebuild}")
    return data


def rebuild_command() -> str:
    return "`lsdseg export --trt --trtexec --run` on a Jetson"


def check_sidecar(
    sidecar: dict[str, Any],
    engine: str | Path,
    tensorrt_version: str,
    gpu: dict[str, str],
    check_hash: bool = True,
) -> None:
    """Refuse an engine built for another GPU or TensorRT, or replaced since it was built.

    Args:
        sidecar: the engine's sidecar (:func:`read_sidecar`).
        engine: the engine file.
        tensorrt_version: the TensorRT version here (``tensorrt.__version__``).
        gpu: :func:`gpu_info` of the device it would run on.
        check_hash: also compare the engine file's hash with the sidecar's.

    Raises:
        EngineMismatch: with what differs and that the engine must be rebuilt.
    """
    problems = []
    built_trt, here_trt = sidecar.get("tensorrt"), version3(tensorrt_version)
    if built_trt != here_trt:
        problems.append(f"TensorRT {built_trt} (this machine has {here_trt})")
    built_gpu = (sidecar.get("gpu"), sidecar.get("compute_capability"))
    here_gpu = (gpu["gpu"], gpu["compute_capability"])
    if built_gpu != here_gpu:
        problems.append(
            f"GPU {built_gpu[0]} (compute capability {built_gpu[1]}; this machine has "
            f"{here_gpu[0]}, {here_gpu[1]})"
        )
    if problems:
        raise EngineMismatch(
            f"engine {engine} was built for {' and '.join(problems)}: TensorRT engines only run "
            "where they were built; rebuild it on this machine with `lsdseg export --trt`"
        )
    if check_hash and sidecar.get("engine_sha256") != sha256_file(engine):
        raise EngineMismatch(
            f"engine {engine} does not match its sidecar (the file changed after it was "
            "built); rebuild it with `lsdseg export --trt`"
        )


def machine_tag(tensorrt_version: str, gpu: dict[str, str]) -> str:
    """``trt10.3.0-nvidia-h200``: the part of a cached file's name that ties it to a TensorRT
    release and a GPU model (engines and timing caches are valid only there)."""
    name = "".join(c if c.isalnum() else "-" for c in gpu["gpu"].lower())
    return f"trt{version3(tensorrt_version)}-{name}"


def keyed_timing_cache(path: str | Path, tensorrt_version: str, gpu: dict[str, str]) -> Path:
    """``timing.cache`` -> ``timing-trt10.3.0-nvidia-h200.cache``, so that machines sharing a
    cache folder never read or overwrite each other's timing caches."""
    path = Path(path)
    tag = machine_tag(tensorrt_version, gpu)
    if path.stem.endswith(tag):
        return path
    return path.with_name(f"{path.stem}-{tag}{path.suffix}")


def graph_precision(onnx_path: str | Path) -> str:
    """``"fp32"`` or ``"fp16"``, from an lsdseg graph's metadata."""
    precision = read_metadata(onnx_path).get("precision", "fp32")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"{onnx_path} has precision {precision!r}; expected fp32 or fp16")
    return precision


def fp16_graph(onnx_path: str | Path) -> Path:
    """The FP16 graph an FP16 engine is built from: ``onnx_path`` itself if it is FP16, else
    an FP16 copy written beside it (``x-fp32.onnx`` -> ``x-fp16.onnx``, else ``x-fp16.onnx``),
    converted afresh each time so that it never lags behind the FP32 file."""
    onnx_path = Path(onnx_path)
    if graph_precision(onnx_path) == "fp16":
        return onnx_path
    stem = onnx_path.stem.removesuffix("-fp32")
    return convert_fp16(onnx_path, onnx_path.with_name(f"{stem}-fp16{onnx_path.suffix}"))


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
    if not half and graph_precision(onnx_path) == "fp16":
        raise ValueError(
            f"{onnx_path} is an FP16 graph and the network is strongly typed: pass half=True "
            "(--half) for an FP16 engine, or the FP32 graph for an FP32 one"
        )
    gpu = gpu_info(device)
    graph = fp16_graph(onnx_path) if half else onnx_path
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


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    half: bool = True,
    workspace_gb: float = 4.0,
    profile: Profile | None = None,
    timing_cache: str | Path | None = None,
) -> list[str]:
    """The ``trtexec`` command that builds the same engine as :func:`build_engine`.

    Strongly typed (``--stronglyTyped``, TensorRT 10's flag; always on in 11): with ``half``
    the command reads the FP16 graph, which :func:`fp16_graph` writes beside an FP32
    ``onnx_path``. No ``--fp16``: deprecated since TensorRT 10.12, removed in 11.

    Raises:
        ValueError: ``half=False`` with an FP16 graph.
    """
    profile = profile or Profile()
    if not half and graph_precision(onnx_path) == "fp16":
        raise ValueError(
            f"{onnx_path} is an FP16 graph: pass half=True (--half), or the FP32 graph"
        )
    graph = fp16_graph(onnx_path) if half else Path(onnx_path)
    shapes = profile.shapes(read_metadata(graph))

    def spec(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items())

    command = [
        "trtexec",
        f"--onnx={graph}",
        f"--saveEngine={engine_path}",
        "--stronglyTyped",
        f"--minShapes={spec(0)}",
        f"--optShapes={spec(1)}",
        f"--maxShapes={spec(2)}",
        f"--memPoolSize=workspace:{round(workspace_gb * 1024)}",  # MiB
        "--skipInference",
    ]
    if timing_cache:
        command.append(f"--timingCacheFile={timing_cache}")
    return command


def format_command(command: list[str]) -> str:
    """A command line a shell accepts as is."""
    return shlex.join(command)


def trtexec_build_info(log: str) -> tuple[str | None, dict[str, str] | None]:
    """TensorRT version and GPU from a trtexec log (its banner and device information)."""
    version = None
    found = re.search(r"\[TensorRT v(\d+)\]", log)
    if found:  # v100300 -> 10.3.0
        number = int(found.group(1))
        version = f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    name = re.search(r"Selected Device:\s*(.+)", log)
    capability = re.search(r"Compute Capability:\s*(\d+\.\d+)", log)
    gpu = None
    if name and capability:
        gpu = {"gpu": name.group(1).strip(), "compute_capability": capability.group(1)}
    return version, gpu


def run_trtexec(
    command: list[str], engine_path: Path, onnx_path: Path, precision: str, profile: Profile
) -> Path:
    """Run a :func:`trtexec_command`, writing the engine atomically, then its sidecar (which
    records the graph the command reads: the FP16 copy for an FP16 engine, else ``onnx_path``).

    Raises:
        RuntimeError: trtexec is not on PATH, fails, or its log lacks the version and GPU.
    """
    import shutil
    import subprocess

    if shutil.which(command[0]) is None:
        raise RuntimeError(
            "trtexec is not on PATH: it ships with TensorRT (on a Jetson: "
            "/usr/src/tensorrt/bin/trtexec); add its folder to PATH"
        )
    with atomic_path(engine_path) as tmp:
        command = [f"--saveEngine={tmp}" if c.startswith("--saveEngine=") else c for c in command]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise RuntimeError(f"trtexec failed with status {done.returncode}: {tail}")
    version, gpu = trtexec_build_info(done.stdout + done.stderr)
    if version is None or gpu is None:
        raise RuntimeError(
            f"trtexec built {engine_path} but its log names no TensorRT version or GPU, so no "
            "sidecar was written and `--backend trt` will refuse the engine"
        )
    graph = next(
        (Path(c.removeprefix("--onnx=")) for c in command if c.startswith("--onnx=")), onnx_path
    )
    write_sidecar(engine_path, make_sidecar(engine_path, graph, precision, profile, version, gpu))
    return engine_path
