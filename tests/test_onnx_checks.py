"""The graph checks (:mod:`lsdseg.export.check`) and the exporter's output naming, on small
hand-made ONNX graphs: no model is exported here (the exported graph itself is checked in
``test_onnx.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")

from lsdseg.export.check import interface_problems, tensorrt_problems  # noqa: E402
from lsdseg.export.onnx import OUTPUT_NAMES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tiny_graph(op: str = "Relu", **attrs) -> object:
    """image -> op -> mean/std/hypotheses/score, with lsdseg metadata, for the checkers."""
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 16, 16]),
        helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", "K", 4, 2, 2]),
    ]
    outputs = [
        helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["B", 16, 16]),
        helper.make_tensor_value_info("std", TensorProto.FLOAT, ["B", 16, 16]),
        helper.make_tensor_value_info("hypotheses", TensorProto.FLOAT, ["B", "K", 16, 16]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B"]),
    ]
    nodes = [helper.make_node(op, ["image"], ["mean"], name="n0", **attrs)]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(
        model, {"image_size": "16", "latent_channels": "4", "latent_factor": "8"}
    )
    return model


def test_the_checks_import_nothing_of_the_exporter():
    """export.onnx imports export.check, never the other way round (no import cycle)."""
    import ast

    nodes = list(ast.walk(ast.parse((ROOT / "export" / "check.py").read_text())))
    assert any(isinstance(n, ast.Import) for n in nodes)  # the walk sees function bodies too
    froms = [n for n in nodes if isinstance(n, ast.ImportFrom)]
    assert [n.module for n in froms if n.level or (n.module or "").startswith("lsdseg")] == []


def test_checks_catch_what_tensorrt_rejects():
    assert tensorrt_problems(_tiny_graph("Relu")) == []
    assert "NonZero" in tensorrt_problems(_tiny_graph("NonZero"))[0]
    cubic = tensorrt_problems(_tiny_graph("Resize", mode="cubic"))
    assert any("mode 'cubic'" in p for p in cubic)
    model = _tiny_graph("Relu")
    model.opset_import[0].version = 21
    assert any("opset 21" in p for p in tensorrt_problems(model))
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    assert any("com.microsoft" in p for p in tensorrt_problems(model))


def test_checks_catch_an_interface_change():
    assert interface_problems(_tiny_graph()) == []
    model = _tiny_graph()
    model.graph.input[0].name = "images"
    assert "expected ['image', 'noise']" in interface_problems(model)[0]
    model = _tiny_graph()
    model.graph.output[2].type.tensor_type.shape.dim[1].dim_value = 8  # K made static
    assert any("hypotheses has shape" in p for p in interface_problems(model))


def test_outputs_get_their_names_even_when_an_internal_value_took_one():
    """The exporter names values after ops (an internal ``aten.mean`` becomes "mean")."""
    from onnx import TensorProto, helper

    from lsdseg.export.onnx import _TRACED, _name_outputs

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [2])
    outs = [
        helper.make_tensor_value_info(f"{_TRACED}{n}", TensorProto.FLOAT, [2]) for n in OUTPUT_NAMES
    ]
    nodes = [
        helper.make_node("Relu", ["image"], ["mean"]),  # an internal value called "mean"
        helper.make_node("Sigmoid", ["mean"], [f"{_TRACED}mean"]),
        helper.make_node("Neg", ["mean"], [f"{_TRACED}std"]),
        helper.make_node("Abs", [f"{_TRACED}mean"], [f"{_TRACED}hypotheses"]),
        helper.make_node("Exp", [f"{_TRACED}mean"], [f"{_TRACED}score"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs))
    _name_outputs(model.graph)
    onnx.checker.check_model(model, full_check=True)  # single static assignment holds
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    assert [list(n.output) for n in model.graph.node] == [
        ["mean_1"],
        ["mean"],
        ["std"],
        ["hypotheses"],
        ["score"],
    ]
    assert list(model.graph.node[3].input) == ["mean"]
