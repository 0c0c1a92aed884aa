"""Checks an exported graph must pass before it is written.

- ``onnx.checker`` with ``full_check=True`` and strict shape inference with type checks;
- the interface of DESIGN.md: input and output names (:data:`INPUT_NAMES`,
  :data:`OUTPUT_NAMES`, defined here), float32 types, ranks, the static sizes and B, K as named
  dynamic dimensions;
- TensorRT's ONNX parser: the opset in TensorRT 10's range, the default domain only, every
  operator in :data:`TRT_OPS`, and the documented restrictions of the ones we use.

:data:`TRT_OPS` lists operators that onnx-tensorrt's ``docs/operators.md`` marks supported
("Y") for TensorRT 10.0, which parses opsets 9 to 20: the ones our graphs contain plus close
relatives an exporter may emit for the same layers. A graph with anything else is refused here
rather than by ``trtexec`` on a Jetson.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The graph's interface (DESIGN.md): the inputs and outputs of LatentSegmenter.forward, by name.
INPUT_NAMES = ("image", "noise")
OUTPUT_NAMES = ("mean", "std", "hypotheses", "score")

TRT_OPSETS = (9, 20)
TRT_OPS = frozenset(
    {
        # arithmetic and activations
        "Abs", "Add", "Clip", "Cos", "Div", "Erf", "Exp", "Log", "Max", "Min", "Mul", "Neg",
        "Pow", "Reciprocal", "Relu", "Sigmoid", "Sin", "Sqrt", "Sub", "Tanh", "Where", "Equal",
        # layers
        "Conv", "ConvTranspose", "Gemm", "MatMul", "InstanceNormalization", "Softmax",
        "Resize", "ReduceMean", "ReduceSum", "ReduceMax",
        # shapes and data movement
        "Cast", "Concat", "Constant", "ConstantOfShape", "Expand", "Flatten", "Gather",
        "Identity", "Range", "Reshape", "Shape", "Slice", "Split", "Squeeze", "Tile",
        "Transpose", "Unsqueeze",
    }
)  # fmt: skip
# Resize restrictions in docs/operators.md
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
# ops whose ``axes`` input TensorRT requires to be a build-time constant
AXES_INPUT = {"ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "Squeeze": 1, "Unsqueeze": 1}


class GraphError(ValueError):
    """An exported graph that is invalid, off-interface, or not parseable by TensorRT."""


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _dims(value_info: Any) -> list[int | str]:
    """Static sizes as ints, dynamic ones by name (``"?"`` when unnamed)."""
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value_info.type.tensor_type.shape.dim
    ]


def interface_problems(proto: Any) -> list[str]:
    """Differences between the graph's inputs/outputs and the interface of DESIGN.md."""
    import onnx

    meta = {p.key: p.value for p in proto.metadata_props}
    problems = []
    inputs = list(proto.graph.input)
    outputs = list(proto.graph.output)
    if tuple(i.name for i in inputs) != INPUT_NAMES:
        problems.append(f"inputs {[i.name for i in inputs]}, expected {list(INPUT_NAMES)}")
    if tuple(o.name for o in outputs) != OUTPUT_NAMES:
        problems.append(f"outputs {[o.name for o in outputs]}, expected {list(OUTPUT_NAMES)}")
    if problems:
        return problems
    try:
        s = int(meta["image_size"])
        c = int(meta["latent_channels"])
        n = s // int(meta["latent_factor"])
    except (KeyError, ValueError):
        return ["metadata lacks image_size, latent_channels or latent_factor"]
    expected: dict[str, list[int | str]] = {
        "image": ["B", 3, s, s],
        "noise": ["B", "K", c, n, n],
        "mean": ["B", s, s],
        "std": ["B", s, s],
        "hypotheses": ["B", "K", s, s],
        "score": ["B"],
    }
    for v in inputs + outputs:
        if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"{v.name} is not float32")
        if _dims(v) != expected[v.name]:
            problems.append(f"{v.name} has shape {_dims(v)}, expected {expected[v.name]}")
    return problems


def tensorrt_problems(proto: Any) -> list[str]:
    """Why TensorRT 10's ONNX parser would reject the graph (empty: it would not)."""
    problems = []
    for opset in proto.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            problems.append(f"operator domain {opset.domain!r} (TensorRT parses only ai.onnx)")
        elif not TRT_OPSETS[0] <= opset.version <= TRT_OPSETS[1]:
            problems.append(f"opset {opset.version} is outside TensorRT 10's range {TRT_OPSETS}")
    constants = {i.name for i in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    unsupported = sorted({n.op_type for n in proto.graph.node} - TRT_OPS)
    if unsupported:
        problems.append(f"operators TensorRT's parser does not support: {unsupported}")
    for node in proto.graph.node:
        where = f"{node.op_type} {node.name!r}"
        if node.op_type == "Resize":
            mode = _attr(node, "mode", b"nearest").decode()
            coords = _attr(node, "coordinate_transformation_mode", b"half_pixel").decode()
            if mode not in RESIZE_MODES:
                problems.append(f"{where}: mode {mode!r} (TensorRT: {sorted(RESIZE_MODES)})")
            if coords not in RESIZE_COORDINATES:
                problems.append(f"{where}: coordinate_transformation_mode {coords!r}")
            if _attr(node, "antialias", 0):
                problems.append(f"{where}: antialias is not supported")
        index = AXES_INPUT.get(node.op_type)
        axes = node.input[index] if index is not None and len(node.input) > index else ""
        if axes and axes not in constants:
            problems.append(f"{where}: axes must be a constant for TensorRT")
    return problems


def check_graph(model: Any) -> None:
    """Run every check on an ``onnx.ModelProto`` (or a path to one).

    Raises:
        GraphError: the checker, shape inference or a check failed (all problems listed).
    """
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, str | Path) else model
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise GraphError(f"the exported graph is invalid: {e}") from None
    problems = interface_problems(proto) + tensorrt_problems(proto)
    if problems:
        raise GraphError("the exported graph fails its checks: " + "; ".join(problems))
