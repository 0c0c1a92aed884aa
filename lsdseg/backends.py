"""The whole-model backends, one record each: what the CLI lists, checks and refuses reads here.

Like the Ultralytics exporter's formats table, :data:`BACKENDS` is the one place a backend is
described: its name, the plugin module that registers its runner (``lsdseg.export`` for onnx
and trt, imported by name on first request so the core never imports it), the module it needs
and how to install it, whether it needs CUDA, and what it supports. The CLI's ``--backend``
choices and help, ``bench --backend all``, ``auto`` and every "backend X cannot do Y" refusal
come from it; adding a backend is one new row (and its runner's registration).

How a runner is built is :mod:`lsdseg.runners`' registry (``register_runner``); what a runner
is called with is :class:`Runner`, here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

AUTO = "auto"
# what --backend means when it is not given, in every command that runs the model (segment,
# evaluate, serve; bench marks the row auto picks)
DEFAULT = AUTO
# fp32, or fp16 / bf16 autocast on CUDA for the backends that take it (lsdseg.accel); kept
# here, free of torch, so that building the CLI parser imports no torch
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


class Runner(Protocol):
    """What a backend must provide: normalised images + initial noise -> probabilities.

    It returns the per-hypothesis probabilities (B, K, S, S), if it can the clean latents
    (B, K, c_m, S/f, S/f) that the next frame of a video can warm-start from (else None), and
    the presence score (B,), the probability that each frame holds a polyp.
    ``start`` (a timestep) asks for a warm start: ``noise`` is then a latent noised to it.
    """

    name: str

    def __call__(
        self,
        x: torch.Tensor,  # (B, 3, S, S) normalised
        noise: torch.Tensor,  # (B, K, c_m, S/f, S/f)
        steps: int,
        eta: float,
        generator: torch.Generator | None,
        start: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]: ...


@dataclass(frozen=True)
class Backend:
    """What one whole-model backend is, needs and can do."""

    name: str  # the --backend / backend= name
    summary: str  # a few words for --help
    plugin: str | None = None  # module that registers the runner when imported (None: the core)
    requires: str | None = None  # the module it cannot run without (importlib.util.find_spec)
    install: str | None = None  # how to get ``requires``: the pip command with its extra
    missing: str | None = None  # how ``requires`` is called in messages
    needs_cuda: bool = False  # runs only on an NVIDIA GPU
    timed_on_cpu: bool = True  # bench times it on a CPU (triton's CPU interpreter: tests only)
    eta: bool = True  # samples with eta > 0 (per-step noise)
    warm_start: bool = True  # returns latents and takes warm starts (segment --temporal)
    imgsz: bool = True  # runs at another input size than its checkpoint's (--imgsz)
    cuda_graph: bool = True  # whole-frame CUDA graphs and fp16/bf16 autocast (lsdseg.accel)
    own_precision: str = ""  # what precision it runs instead, where it has one of its own
    own_graph: str = ""  # how it replays graphs of its own, where it does
    # auto's preference on a CPU / a CUDA device (higher first; 0: auto never picks it). On a
    # CPU the exported graph on ONNX Runtime was faster than torch (45 vs 56 ms per default
    # call on a 2-core AMD EPYC, 53 vs 64 ms on an Intel Xeon: benchmarks/RESULTS.md); trt
    # runs FP16 engines by default, a precision auto does not choose for the user
    auto_cpu: int = 0
    auto_cuda: int = 0

    def installed(self) -> bool:
        """Whether the module it needs can be imported here (nothing is imported)."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def problem(self, device: torch.device, timing: bool = False) -> str | None:
        """None when it can run on ``device`` here, else the reason it cannot.

        ``timing``: for ``bench``, which does not time a CPU interpreter.
        """
        if (self.needs_cuda or (timing and not self.timed_on_cpu)) and device.type != "cuda":
            why = "" if self.needs_cuda else " (the CPU interpreter is for tests, not timing)"
            return f"needs a CUDA device{why}"
        if not self.installed():
            return f"{self.missing}: {self.install}"
        return None

    def available(self, device: torch.device) -> bool:
        """Whether it can run on ``device`` here."""
        return self.problem(device) is None


