"""``lsdseg.cli.console``: what the commands print through rich is shown as written."""

from __future__ import annotations

import ast
import importlib.util
import io
from pathlib import Path

import pytest
from rich.console import Console

from lsdseg.cli.console import make_console
from lsdseg.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / d for d in ("lsdseg", "cli", "export", "kernels")]


def _python_files() -> list[Path]:
    return sorted(p for d in SOURCES for p in d.rglob("*.py"))


def _install_hints() -> list[str]:
    """Every string constant of the package that tells the user to ``pip install``."""
    hints = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and "pip install" in text:
                hints.append(text)
    return hints


def _printed(console_factory, text: str) -> str:
    buffer = io.StringIO()
    console_factory(buffer).print(text)
    return buffer.getvalue()


def test_every_install_hint_prints_as_written():
    hints = _install_hints()
    extras = {"onnx", "trt", "triton", "client", "serve", "train"}
    assert {e for e in extras if any(f"lsdseg[{e}]" in h for h in hints)} == extras, hints
    for hint in hints:
        assert _printed(lambda f: make_console(file=f, soft_wrap=True), hint) == hint + "\n"
    # the test means something: rich's default console reads [onnx] as a style tag
    default = _printed(lambda f: Console(file=f, soft_wrap=True), 'pip install "lsdseg[onnx]"')
    assert "[onnx]" not in default


def test_no_command_makes_a_console_of_its_own():
    """Every console of the CLI comes from make_console (so none reads markup)."""
    offenders = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        if path.name == "console.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name == "Console":
                    offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_bench_all_names_the_extras_of_the_backends_it_skips(capsys, tiny, monkeypatch):
    find_spec = importlib.util.find_spec
    missing = {"onnxruntime", "tensorrt", "triton"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in missing else find_spec(name, *a),
    )
    argv = ["bench", "--weights", tiny, "--backend", "all", "--device", "cpu"]
    assert main([*argv, "--hypotheses", "1", "--steps", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert 'skipped onnx: ONNX Runtime is not installed: pip install "lsdseg[onnx]"' in out


@pytest.mark.parametrize("text", ["data[1]/images", "a [bold]b[/bold] c"])
def test_brackets_in_paths_survive(text):
    assert _printed(lambda f: make_console(file=f), text) == text + "\n"
