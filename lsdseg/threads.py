"""CPU threads that share the machine: waiting threads sleep instead of spinning.

A video tool never has the CPU to itself (decoding, encoding, the display, the endoscopy
software around it). OpenMP's default lets torch's idle intra-op threads spin for a while
before they sleep, and spinning threads fight the other programs for the cores: on a 2-core
AMD EPYC VM one lsdseg process went from 60 ms a frame alone to 194 ms beside one busy program,
and two lsdseg processes took 338-342 ms each; with ``OMP_WAIT_POLICY=PASSIVE`` the same
process held 89 ms beside the busy program and 87-91 ms for two processes (the fair share is
about 120). So lsdseg chooses passive waiting, and keeps torch's thread count (one per physical
core), which degrades fairly once nobody spins.

OpenMP reads its environment once, when torch's OpenMP runtime starts (``import torch``), so
:func:`apply_defaults` runs from ``lsdseg/__init__.py``, before any lsdseg module imports
torch. A program that imported torch before lsdseg keeps the policy it started with.

Every default yields to the user's own environment: ``OMP_WAIT_POLICY=ACTIVE`` (spin, for a
machine that runs nothing else), ``OMP_NUM_THREADS`` (torch's thread count). ONNX Runtime
follows the same wait policy (:func:`ort_spinning`): its intra-op threads spin only when
``OMP_WAIT_POLICY`` is ``ACTIVE`` or ``LSDSEG_ORT_SPINNING=1``. This module imports no torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# the environment lsdseg sets when the user's does not: OpenMP's threads sleep when idle
DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
ORT_SPINNING_ENV = "LSDSEG_ORT_SPINNING"


def apply_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each of :data:`DEFAULTS` that ``environ`` (``os.environ``) does not set.

    Returns:
        What was set (empty when the user set everything, or when torch was already imported
        and the OpenMP runtime has read its environment: nothing would change then).
    """
    env = os.environ if environ is None else environ
    if environ is None and "torch" in sys.modules:
        return {}
    added = {k: v for k, v in DEFAULTS.items() if not env.get(k)}
    env.update(added)
    return added


def ort_spinning(environ: MutableMapping[str, str] | None = None) -> str:
    """``"1"`` when ONNX Runtime's intra-op threads may spin between ops, else ``"0"``.

    ``LSDSEG_ORT_SPINNING`` (``0`` or ``1``) decides when set; otherwise they spin only when
    ``OMP_WAIT_POLICY`` is ``ACTIVE``, as torch's OpenMP threads do.

    Raises:
        ValueError: ``LSDSEG_ORT_SPINNING`` is neither 0 nor 1.
    """
    env = os.environ if environ is None else environ
    value = env.get(ORT_SPINNING_ENV)
    if value is None:
        return "1" if env.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE" else "0"
    if value not in ("0", "1"):
        raise ValueError(f"{ORT_SPINNING_ENV}={value!r} must be 0 or 1")
    return value
