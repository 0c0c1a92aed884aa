"""The backend table (lsdseg.backends) is what every CLI lists, resolves and refuses by."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util

import pytest
import torch

from lsdseg import backends
from lsdseg.accel import check_supported
from lsdseg.cli import bench_cmd
from lsdseg.cli.errors import UserError
from lsdseg.cli.main import build_parser
from lsdseg.runners import runner_names

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU


def _backend_options() -> dict[str, argparse.Action]:
    """command -> its --backend action, for every sub-command that has one."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for command, p in sub.choices.items():
        for action in p._actions:
            if "--backend" in action.option_strings:
                found[command] = action
    return found


def test_every_cli_lists_the_table() -> None:
    options = _backend_options()
    assert set(options) == {"segment", "evaluate", "serve", "bench"}
    for command, action in options.items():
        for name in backends.names():
            assert name in action.help, (command, name)
        if command == "bench":  # a comma-separated list, checked by pick_backends
            assert action.choices is None
        else:
            assert list(action.choices) == ["auto", "torch", "triton", "onnx", "trt"], command
            assert "auto" in action.help
    # one default for every command that runs the model; bench times them all, auto included
    for command in ("segment", "evaluate", "serve"):
        assert options[command].default == backends.DEFAULT == "auto", command


def test_a_new_row_is_listed_everywhere(monkeypatch) -> None:
    row = dataclasses.replace(backends.BACKENDS["onnx"], name="openvino", summary="OpenVINO")
    monkeypatch.setitem(backends.BACKENDS, "openvino", row)
    for command, action in _backend_options().items():
        assert "openvino" in action.help, command
        if action.choices is not None:
            assert "openvino" in action.choices, command
    args = build_parser().parse_args(["evaluate", "--data", "d", "--backend", "openvino"])
    assert args.backend == "openvino"
    assert "openvino" in runner_names()  # its plugin module is where the registry looks
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    usable, skipped = bench_cmd.pick_backends("all", CPU)
    assert "openvino" in usable and set(skipped) == {"triton", "trt"}


def test_evaluate_takes_auto_and_refuses_an_unknown_name(capsys) -> None:
    args = build_parser().parse_args(["evaluate", "--data", "d", "--backend", "auto"])
    assert args.backend == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--data", "d", "--backend", "tensorflow"])
    assert "tensorflow" in capsys.readouterr().err


def test_auto_picks_the_fastest_installed_backend_for_the_device(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # all installed
    assert backends.resolve_backend("auto", CPU) == "onnx"  # faster than torch on a CPU
    assert backends.resolve_backend("auto", CUDA) == "triton"  # never trt: FP16 engines
    assert backends.resolve_backend("onnx", CUDA) == "onnx"  # an explicit choice passes through
    # what the exported graph cannot do passes it over, to the next in line
    for wanted in (backends.needs(eta=0.5), backends.needs(warm_start=True),
                   backends.needs(imgsz=True)):  # fmt: skip
        assert backends.resolve_backend("auto", CPU, wanted) == "torch", wanted
    assert backends.resolve_backend("auto", CUDA, backends.needs(precision="fp16")) == "triton"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # nothing installed
    assert backends.resolve_backend("auto", CPU) == "torch"
    assert backends.resolve_backend("auto", CUDA) == "torch"


def test_auto_resolves_to_onnx_on_this_cpu_when_onnxruntime_is_installed() -> None:
    pytest.importorskip("onnxruntime")
    assert backends.resolve_backend("auto", CPU) == "onnx"
    assert backends.auto_order("cpu") == ["onnx", "torch"]
    assert bench_cmd.pick_backends("auto,torch", CPU) == (["onnx", "torch"], {})
    help_text = backends.help_text()
    assert "on a CPU onnx when onnxruntime is installed, else torch" in help_text
    assert "on CUDA triton when triton is installed, else torch" in help_text


def test_the_ema_of_a_checkpoint_resolves_auto_to_a_backend_that_runs_it(
    monkeypatch, tiny_model
) -> None:
    """auto prefers onnx on a CPU, which exports a folder's own weights: an EMA runs in torch."""
    pytest.importorskip("onnxruntime")
    from lsdseg import compare

    monkeypatch.setattr(compare, "load_model", lambda spec, device: tiny_model)
    assert compare.load_segmenter("run/last:ema", "cpu", "auto").backend == "torch"
    with pytest.raises(ValueError, match="EMA of a last/ checkpoint"):
        compare.load_segmenter("run/last:ema", "cpu", "onnx")


def test_problems_for_timing(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert bench_cmd.backend_problem("torch", CPU) is None
    assert bench_cmd.backend_problem("triton", CPU) == (
        "needs a CUDA device (the CPU interpreter is for tests, not timing)"
    )
    assert bench_cmd.backend_problem("triton", CUDA) == (
        'Triton is not installed: pip install "lsdseg[triton]"'
    )
    assert bench_cmd.backend_problem("onnx", CPU) == (
        'ONNX Runtime is not installed: pip install "lsdseg[onnx]"'
    )
    assert bench_cmd.backend_problem("trt", CPU) == "needs a CUDA device"
    assert not backends.get("trt").available(CPU)
    assert backends.get("triton").available(CPU) is False  # not installed (patched)
    with pytest.raises(UserError, match="expected one of auto, torch, triton, onnx, trt or 'all'"):
        bench_cmd.backend_problem("tensorflow", CPU)


def test_refusals_read_the_table(monkeypatch) -> None:
    eta = r"eta=0.5: the onnx backend .* the torch or triton backend for eta > 0"
    with pytest.raises(ValueError, match=eta):
        backends.refuse_call("onnx", 0.5, False)
    with pytest.raises(ValueError, match="need the torch or triton backend: the trt backend"):
        backends.refuse_call("trt", 0.0, True)
    backends.refuse_call("torch", 0.5, True)  # torch can do both
    with pytest.raises(ValueError, match="replays CUDA graphs of its own"):
        check_supported(CUDA, "trt", True, "fp32", "--cuda-graph")
    with pytest.raises(ValueError, match=r"--half is autocast for the torch and triton backends"):
        check_supported(CUDA, "onnx", False, "fp16", "--cuda-graph", "--half")
    # a row that loses graph support is refused with the rest
    no_graph = dataclasses.replace(backends.BACKENDS["triton"], cuda_graph=False)
    monkeypatch.setitem(backends.BACKENDS, "triton", no_graph)
    with pytest.raises(ValueError, match="is for the torch backends, not triton"):
        check_supported(CUDA, "triton", True, "fp32", "--cuda-graph")


def test_segment_names_the_flags_where_the_core_names_the_argument(capsys, tiny, tmp_path) -> None:
    import cv2
    import numpy as np

    from lsdseg.cli.main import main

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    argv = ["segment", str(image), "--weights", tiny, "--device", "cpu", "--backend", "onnx"]
    assert main([*argv, "--eta", "0.5", "--project", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lsdseg segment: error: --eta 0.5: the onnx backend runs"), err
    assert "the torch or triton backend for eta > 0" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()  # refused before the model loads or exports
