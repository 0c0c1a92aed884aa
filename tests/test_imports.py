"""Imports point one way (DESIGN.md): the core imports none of kernels, export, cli.

The rule is checked statically (every import statement of every file, parsed with ``ast``), at
run time (importing the whole core loads none of the plugin packages), and on the installed
distribution (no bare ``cli``/``export``/``kernels`` top-level package).
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("kernels", "export", "cli")


def _imported_modules(source: str, package: str) -> list[str]:
    """Absolute names of everything a module imports; ``package`` resolves relative imports.

    ``from lsdseg import cli`` yields ``lsdseg.cli`` as well as ``lsdseg``, so importing a
    submodule through its parent is caught too.
    """
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def _forbidden(names: list[str], banned: tuple[str, ...]) -> list[str]:
    """Names equal to, or inside, ``lsdseg.<banned>`` or a bare ``<banned>`` package."""
    prefixes = [f"lsdseg.{b}" for b in banned] + list(banned)
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


def _violations(folder: Path, package: str, banned: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for file in sorted(folder.rglob("*.py")):
        rel = file.relative_to(folder).with_suffix("").parts
        pkg = ".".join((package, *rel[:-1]))  # the package that holds this file
        bad = _forbidden(_imported_modules(file.read_text(), pkg), banned)
        if bad:
            found[str(file.relative_to(ROOT))] = bad
    return found


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import lsdseg.kernels", True),
        ("from lsdseg.export.onnx import export_onnx", True),
        ("from lsdseg import cli", True),
        ("from . import kernels", True),
        ("from .cli.main import main", True),
        ("import cli", True),
        ("from export import runtime", True),
        ("def f():\n    import lsdseg.kernels.gn", True),
        ("import lsdseg.ops", False),
        ("from lsdseg import checkpoint, config", False),
        ("from lsdseg.config import export_defaults", False),
        ("import clickhouse", False),
        ("importlib.import_module('lsdseg.export')", False),  # by name on request: allowed
    ],
)
def test_the_checker_itself(source: str, caught: bool) -> None:
    assert bool(_forbidden(_imported_modules(source, "lsdseg"), PLUGINS)) == caught


def test_core_imports_no_plugin_package() -> None:
    files = list((ROOT / "lsdseg").rglob("*.py"))
    assert len(files) > 5
    assert _violations(ROOT / "lsdseg", "lsdseg", PLUGINS) == {}


@pytest.mark.parametrize("folder", ["kernels", "export"])
def test_kernels_and_export_do_not_import_the_cli(folder: str) -> None:
    if not list((ROOT / folder).rglob("*.py")):
        pytest.skip(f"{folder}/ has no Python files yet")
    assert _violations(ROOT / folder, f"lsdseg.{folder}", ("cli",)) == {}


def test_importing_the_core_loads_no_plugin() -> None:
    core = sorted(
        f"lsdseg.{p.stem}" for p in (ROOT / "lsdseg").glob("*.py") if p.stem != "__init__"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'cli', 'export', 'kernels'}\n"
        "             or m.startswith(('lsdseg.cli', 'lsdseg.export', 'lsdseg.kernels')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def _installed_distribution() -> importlib.metadata.Distribution:
    """The installed lsdseg (dist-info in site-packages), not an egg-info of a source tree."""
    try:
        dists = [
            d
            for d in importlib.metadata.distributions(name="lsdseg")
            if str(getattr(d, "_path", "")).endswith(".dist-info")
        ]
    except Exception:  # pragma: no cover - very old importlib.metadata
        dists = []
    if not dists:
        pytest.skip("lsdseg is not installed as a distribution (pip install -e .)")
    return dists[0]


def test_installed_top_level_packages_are_namespaced() -> None:
    dist = _installed_distribution()
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        assert set(top_level.split()) == {"lsdseg"}
    # a regular install lists every installed file; none may live in a bare plugin package
    roots = {
        Path(str(f)).parts[0]
        for f in dist.files or []
        if str(f).endswith(".py") and not str(f).startswith("..")
    }
    assert not roots & set(PLUGINS)
    # an editable install maps module names to folders: every name must be under lsdseg
    for ep in dist.entry_points:
        assert ep.value.split(":")[0].split(".")[0] == "lsdseg", ep
    finders = [
        m
        for m in sys.modules.values()
        if m is not None and getattr(m, "__name__", "").startswith("__editable___lsdseg")
    ]
    for finder in finders:
        mapping = getattr(finder, "MAPPING", {})
        assert all(name == "lsdseg" or name.startswith("lsdseg.") for name in mapping), mapping
        for plugin in PLUGINS:
            assert f"lsdseg.{plugin}" in mapping, mapping
    if top_level is None and not finders and not dist.files:
        pytest.skip("the installed metadata does not say which packages it installs")


def test_every_package_of_the_source_tree_is_declared_for_installation() -> None:
    # an undeclared sub-package works in an editable install and is missing from the wheel
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    dirs = config["package-dir"]  # installed name -> folder
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    # data-only packages (the bundled checkpoint): declared so setuptools ships their package
    # data without a warning; they hold no Python
    data = config["package-data"]
    data_only = {p for p in declared - found if any(q.startswith(p) for q in data if q != "lsdseg")}
    for package in data_only:
        folder = ROOT / package.replace(".", "/")
        assert folder.is_dir() and not list(folder.glob("*.py")), package
    found |= data_only
    assert found == declared, (
        f"undeclared {sorted(found - declared)}, stale {sorted(declared - found)}"
    )
