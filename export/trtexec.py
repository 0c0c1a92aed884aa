"""Engines built by ``trtexec``, for Jetson users who build on the device.

:func:`trtexec_command` gives the ``trtexec`` command line that builds the same engine as
:func:`lsdseg.export.trt.build_engine` (strongly typed, the same profile, workspace and timing
cache); :func:`run_trtexec` runs it and writes the sidecar from what its log names (TensorRT
version and GPU), so that the ``trt`` backend accepts the engine like one built through the
Python API.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from lsdseg.files import atomic_path

from .onnx import read_metadata
from .trt_spec import Profile, engine_graph, make_sidecar, write_sidecar


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
    graph = engine_graph(onnx_path, half)
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
