"""Compile every Triton kernel configuration lsdseg launches, for GPUs that are not here, and
fail on register spills or on more shared memory than the GPU has.

The kernels' host wrappers run for real on empty CPU tensors (their launch heuristics pick every
block size, warp count and flag), with a stub Triton driver that reports the target GPU and never
launches: Triton specialises and compiles each launch exactly as on that GPU, to a cubin, with
the ptxas inside its wheel. The stub then reads each cubin's registers and stack frame (spills)
with the wheel's cuobjdump, and Triton itself refuses shared memory over the stub's limit.

Launches come from:

- the model: every GroupNorm and attention call of one frame of the bundled checkpoint's
  architecture and of the default one, at K = 1, 8 and 16 hypotheses, in fp32, fp16 and bf16;
- every entry of the attention launch tables (``FP32_CONFIGS``, ``HALF_CONFIGS``);
- the kernel tests: the shape lists of ``tests/test_kernels_attention.py`` (``CASES``) and
  ``tests/test_kernels_group_norm.py`` (``SHAPES``, ``VARIANTS``), read from the files, plus
  their literal long-sequence, epilogue and split cases;
- ``benchmarks/bench_kernels.py``'s large shapes (``--bench``).

Targets: ``sm_90`` (H100, H200; 227 KiB shared memory per block) and ``sm_87`` (Jetson Orin;
163 KiB), for the model's launches and the tables on Orin. Needs no GPU and no CUDA toolkit;
run it without ``TRITON_INTERPRET`` (the interpreter has nothing to compile)::

    python scripts/compile_kernels.py [--arch 90 --arch 87] [--bench] [--no-tests] [--json F]

Exit status: 0 when every configuration compiled within the limits, 1 otherwise (each failure is
printed), 2 when this Triton cannot compile here (the reason is printed).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_LIMIT = {90: 232448, 87: 166912}  # bytes of shared memory a block may opt into
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
Launch = Callable[[], object]


@dataclasses.dataclass
class Compiled:
    """One compiled configuration and what its cubin uses."""

    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    constants: dict
    signature: dict
    registers: int = -1
    stack: int = -1  # bytes per thread: spilled registers (lsdseg's kernels have no arrays)
    local: int = -1
    shared: int = -1
    error: str = ""
    sources: list[str] = dataclasses.field(default_factory=list)

    def problems(self) -> list[str]:
        out = [self.error] if self.error else []
        if self.stack > 0 or self.local > 0:
            out.append(f"spills: {self.stack} B stack, {self.local} B local per thread")
        if self.shared > SHARED_LIMIT.get(self.arch, 0):
            out.append(f"shared memory {self.shared} B > {SHARED_LIMIT.get(self.arch)} B")
        return out


def _bin(name: str) -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def resource_usage(cubin: bytes) -> dict[str, int]:
    """``REG``, ``STACK``, ``SHARED``, ``LOCAL`` of the one function in ``cubin``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        out = subprocess.run(
            [str(_bin("cuobjdump")), "--dump-resource-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, found.groups()), strict=True))


class StubDriver:
    """A Triton driver for a GPU that is not here: compiles for ``arch``, never launches."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)
        self.compiled: dict[str, Compiled] = {}  # kernel hash -> configuration
        self.source = ""  # which launch list is running
        stub = self

        class Utils:
            def get_device_properties(self, device: int) -> dict:
                return {"max_shared_mem": SHARED_LIMIT[arch], "multiprocessor_count": 132}

            def load_binary(self, name: str, cubin: bytes, shared: int, device: int) -> tuple:
                stub._loaded(name, cubin, shared)
                return object(), object(), 0, 0, 1024  # module, function, regs, spills, threads

            def unload_module(self, module: object) -> None:
                pass

        self.utils = Utils()
        self._pending: Compiled | None = None

    def get_current_target(self) -> object:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def launcher_cls(self, src: object, metadata: object) -> Callable[..., None]:
        key = metadata.hash
        if key not in self.compiled:
            names = src.fn.arg_names
            self.compiled[key] = Compiled(
                kernel=src.name,
                arch=self.arch,
                num_warps=metadata.num_warps,
                num_stages=metadata.num_stages,
                constants={names[k[0]]: str(v) for k, v in src.constants.items()},
                signature={str(k): str(v) for k, v in src.signature.items()},
                shared=metadata.shared,
            )
        self._pending = self.compiled[key]
        self._pending.sources.append(self.source)
        return lambda *args, **kwargs: None  # the launch that never happens

    def _loaded(self, name: str, cubin: bytes, shared: int) -> None:
        entry = self._pending
        usage = resource_usage(cubin)
        entry.registers, entry.stack, entry.local = usage["REG"], usage["STACK"], usage["LOCAL"]
        entry.shared = shared


@dataclasses.dataclass
class Kernels:
    """``lsdseg.kernels`` compiled (not interpreted), with its device checks let through."""

    attention: Callable[..., torch.Tensor]
    group_norm_silu: Callable[..., torch.Tensor]


def load_kernels() -> Kernels:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter compiles nothing")
    attention = importlib.import_module("lsdseg.kernels.attention")
    group_norm = importlib.import_module("lsdseg.kernels.group_norm")
    # empty CPU tensors stand in for the GPU's: let them through the checks that refuse the
    # CPU for compiled kernels (the stub driver launches nothing)
    for module in (attention, group_norm):
        module.check_device = lambda *args, **kwargs: None
    return Kernels(attention.attention, group_norm.group_norm_silu)


# ---------------------------------------------------------------- what gets launched


def _qkv(b: int, h: int, l_q: int, l_k: int, d: int, dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.empty(b, h, n, d, dtype=dtype) for n in (l_q, l_k, l_k)]


def _norm_args(
    shape: tuple[int, ...], dtype: torch.dtype, modulation: str, channels_last: bool = False
) -> tuple:
    b, c = shape[:2]
    x = torch.empty(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, bias = torch.empty(c, dtype=dtype), torch.empty(c, dtype=dtype)
    scale, shift = torch.empty(b, 2 * c, dtype=dtype).chunk(2, dim=1)  # as ResBlock makes them
    scale = scale if modulation in ("scale", "both") else None
    shift = shift if modulation in ("shift", "both") else None
    return x, w, bias, scale, shift


def model_launches(k: Kernels) -> Iterator[tuple[str, Launch]]:
    """Every norm and attention call of a frame of the bundled and the default architecture."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_kernels import _model_calls

    from lsdseg.checkpoint import read_config
    from lsdseg.config import ModelConfig
    from lsdseg.segmenter import bundled_weights

    configs = {"default architecture": ModelConfig()}
    if (bundled_weights() / "config.json").is_file():
        configs["bundled checkpoint"] = read_config(bundled_weights())[0]
    for name, cfg in configs.items():
        for hyps in (1, 8, 16):
            norms, attns = _model_calls(cfg, hyps)
            for dtype in DTYPES:
                where = f"model ({name}, K={hyps}, {str(dtype)[6:]})"
                for n in norms:
                    mod = "both" if n["modulated"] else "none"
                    args = _norm_args(n["shape"], dtype, mod)
                    yield (
                        where,
                        lambda a=args, n=n: k.group_norm_silu(
                            a[0], a[1], a[2], n["groups"], 1e-5, a[3], a[4], n["silu"]
                        ),
                    )
                for a in attns:
                    b, h, l_q, d = a["q"]
                    qkv = _qkv(b, h, l_q, a["l_k"], d, dtype)
                    yield where, lambda t=qkv: k.attention(*t)


def _literal(path: Path, name: str) -> object:
    """The literal value assigned to ``name`` at the top of ``path``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{path} has no top-level {name} = [...]; update {Path(__file__).name}")


def test_launches(k: Kernels) -> Iterator[tuple[str, Launch]]:
    """The kernel tests' configurations (their shape lists, read from the files)."""
    attention_tests = ROOT / "tests" / "test_kernels_attention.py"
    cases = list(_literal(attention_tests, "CASES"))
    # test_model_sequence_lengths and test_long_sequences_on_the_gpu (literal in decorators)
    long = [(1, 1, n, n, 64) for n in (576, 1024)]
    long += [(2, 4, n, n, d) for n, d in ((4096, 64), (1024, 128), (4000, 32))]
    for dtype in DTYPES:
        for b, h, l_q, l_k, d in cases + long:
            for blocks in ({}, {"block_m": 16, "block_n": 16}):
                qkv = _qkv(b, h, l_q, l_k, d, dtype)
                yield "tests (attention)", lambda t=qkv, kw=blocks: k.attention(*t, **kw)
    norm_tests = ROOT / "tests" / "test_kernels_group_norm.py"
    shapes = _literal(norm_tests, "SHAPES")
    variants = _literal(norm_tests, "VARIANTS")
    for dtype in DTYPES:
        for shape, groups in shapes:
            for channels_last in (False, True):
                for variant, tile in variants:
                    args = _norm_args(shape, dtype, "both", channels_last)
                    yield (
                        "tests (group norm)",
                        lambda a=args, g=groups, v=variant, t=tile: k.group_norm_silu(
                            *a[:3], g, 1e-5, *a[3:], variant=v, tile=t
                        ),
                    )
    for modulation in ("none", "scale", "shift", "both"):  # test_every_epilogue
        for silu in (True, False):
            for variant, tile in variants:
                args = _norm_args((2, 6, 5, 3), torch.float32, modulation)
                yield (
                    "tests (epilogues)",
                    lambda a=args, s=silu, v=variant, t=tile: k.group_norm_silu(
                        *a[:3], 2, 1e-5, *a[3:], s, variant=v, tile=t
                    ),
                )
    args = _norm_args((1, 4, 96, 100), torch.float32, "both")  # auto picks split, default tile
    yield "tests (group norm)", lambda: k.group_norm_silu(*args[:3], 2, 1e-5, *args[3:])


def table_launches(k: Kernels) -> Iterator[tuple[str, Launch]]:
    """Every entry of the attention launch tables, each at the sequence length that picks it."""
    attention = importlib.import_module("lsdseg.kernels.attention")
    tables = {torch.float32: attention.FP32_CONFIGS, torch.float16: attention.HALF_CONFIGS}
    tables[torch.bfloat16] = attention.HALF_CONFIGS
    for dtype, table in tables.items():
        for d, row in table.items():
            for block_m in row:
                length = 1024 if block_m == max(row) else block_m
                qkv = _qkv(1, 2, length, length, d, dtype)
                yield (
                    f"attention table ({str(dtype)[6:]}, d={d}, BLOCK_M={block_m})",
                    (lambda t=qkv: k.attention(*t)),
                )


def bench_launches(k: Kernels) -> Iterator[tuple[str, Launch]]:
    """benchmarks/bench_kernels.py's large shapes, at their default launch settings."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_kernels import LARGE_ATTNS, LARGE_NORMS

    for shape, groups in LARGE_NORMS:
        for dtype in (torch.float32, torch.float16):
            args = _norm_args(shape, dtype, "both")
            for variant in ("auto", "split"):
                yield (
                    "benchmarks",
                    lambda a=args, g=groups, v=variant: k.group_norm_silu(
                        *a[:3], g, 1e-5, *a[3:], variant=v
                    ),
                )
    for b, h, n, d, dtype in LARGE_ATTNS:
        qkv = _qkv(b, h, n, n, d, dtype)
        yield "benchmarks", lambda t=qkv: k.attention(*t)


# ---------------------------------------------------------------- running it


def _forget_compiled() -> None:
    """Drop every lsdseg kernel's in-memory binaries, so the next launch compiles anew."""
    from triton.runtime.jit import JITFunction

    for name in ("attention", "group_norm", "group_norm_split"):
        module = importlib.import_module(f"lsdseg.kernels.{name}")
        for value in vars(module).values():
            if isinstance(value, JITFunction):
                value.device_caches.clear()


def compile_all(arch: int, launches: Iterator[tuple[str, Launch]]) -> list[Compiled]:
    """Run ``launches`` against a stub driver for ``arch``; one entry per compiled kernel."""
    from triton.runtime.driver import driver
    from triton.runtime.errors import OutOfResources

    stub = StubDriver(arch)
    previous = driver._active  # None here: reset_active() would look for a real GPU
    driver.set_active(stub)
    _forget_compiled()  # kernels cache their binaries per device index, not per target
    try:
        for source, launch in launches:
            stub.source = source
            try:
                with torch.no_grad():
                    launch()
            except OutOfResources as e:  # shared memory over the limit
                stub._pending.error = f"out of resources: {e}"
    finally:
        driver.set_active(previous)
    return list(stub.compiled.values())


def why_not_here() -> str | None:
    """None when this Triton can compile CUDA kernels here, else why not."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.runtime.driver import driver  # noqa: F401
    except ImportError as e:
        return f'Triton is not installed or too old ({e}): pip install "lsdseg[triton]"'
    if "nvidia" not in triton.backends.backends:
        return f"Triton {triton.__version__} has no NVIDIA backend"
    if not _bin("cuobjdump").is_file():
        return f"Triton {triton.__version__}'s wheel has no cuobjdump at {_bin('cuobjdump')}"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, action="append", help="compute capability x10 (90, 87)")
    p.add_argument("--bench", action="store_true", help="also the benchmarks' large shapes")
    p.add_argument(
        "--no-tests",
        action="store_true",
        help="leave out the kernel tests' configurations (where the tests run compiled anyway)",
    )
    p.add_argument("--json", type=Path, help="write every configuration and its usage here")
    args = p.parse_args()
    archs = args.arch or [90, 87]
    for arch in archs:
        if arch not in SHARED_LIMIT:
            p.error(f"--arch {arch}: expected one of {sorted(SHARED_LIMIT)}")
    reason = why_not_here()
    if reason is None:
        try:
            k = load_kernels()
        except (ImportError, RuntimeError) as e:
            reason = str(e)
    if reason is not None:
        print(f"cannot compile the kernels here: {reason}", file=sys.stderr)
        return 2
    import triton

    results: list[Compiled] = []
    t0 = time.perf_counter()
    for arch in archs:

        def launches(arch: int = arch) -> Iterator[tuple[str, Launch]]:
            yield from model_launches(k)
            yield from table_launches(k)
            if arch == 90 and not args.no_tests:  # the tests run on H100/H200s
                yield from test_launches(k)
            if arch == 90 and args.bench:
                yield from bench_launches(k)

        results += compile_all(arch, launches())
    bad = [r for r in results if r.problems()]
    for r in results:
        flag = "FAIL" if r.problems() else "ok"
        print(
            f"{flag:4} sm_{r.arch} {r.kernel} warps={r.num_warps} stages={r.num_stages} "
            f"{r.constants} regs={r.registers} stack={r.stack} shared={r.shared}"
            + ("" if not r.problems() else f": {'; '.join(r.problems())} (from {r.sources[0]})")
        )
    print(
        f"{len(results)} configurations compiled with Triton {triton.__version__} in "
        f"{time.perf_counter() - t0:.0f} s; {len(bad)} with problems"
    )
    if args.json:
        rows = [dict(dataclasses.asdict(r), problems=r.problems()) for r in results]
        args.json.write_text(json.dumps({"triton": triton.__version__, "kernels": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
