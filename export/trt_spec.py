"""What a TensorRT engine is built from and for, and the sidecar that records it.

An engine is tied to the graph it was built from (its hash, metadata and precision: an FP16
engine is built from the FP16 graph, :func:`fp16_graph`), the optimisation :class:`Profile` of
B and K, and the machine: the TensorRT release and the GPU model. :func:`make_sidecar` writes
all of it to ``<engine>.json`` beside the engine, and :func:`check_sidecar` refuses an engine
built for another GPU or TensorRT (or replaced since) with a message that says to rebuild.
:func:`machine_tag` is the same identity in a file name (engine and timing cache names).

Both build paths use this module: the TensorRT Python API (:mod:`lsdseg.export.trt`) and
``trtexec`` (:mod:`lsdseg.export.trtexec`). Nothing here imports TensorRT.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsdseg.files import sha256_file, write_bytes_atomic
from lsdseg.version import __version__

from .onnx import convert_fp16, read_metadata


class EngineMismatch(RuntimeError):
    """An engine (or its sidecar) that does not belong to this GPU, TensorRT or checkpoint."""


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


def engine_graph(onnx_path: str | Path, half: bool) -> Path:
    """The graph an engine is built from: :func:`fp16_graph` with ``half``, else ``onnx_path``.

    Engines are strongly typed (the graph's types are the engine's), so ``half=False`` with an
    FP16 graph is a ValueError that says what to pass instead.
    """
    if not half and graph_precision(onnx_path) == "fp16":
        raise ValueError(
            f"{onnx_path} is an FP16 graph and engines are strongly typed: pass half=True "
            "(--half) for an FP16 engine, or the FP32 graph for an FP32 one"
        )
    return fp16_graph(onnx_path) if half else Path(onnx_path)


def fp16_graph(onnx_path: str | Path) -> Path:
    """The FP16 graph an FP16 engine is built from: ``onnx_path`` itself if it is FP16, else
    an FP16 copy written beside it (``x-fp32.onnx`` -> ``x-fp16.onnx``, else ``x-fp16.onnx``),
    converted afresh each time so that it never lags behind the FP32 file."""
    onnx_path = Path(onnx_path)
    if graph_precision(onnx_path) == "fp16":
        return onnx_path
    stem = onnx_path.stem.removesuffix("-fp32")
    return convert_fp16(onnx_path, onnx_path.with_name(f"{stem}-fp16{onnx_path.suffix}"))