# what the exported graph (one ONNX graph, deterministic DDIM from pure noise, at the size it
# was exported at) cannot do, whatever runs it
_EXPORTED = {"eta": False, "warm_start": False, "imgsz": False, "cuda_graph": False}

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "PyTorch", auto_cpu=1, auto_cuda=1),
        Backend(
            "triton",
            "PyTorch with lsdseg's Triton kernels",
            requires="triton",
            install='pip install "lsdseg[triton]"',
            missing="Triton is not installed",
            timed_on_cpu=False,
            auto_cuda=2,
        ),
        Backend(
            "onnx",
            "the exported graph on ONNX Runtime",
            plugin="lsdseg.export",
            requires="onnxruntime",
            install='pip install "lsdseg[onnx]"',
            missing="ONNX Runtime is not installed",
            auto_cpu=2,
            own_precision="the onnx backend runs the FP32 graph; an FP16 one: lsdseg export "
            "--onnx --half",
            **_EXPORTED,
        ),
        Backend(
            "trt",
            "TensorRT engines",
            plugin="lsdseg.export",
            requires="tensorrt",
            install='pip install "lsdseg[trt]" on a machine with an NVIDIA GPU',
            missing="TensorRT is not installed",
            needs_cuda=True,
            timed_on_cpu=False,
            own_precision="the trt backend runs its engines' precision, FP16 by default",
            own_graph="the trt backend replays CUDA graphs of its own",
            **_EXPORTED,
        ),
    )
}


def names() -> list[str]:
    """Every backend name, in the table's order."""
    return list(BACKENDS)


def choices() -> list[str]:
    """What ``--backend`` takes: ``auto`` and every backend."""
    return [AUTO, *BACKENDS]


def get(name: str) -> Backend:
    """The record of backend ``name``.

    Raises:
        ValueError: an unknown name (the valid ones are listed).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def able(feature: str) -> list[str]:
    """The backends that support ``feature`` (a boolean field: eta, warm_start, imgsz, ...)."""
    return [b.name for b in BACKENDS.values() if getattr(b, feature)]


def spoken(items: list[str], conj: str = "and") -> str:
    """``torch and triton``; ``torch, triton or onnx``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conj} {items[-1]}"


def plugins() -> dict[str, tuple[str, str]]:
    """name -> (plugin module, install hint) for the backends a plugin registers."""
    return {b.name: (b.plugin, b.install or "") for b in BACKENDS.values() if b.plugin}


def _auto_rank(b: Backend, device_type: str) -> int:
    return b.auto_cuda if device_type == "cuda" else b.auto_cpu


def auto_order(device_type: str) -> list[str]:
    """The backends ``auto`` considers on a ``cpu`` or ``cuda`` device, preferred first."""
    ranked = [b for b in BACKENDS.values() if _auto_rank(b, device_type) > 0]
    return [b.name for b in sorted(ranked, key=lambda b: -_auto_rank(b, device_type))]


def resolve_backend(name: str, device: torch.device, needs: tuple[str, ...] = ()) -> str:
    """The backend ``name`` means on ``device``: ``auto`` is the preferred backend of
    :func:`auto_order` that is installed, runs on the device and supports every feature in
    ``needs`` (fields of :class:`Backend`: ``eta``, ``warm_start``, ``imgsz``,
    ``cuda_graph``); torch when none does. Any other name is returned as given.
    """
    if name != AUTO:
        return name
    for candidate in auto_order(device.type):
        b = BACKENDS[candidate]
        if b.available(device) and all(getattr(b, f) for f in needs):
            return candidate
    return "torch"


def needs(
    eta: float | None = 0.0,
    warm_start: bool = False,
    imgsz: bool = False,
    cuda_graph: bool = False,
    precision: str = "fp32",
) -> tuple[str, ...]:
    """The features (:class:`Backend` fields) a run with these options needs from its backend,
    for :func:`resolve_backend`."""
    wanted = {
        "eta": bool(eta),
        "warm_start": warm_start,
        "imgsz": imgsz,
        "cuda_graph": cuda_graph or precision != "fp32",
    }
    return tuple(k for k, v in wanted.items() if v)


def auto_help() -> str:
    """``auto (the default): on a CPU onnx when onnxruntime is installed, else torch; ...``."""
    parts = []
    for device_type, where in (("cpu", "on a CPU"), ("cuda", "on CUDA")):
        order = auto_order(device_type)
        named = [f"{n} when {BACKENDS[n].requires} is installed" for n in order[:-1]]
        parts.append(f"{where} {', else '.join([*named, order[-1]])}")
    return f"auto (the default): {'; '.join(parts)}; passing over one that cannot do what was asked"


def help_text() -> str:
    """The ``--backend`` help: ``auto`` and each backend with what it is."""
    rows = "; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values())
    return f"{auto_help()}; {rows}"


def refuse_call(name: str, eta: float, warm: bool) -> None:
    """Refuse a call that backend ``name`` cannot make: eta > 0, or a warm start.

    Raises:
        ValueError: the message names the backend and what to use instead.
    """
    b = get(name)
    if eta != 0 and not b.eta:
        raise ValueError(
            f"eta={eta}: the {name} backend runs the exported deterministic DDIM graph "
            f"(eta = 0); use eta 0, or the {spoken(able('eta'), 'or')} backend for eta > 0"
        )
    if warm and not b.warm_start:
        raise ValueError(
            f"warm starts need the {spoken(able('warm_start'), 'or')} backend: the {name} "
            "backend's graph always starts from pure noise"
        )
