"""``lsdseg.cli.main``: the parser's "did you mean" suggestions, help texts and defaults."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys

import pytest
import torch

import lsdseg
from lsdseg.cli.main import build_parser, main


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        # the option of another sub-command is not suggested: segment has no --save-vis
        (["segment", "x", "--save-vis"], "(did you mean --save-masks?)"),
        (["evaluate", "--data", "d", "--hypothesis", "4"], "(did you mean --hypotheses?)"),
        (["segment", "x", "--hypotheses=3", "--sead", "1"], "(did you mean --seed?)"),
        (["segment", "x", "-v"], "(-v is an option of lsdseg itself: put it before the command)"),
        (["val", "--data", "d"], "(did you mean 'evaluate'?)"),
        (["predict", "x"], "(did you mean 'segment'?)"),
        (["benchmark"], "(did you mean 'bench'?)"),
        (["segmnet", "x"], "(did you mean 'segment'?)"),
        (["segment", "x", "--backend", "onx"], "(did you mean 'onnx'?)"),
    ],
)
def test_suggestions(capsys, argv, hint):
    err = usage_error(capsys, argv)
    assert err.rstrip().endswith(hint), err


def test_unknown_options_name_their_sub_command_and_suggest_only_its_options(capsys):
    err = usage_error(capsys, ["evaluate", "--data", "d", "-k", "2"])
    # evaluate has no -k (segment's alias of --hypotheses): nothing close to suggest
    assert err == "lsdseg evaluate: error: unrecognized arguments: -k 2\n"


def test_export_format_names_of_other_tools(capsys):
    assert main(["export", "--format", "engine"]) == 1
    err = capsys.readouterr().err
    assert err.rstrip().endswith("choose one of onnx, trt (did you mean 'trt'?)"), err


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _options() -> list[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    return [
        (name, sub, action)
        for name, sub in _subcommands().items()
        for action in sub._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def test_every_option_has_help_and_shows_its_default():
    missing, hidden = [], []
    for name, sub, action in _options():
        flag = f"{name} {action.option_strings[0]}"
        if not action.help:
            missing.append(flag)
            continue
        shown = sub._get_formatter()._expand_help(action)  # the text --help prints
        default = action.default
        values = {str(default)} | ({f"{default:g}"} if isinstance(default, float) else set())
        if default not in (None, False, "", []) and not (
            "default" in shown and any(v in shown for v in values)
        ):
            hidden.append(f"{flag}={default!r}: {shown}")
    assert missing == [] and hidden == []


def test_help_of_a_command_lists_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("diffusion-stage epochs (default: 60)", "(default: 16)", "(default: 0.0005)"):
        assert fragment in text


def test_device_options_take_the_same_values_with_the_same_default():
    for name, _, action in _options():
        if action.dest == "device":
            assert action.default == "auto", name
            assert "cpu, cuda, cuda:N or auto" in action.help, name
    assert inspect.signature(lsdseg.load).parameters["device"].default == "auto"


def test_export_device_names_a_cuda_device(capsys, tiny, monkeypatch):
    import lsdseg.export.trt
    from lsdseg.cli.errors import UserError
    from lsdseg.cli.export_cmd import engine_device

    with pytest.raises(UserError, match="--device cpu: TensorRT engines are built on a CUDA GPU"):
        engine_device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="torch sees none here"):
            engine_device("auto")
    else:
        assert engine_device("cuda") == 0 and engine_device("auto") == 0
    # refused before the (slow) ONNX export, in one line (TensorRT or not)
    monkeypatch.setattr(lsdseg.export.trt, "require_tensorrt", lambda: None)
    assert main(["export", "--trt", "--device", "cpu", "--weights", tiny]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lsdseg export: error: --device cpu:") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "x", "--seed", str(2**70)], f"{2**70} must be between 0 and 2**63 - 1, or -1"),
        (["segment", "x", "--seed", "-2"], "-2 must be between 0 and 2**63 - 1, or -1 for a new"),
        (["evaluate", "--data", "d", "--seed", "-1"], "-1 must be between 0 and 2**63 - 1\n"),
        (["bench", "--seed", str(2**63)], f"{2**63} must be between 0 and 2**63 - 1\n"),
        (
            ["train", "--data", "d", "--seed", str(2**32)],
            f"{2**32} must be between 0 and 2**32 - 1",
        ),
        (["segment", "x", "--seed", "1e3"], "argument --seed: '1e3' is not an integer"),
    ],
)
def test_seed_out_of_range_is_one_line(capsys, argv, message):
    err = usage_error(capsys, argv)
    assert f"error: argument --seed: {message.split('argument --seed: ')[-1]}" in err


@pytest.mark.parametrize(("module", "extra"), [("onnxscript", "onnx"), ("onnx", "onnx")])
def test_export_without_its_packages_is_one_line_before_any_work(
    capsys, tiny, tmp_path, monkeypatch, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    out = tmp_path / "export"
    assert main(["export", "--onnx", "--weights", tiny, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"needs {module}" in err and f'pip install "lsdseg[{extra}]"' in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("onnxscript", 'onnxscript is not installed: pip install "lsdseg[onnx]"'),
        ("tensorrt.plugin", 'tensorrt is not installed: pip install "lsdseg[trt]"'),
        ("tritonclient.http", 'tritonclient is not installed: pip install "lsdseg[client]"'),
    ],
)
def test_a_missing_optional_module_names_its_extra(capsys, tiny, monkeypatch, name, expected):
    from lsdseg.cli import bench_cmd

    def run(args):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(bench_cmd, "run", run)
    assert main(["bench", "--weights", tiny]) == 1
    assert capsys.readouterr().err == f"lsdseg bench: error: {expected}\n"


def test_verbose_shows_what_was_loaded_and_the_export_notice_is_information(
    caplog, capsys, tiny, tmp_path, monkeypatch
):
    import logging

    import cv2
    import numpy as np

    monkeypatch.setenv("LSDSEG_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((40, 48, 3), 90, np.uint8))
    argv = ["segment", str(image), "--weights", tiny, "--project", str(tmp_path / "runs")]
    plain = logging.getLogger("lsdseg").getEffectiveLevel
    assert main([*argv, "--backend", "torch"]) == 0
    assert plain() >= logging.WARNING  # by default lsdseg's INFO lines stay quiet...
    assert main(["-v", *argv, "--backend", "torch"]) == 0
    loaded = [r for r in caplog.records if r.name == "lsdseg.segmenter"]
    assert [r.levelno for r in loaded] == [logging.INFO]  # ...and -v adds them: one, from -v
    assert "loaded" in loaded[0].getMessage()
    caplog.clear()
    if importlib.util.find_spec("onnxruntime") is None:
        return
    assert main([*argv, "--backend", "onnx"]) == 0  # the first run exports: said, as INFO
    notice = [r for r in caplog.records if "exporting the ONNX graph" in r.getMessage()]
    assert [r.levelno for r in notice] == [logging.INFO]
    assert logging.getLogger("lsdseg.export.cache").isEnabledFor(logging.INFO)  # shown anyway


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["segment", "--help"], []])
def test_help_or_version_into_a_full_device_fails(tmp_path, argv):
    import stat
    import subprocess
    import sys

    full = tmp_path / "full"  # a private node of the full device, in a temporary folder
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
        with open(full, "w") as f:  # a nodev mount cannot open device nodes
            f.write("")
    except OSError as e:
        pytest.skip(f"cannot make or open a device node here: {e}")
    with open(full, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "lsdseg.cli.main", *argv],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr == "lsdseg: error: cannot write the output (No space left on device)\n"
