"""A standard Triton model repository for GPU clusters that run the stock Triton server.

``write_triton_repo`` lays out::

    DIR/lsdseg/config.pbtxt        platform, inputs, outputs, batching, instance groups
    DIR/lsdseg/1/model.onnx        platform onnxruntime_onnx   (or model.plan: tensorrt_plan)

The tensors are those of the exported graph (see :mod:`lsdseg.export.onnx`): inputs ``image``
(B, 3, S, S) and ``noise`` (B, K, c_m, S/f, S/f), outputs ``mean``, ``std`` (B, S, S) and
``hypotheses`` (B, K, S, S). B is Triton's batch dimension (left out of ``dims``), every other
dynamic axis is -1, and the graph's metadata (sampler settings, normalisation) is copied into
the config's ``parameters`` so a client can read how to prepare inputs from the server.

``config.pbtxt`` is written as protobuf text by hand (no protobuf needed to export); the tests
parse it with the ``model_config.proto`` schema that ``tritonclient`` ships.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["gpu", "cpu"]
PLATFORMS = {".onnx": "onnxruntime_onnx", ".plan": "tensorrt_plan", ".engine": "tensorrt_plan"}
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
# ONNX TensorProto element type -> Triton data type
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    dtype: str  # Triton data type, e.g. TYPE_FP32
    shape: tuple[int, ...]  # full shape, batch axis first; -1 where dynamic


@dataclass(frozen=True)
class GraphIO:
    """The inputs, outputs and metadata of an exported graph."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, str] = field(default_factory=dict)


def graph_io(onnx_path: str | Path) -> GraphIO:
    """Read the inputs, outputs and metadata of an ONNX graph (weights are not loaded).

    Raises:
        RuntimeError: onnx is not installed.
        ValueError: a tensor type Triton has no name for.
    """
    try:
        import onnx
    except ImportError:
        raise RuntimeError('onnx is not installed: pip install "lsdseg[onnx]"') from None
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        t = value.type.tensor_type
        if t.elem_type not in ONNX_TO_TRITON:
            raise ValueError(f"{value.name}: ONNX element type {t.elem_type} has no Triton type")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(value.name, ONNX_TO_TRITON[t.elem_type], dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(spec(v) for v in model.graph.output)
    return GraphIO(inputs, outputs, {p.key: p.value for p in model.metadata_props})


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 bytes outside printable ASCII as octal)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor(spec: TensorSpec, batched: bool) -> str:
    dims = spec.shape[1:] if batched else spec.shape
    # a (B,) tensor of a batched model (the presence score): Triton wants dims [ 1 ] and a
    # reshape to the empty shape (its model configuration docs, "Reshape")
    reshape = "" if dims else "\n    reshape: { shape: [ ] }"
    dims = dims or (1,)
    return (
        f"  {{\n    name: {_quote(spec.name)}\n    data_type: {spec.dtype}\n"
        f"    dims: [ {', '.join(str(d) for d in dims)} ]{reshape}\n  }}"
    )


def model_config(
    io: GraphIO,
    platform: str,
    name: str = "lsdseg",
    max_batch_size: int = 8,
    max_queue_delay_us: int = 1000,
    instances: int = 1,
    kind: Kind = "gpu",
) -> str:
    """The text of ``config.pbtxt`` for a graph with these inputs and outputs.

    ``max_batch_size > 0`` makes the first axis of every tensor Triton's batch axis (it must
    be dynamic in the graph) and turns on dynamic batching; 0 keeps the full shapes and
    leaves batching to the client.

    Raises:
        ValueError: a setting out of range, or a fixed batch axis with batching on.
    """
    if platform not in MODEL_FILES:
        raise ValueError(f"platform={platform!r} must be one of {', '.join(MODEL_FILES)}")
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size={max_batch_size} must be >= 0 (0: no batching)")
    if instances < 1:
        raise ValueError(f"instances={instances} must be >= 1")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us={max_queue_delay_us} must be >= 0")
    if kind not in ("gpu", "cpu"):
        raise ValueError(f"kind={kind!r} must be 'gpu' or 'cpu'")
    if platform == "tensorrt_plan" and kind != "gpu":
        raise ValueError("a TensorRT plan runs on a GPU: kind must be 'gpu'")
    batched = max_batch_size > 0
    if batched:
        for spec in io.inputs + io.outputs:
            if not spec.shape or spec.shape[0] != -1:
                raise ValueError(
                    f"{spec.name} has shape {spec.shape}: with max_batch_size > 0 its first "
                    "axis must be dynamic (export with a dynamic batch axis, or use "
                    "max_batch_size=0)"
                )
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(platform)}",
        f"max_batch_size: {max_batch_size}",
        "input [\n" + ",\n".join(_tensor(s, batched) for s in io.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(s, batched) for s in io.outputs) + "\n]",
    ]
    if batched:
        delay = f"  max_queue_delay_microseconds: {max_queue_delay_us}"
        lines.append(f"dynamic_batching {{\n{delay}\n}}")
    lines.append(
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_{kind.upper()}\n  }}\n]"
    )
    for key, value in sorted(io.metadata.items()):
        lines.append(
            f"parameters {{\n  key: {_quote(key)}\n  value {{ string_value: {_quote(value)} }}\n}}"
        )
    return "\n".join(lines) + "\n"


def _external_files(onnx_path: Path) -> list[str]:
    """Files an ONNX graph keeps its weights in (external data), relative to the graph."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    found: list[str] = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in found:
                found.append(entry.value)
    return found


def write_triton_repo(
    directory: str | Path,
    model_file: str | Path,
    io: GraphIO | None = None,
    name: str = "lsdseg",
    max_batch_size: int = 8,
    max_queue_delay_us: int = 1000,
    instances: int = 1,
    kind: Kind = "gpu",
    version: int = 1,
) -> Path:
    """Write a Triton model repository serving ``model_file``; returns the model's folder.

    Args:
        directory: the repository root (created; other models in it are left alone).
        model_file: an ONNX graph (``.onnx``) or a TensorRT engine (``.plan`` / ``.engine``).
        io: the graph's inputs and outputs; read from ``model_file`` when it is ONNX, and
            required for an engine (pass ``graph_io`` of the ONNX it was built from).
        name: the model's name on the server.
        max_batch_size, max_queue_delay_us, instances, kind: see :func:`model_config`.
        version: the version folder to write.

    Raises:
        FileNotFoundError: ``model_file`` does not exist.
        ValueError: an unknown file type, a missing ``io`` for an engine, or a bad setting.
    """
    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"model file {model_file} does not exist")
    platform = PLATFORMS.get(model_file.suffix.lower())
    if platform is None:
        raise ValueError(
            f"{model_file}: expected an ONNX graph (.onnx) or a TensorRT engine (.plan, .engine)"
        )
    if io is None:
        if platform != "onnxruntime_onnx":
            raise ValueError(
                f"{model_file} is a TensorRT engine: pass io=graph_io(<its source ONNX graph>)"
            )
        io = graph_io(model_file)
    if version < 1:
        raise ValueError(f"version={version} must be >= 1")
    text = model_config(io, platform, name, max_batch_size, max_queue_delay_us, instances, kind)
    model_dir = Path(directory) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version_dir / MODEL_FILES[platform])
    if platform == "onnxruntime_onnx":
        for location in _external_files(model_file):  # the graph finds them by relative path
            (version_dir / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_file.parent / location, version_dir / location)
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir
