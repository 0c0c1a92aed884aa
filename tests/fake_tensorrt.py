"""Stand-ins for the ``tensorrt`` module and for ``torch.cuda``'s streams and graphs.

They model what lsdseg's TensorRT code relies on, as TensorRT and CUDA document it, so that its
control flow is checked on a CPU:

- the builder records the network's creation flags, every builder flag, the timing cache it was
  given and what ``set_timing_cache`` answered (False for a blob it did not make);
- an execution context runs only on the stream handle it is given, and a CUDA graph captured
  around it is valid only while that context keeps the shapes and addresses it had at capture;
- capturing records work without running it; a replay runs it on the current stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import torch

VALID_CACHE = b"fake timing cache"


class Logger:
    WARNING = 2

    def __init__(self, level: int) -> None:
        self.level = level


class OnnxParser:
    def __init__(self, network, logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        self.network.parsed = Path(path)
        return True


class TimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return VALID_CACHE


class BuilderConfig:
    def __init__(self, module: FakeTensorRT) -> None:
        self.module = module
        self.flags: list = []
        self.pools: dict = {}
        self.profiles: list = []
        self.cache: TimingCache | None = None

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag) -> None:
        self.flags.append(flag)

    def add_optimization_profile(self, profile) -> int:
        self.profiles.append(profile)
        return 0

    def create_timing_cache(self, blob: bytes) -> TimingCache:
        self.module.cache_blobs.append(bytes(blob))
        return TimingCache(bytes(blob))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        ok = cache.blob in (b"", VALID_CACHE) and not self.module.refuse_every_cache
        self.module.set_cache_answers.append(ok)
        if ok:
            self.cache = cache
        return ok

    def get_timing_cache(self) -> TimingCache:
        return self.cache


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict = {}

    def set_shape(self, name: str, lo, opt, hi) -> None:
        self.shapes[name] = (lo, opt, hi)


class Builder:
    def __init__(self, logger, module: FakeTensorRT) -> None:
        self.module = module

    def create_network(self, flags: int) -> SimpleNamespace:
        network = SimpleNamespace(flags=flags, parsed=None)
        self.module.networks.append(network)
        return network

    def create_builder_config(self) -> BuilderConfig:
        config = BuilderConfig(self.module)
        self.module.configs.append(config)
        return config

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network, config) -> bytes:
        return b"engine from " + str(network.parsed).encode()


# ---------------------------------------------------------------- runtime side


class Stream:
    """A CUDA stream: a handle and the streams it was told to wait for."""

    handles = iter(range(1, 1000))

    def __init__(self, device=None, handle: int | None = None) -> None:
        self.cuda_stream = next(Stream.handles) if handle is None else handle
        self.waited_for: list[Stream] = []

    def wait_stream(self, other: Stream) -> None:
        self.waited_for.append(other)


class FakeCuda:
    """``torch.cuda`` as far as the trt runtime uses it: streams, graphs, devices."""

    def __init__(self) -> None:
        self.default = Stream(handle=0)  # the legacy default stream
        self.current = self.default
        self.capturing: CUDAGraph | None = None
        self.replays = 0
        fake = self

        class CUDAGraph:
            def __init__(self) -> None:
                self.work: list[Callable[[], None]] = []
                self.snapshots: list[Callable[[], None]] = []

            def replay(self) -> None:
                fake.replays += 1
                for check in self.snapshots:
                    check()
                for work in self.work:
                    work(fake.current.cuda_stream)

        self.CUDAGraph = CUDAGraph
        self.Stream = Stream

    def current_stream(self, device=None) -> Stream:
        return self.current

    @contextlib.contextmanager
    def stream(self, stream: Stream) -> Iterator[None]:
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous

    @contextlib.contextmanager
    def graph(self, graph, stream: Stream | None = None, **kwargs) -> Iterator[None]:
        if stream is None or stream.cuda_stream == 0:
            raise RuntimeError("capturing on the legacy default stream is not allowed")
        previous, self.current = self.current, stream
        self.capturing = graph
        try:
            yield
        finally:
            self.capturing = None
            self.current = previous

    @contextlib.contextmanager
    def device(self, device) -> Iterator[None]:
        yield


class ExecutionContext:
    """Runs the stand-in network: hypotheses[b, k] = mean(image[b]) + mean(noise[b, k]),
    score[b] = mean(image[b])."""

    def __init__(self, engine: CudaEngine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.set_shape_calls = 0
        self.runs: list[int] = []  # the stream handle of every real (not captured) run

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.set_shape_calls += 1
        self.input_shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def _run(self, handle: int) -> None:
        self.runs.append(handle)
        t = {name: self.engine.tensor(ptr) for name, ptr in self.addresses.items()}
        for name in ("image", "noise"):
            if tuple(t[name].shape) != self.input_shapes[name]:
                raise RuntimeError(f"{name} buffer does not have the context's shape")
        mean_x = t["image"].float().mean(dim=(1, 2, 3))  # (B,)
        mean_z = t["noise"].float().mean(dim=(2, 3, 4))  # (B, K)
        value = (mean_x[:, None] + mean_z).to(t["hypotheses"].dtype)
        t["hypotheses"].copy_(value[:, :, None, None].expand_as(t["hypotheses"]))
        t["score"].copy_(mean_x.to(t["score"].dtype))

    def execute_async_v3(self, handle: int) -> bool:
        cuda = self.engine.cuda
        if handle != cuda.current.cuda_stream:
            raise RuntimeError("enqueued on a stream other than the current one")
        if cuda.capturing is not None:
            snapshot = (dict(self.input_shapes), dict(self.addresses))

            def still_valid() -> None:
                if (self.input_shapes, self.addresses) != snapshot:
                    raise RuntimeError("graph replayed after its context changed shape/address")

            cuda.capturing.snapshots.append(still_valid)
            cuda.capturing.work.append(self._run)
        else:
            self._run(handle)
        return True


class CudaEngine:
    NAMES = ("image", "noise", "mean", "std", "hypotheses", "score")

    def __init__(self, module: FakeTensorRT, cuda: FakeCuda) -> None:
        self.module, self.cuda = module, cuda
        self.num_io_tensors = len(self.NAMES)
        self.contexts: list[ExecutionContext] = []
        self.owner = None  # the lsdseg Engine: its buffers are what the addresses point at

    def tensor(self, ptr: int) -> torch.Tensor:
        for shape in self.owner.shapes.values():
            for t in shape.buffers.values():
                if t.data_ptr() == ptr:
                    return t
        raise RuntimeError(f"address {ptr:#x} is no buffer of the engine")

    def get_tensor_name(self, i: int) -> str:
        return self.NAMES[i]

    def get_tensor_dtype(self, name: str) -> str:
        return self.module.float32

    def create_execution_context(self) -> ExecutionContext:
        context = ExecutionContext(self)
        self.contexts.append(context)
        return context


class Runtime:
    def __init__(self, logger, module: FakeTensorRT) -> None:
        self.module = module

    def deserialize_cuda_engine(self, blob: bytes) -> CudaEngine:
        engine = CudaEngine(self.module, self.module.cuda)
        self.module.engines.append(engine)
        return engine


class FakeTensorRT:
    """What ``import tensorrt`` gives lsdseg: ``sys.modules["tensorrt"] = FakeTensorRT()``."""

    float32 = "float32"
    float16 = "float16"

    def __init__(self, version: str = "10.13.0.35", strongly_typed_flag: bool = True) -> None:
        self.__version__ = version
        self.Logger = Logger
        self.OnnxParser = OnnxParser
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.BuilderFlag = SimpleNamespace(FP16="FP16", TF32="TF32")
        flags = {"STRONGLY_TYPED": 1} if strongly_typed_flag else {}  # TensorRT 10: 1
        self.NetworkDefinitionCreationFlag = SimpleNamespace(**flags)
        self.networks: list = []
        self.configs: list[BuilderConfig] = []
        self.cache_blobs: list[bytes] = []
        self.set_cache_answers: list[bool] = []
        self.refuse_every_cache = False
        self.engines: list[CudaEngine] = []
        self.cuda: FakeCuda | None = None

    def Builder(self, logger) -> Builder:  # TensorRT names these factories in capitals
        return Builder(logger, self)

    def Runtime(self, logger) -> Runtime:
        return Runtime(logger, self)
