"""Registries filled by optional packages that are imported by name on first request.

Both :mod:`lsdseg.ops` (fused-op backends) and :mod:`lsdseg.runners` (whole-model backends)
keep a registry; some entries live in plugin packages (``lsdseg.kernels``, ``lsdseg.export``)
that register themselves when imported, so the core never imports them up front.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

T = TypeVar("T")


def lookup(name: str, registry: dict[str, T], plugins: dict[str, tuple[str, str]], kind: str) -> T:
    """The registry entry ``name``, importing its plugin package first if it has one.

    Args:
        name: the entry requested.
        registry: name -> entry, filled by the core and by plugins as they are imported.
        plugins: name -> (module that registers it, how to install that module).
        kind: what an entry is, for messages ("backend", "ops backend").

    Raises:
        RuntimeError: the plugin cannot be imported (the message says how to install it).
        ValueError: the name is unknown (the valid names are listed).
    """
    if name not in registry and name in plugins:
        module, install = plugins[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise RuntimeError(f"{kind} {name!r} is not available ({e}): {install}") from None
    if name not in registry:
        raise ValueError(
            f"unknown {kind} {name!r}; choose one of {sorted(set(registry) | set(plugins))}"
        )
    return registry[name]
