"""Export a segmenter to one ONNX graph with the DDIM steps unrolled.

The graph is the interface of DESIGN.md: inputs ``image`` (B, 3, S, S), normalised, and
``noise`` (B, K, c_m, S/f, S/f); outputs ``mean`` (B, S, S), ``std`` (B, S, S) and
``hypotheses`` (B, K, S, S); B and K dynamic. It is :meth:`LatentSegmenter.forward
<lsdseg.model.LatentSegmenter.forward>` traced with ``steps`` fixed (the model's docstring says
why its layouts suit the exported graph). DDIM with eta = 0 is deterministic, so the timesteps
are constants and each step is plain arithmetic around one UNet call. The sampler
settings, the normalisation, the threshold, the lsdseg version and the checkpoint's hash go into
the model's ``metadata_props`` (see :func:`read_metadata`).

It is exported with ``torch.onnx.export(dynamo=True)`` at opset 18: the exporter's lowest, and
inside TensorRT 10's range (opset 9 to 20). :mod:`lsdseg.export.check` holds the graph to
the ONNX checker, shape inference and the operators TensorRT's parser supports.

    from lsdseg.export.onnx import export_onnx
    export_onnx("default", "lsdseg.onnx", steps=4, half=True)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from lsdseg import ops
from lsdseg.checkpoint import checkpoint_hash, load_checkpoint
from lsdseg.files import write_bytes_atomic
from lsdseg.imagesize import check_image_size, latent_shape
from lsdseg.model import LatentSegmenter
from lsdseg.version import __version__

from .check import INPUT_NAMES, OUTPUT_NAMES, check_graph

OPSET = 18
# Bumped when the graph's interface or metadata change; loaders refuse other formats.
FORMAT_VERSION = 2  # 2: the presence score output
PRECISIONS = ("fp32", "fp16")

log = logging.getLogger(__name__)


def weights_hash(model: LatentSegmenter) -> str:
    """SHA-256 (16 hex digits) of a model's config and weights, for models without a folder."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(model.cfg), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_weights(weights: str | Path | LatentSegmenter) -> tuple[LatentSegmenter, str, str]:
    """``"default"``, ``"untrained"``, a checkpoint folder or a model -> (model, name, hash).

    Raises:
        CheckpointError: the folder is not a valid checkpoint (or is from a newer lsdseg).
    """
    from lsdseg.segmenter import bundled_weights
    from lsdseg.segmenter import load as load_segmenter

    if isinstance(weights, LatentSegmenter):
        return weights, "model", weights_hash(weights)
    if str(weights) == "untrained":
        model = load_segmenter("untrained").model
        return model, "untrained", weights_hash(model)
    path = bundled_weights() if str(weights) == "default" else Path(weights)
    model = load_checkpoint(path)
    return model, path.name, checkpoint_hash(path)


def graph_metadata(
    model: LatentSegmenter,
    steps: int,
    precision: str,
    name: str,
    digest: str,
    image_size: int | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph (all values are strings; lists are JSON);
    ``image_size`` is the graph's S (default: the checkpoint's)."""
    cfg = model.cfg
    sampler = model.sampler(steps, 0.0)
    return {
        "lsdseg_version": __version__,
        "lsdseg_onnx_format": str(FORMAT_VERSION),
        "checkpoint": name,
        "checkpoint_hash": digest,
        "precision": precision,
        "opset": str(OPSET),
        "steps": str(steps),
        "timesteps": json.dumps(sampler.timesteps),
        "eta": "0.0",
        "spacing": cfg.sampler.spacing,
        "shift": repr(cfg.sampler.shift),
        "prediction": cfg.diffusion.prediction,
        "train_timesteps": str(cfg.diffusion.timesteps),
        "hypotheses": str(cfg.sampler.hypotheses),
        "threshold": repr(cfg.sampler.threshold),
        "presence_threshold": repr(cfg.sampler.presence_threshold),
        "presence_head": str(cfg.presence > 0).lower(),
        "image_size": str(cfg.image_size if image_size is None else image_size),
        "latent_factor": str(cfg.image_ae.factor),
        "latent_channels": str(cfg.mask_vae.latent_channels),
        "image_mean": json.dumps(list(cfg.image_mean)),
        "image_std": json.dumps(list(cfg.image_std)),
        "input": "image: RGB in [0, 1], (x - image_mean) / image_std, (B, 3, S, S) float32; "
        "noise: N(0, 1), (B, K, latent_channels, S / latent_factor, S / latent_factor) float32",
        "output": "mean, std: (B, S, S) over the K hypotheses; hypotheses: (B, K, S, S) "
        "foreground probabilities; score: (B,) probability that the frame holds a polyp (1 "
        "without a presence head); mask = (mean > threshold) if score >= presence_threshold, "
        "else empty",
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and its warnings about optional packages."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def trace(model: LatentSegmenter, steps: int, image_size: int | None = None) -> object:
    """Export ``model.forward`` (float32, CPU) with ``steps`` unrolled: an ``onnx.ModelProto``.

    The graph's inputs are fixed at S = ``image_size`` (default: the checkpoint's), a size
    checked by :func:`lsdseg.imagesize.check_image_size`; ``model`` is put in eval mode, its
    ``cfg`` unchanged (the model is fully convolutional: the example input's size is the
    graph's).

    Raises:
        ValueError: a size the model cannot run at.
    """
    model.eval()
    size = model.cfg.image_size if image_size is None else check_image_size(model.cfg, image_size)
    # B = 2, K = 3: distinct sizes above 1, so the exporter specialises neither
    # image (2, 3, S, S); noise (2, 3, c_m, S/f, S/f)
    example = (torch.zeros(2, 3, size, size), torch.zeros(2, 3, *latent_shape(model.cfg, size)))
    batch, hyps = torch.export.Dim("B", min=1), torch.export.Dim("K", min=1)
    # the torch ops (the reference code); every step's timestep is one (1,) row, broadcast over
    # the B*K latents inside the graph (see LatentSegmenter)
    with _quiet_exporter(), ops.use_backend("torch"), torch.inference_mode(False):
        program = torch.onnx.export(
            model,
            example,
            kwargs={"steps": steps},  # a Python int: the exporter unrolls that many steps
            input_names=list(INPUT_NAMES),
            output_names=[f"{_TRACED}{name}" for name in OUTPUT_NAMES],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: batch}, "noise": {0: batch, 1: hyps}, "steps": None},
            verbose=False,
        )
    proto = program.model_proto
    _name_outputs(proto.graph)
    _name_dims(proto.graph)
    return proto


# The exporter names values after the ops that make them, so an internal ``aten.mean`` can be
# called "mean": the outputs are traced under these prefixed names and renamed afterwards.
_TRACED = "lsdseg_traced_"


def _name_outputs(graph: object) -> None:
    """Rename the traced outputs to OUTPUT_NAMES, moving internal values out of the way."""
    names = {n for node in graph.node for n in (*node.input, *node.output)}
    names |= {v.name for v in (*graph.input, *graph.initializer, *graph.value_info)}
    for name in OUTPUT_NAMES:
        if name in names:  # an internal value took the name: give it another
            k = 1
            while f"{name}_{k}" in names:
                k += 1
            _rename(graph, name, f"{name}_{k}")
            names.add(f"{name}_{k}")
        _rename(graph, f"{_TRACED}{name}", name)


def _name_dims(graph: object) -> None:
    """Call the dynamic dimensions B and K, after the ``noise`` input's first two.

    The exporter names them after ``dynamic_shapes`` only when that has one entry per graph
    input; ``steps`` has an entry but, an int, is no graph input, so they come out as the
    exporter's symbols (``s30``, and ``s11*s30`` for B*K): each is replaced, in expressions too.
    """
    noise = graph.input[INPUT_NAMES.index("noise")].type.tensor_type.shape.dim
    names = {noise[0].dim_param: "B", noise[1].dim_param: "K"}
    for value in (*graph.input, *graph.output, *graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = _SYMBOL.sub(lambda m: names.get(m[0], m[0]), d.dim_param)


_SYMBOL = re.compile(r"[A-Za-z_]\w*")


def _rename(graph: object, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` everywhere in ``graph`` (no subgraphs here)."""
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if value.name == old:
            value.name = new


def to_fp16(proto: object) -> object:
    """An FP16 copy of a float32 graph whose inputs and outputs stay float32.

    The ``precision`` metadata entry (if any) is set to ``fp16``.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(copy.deepcopy(proto), keep_io_types=True)
    _sort_nodes(half.graph)  # the converter appends the input casts at the end
    del half.graph.value_info[:]  # intermediate types it left stale; shape inference redoes them
    for entry in half.metadata_props:
        if entry.key == "precision":
            entry.value = "fp16"
    half.doc_string = half.doc_string.replace("fp32", "fp16")
    return half


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write an FP16 copy of an lsdseg FP32 graph to ``dst`` (atomically), without re-exporting.

    Raises:
        ValueError: ``src`` is not an FP32 graph written by lsdseg.
        GraphError: the FP16 graph fails the checks.
    """
    import onnx

    meta = read_metadata(src)
    if meta.get("precision") != "fp32":
        raise ValueError(f"{src} is a {meta.get('precision')} graph; convert an fp32 one")
    half = to_fp16(onnx.load(str(src)))
    check_graph(half)
    return write_bytes_atomic(dst, half.SerializeToString())


def _sort_nodes(graph: object) -> None:
    """Order ``graph.node`` topologically (stable: ties keep their order), in place."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"the graph has a cycle or a missing input at {rest[0].name!r}")
        pending = rest
    copies = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def export_onnx(
    weights: str | Path | LatentSegmenter,
    path: str | Path,
    *,
    steps: int | None = None,
    image_size: int | None = None,
    half: bool = False,
    eta: float | None = None,
    checkpoint_digest: str | None = None,
) -> Path:
    """Export a checkpoint to one ONNX graph at ``path`` (written atomically).

    Args:
        weights: ``"default"`` (bundled), ``"untrained"``, a checkpoint folder, or a model.
        path: the ``.onnx`` file to write; its folder is created.
        steps: DDIM steps to unroll (default: the checkpoint's).
        image_size: input size S (default: the checkpoint's; the model is fully convolutional).
        half: write an FP16 graph (inputs and outputs stay float32).
        eta: must be 0 (the default, or the checkpoint's): the graph is deterministic DDIM.
        checkpoint_digest: the hash recorded for an in-memory ``weights`` model (default: a
            hash of its weights).

    Returns:
        ``path``.

    Raises:
        ValueError: a bad setting (steps, size, eta > 0) or ``path`` is a folder.
        CheckpointError: ``weights`` is not a valid checkpoint.
        GraphError: the exported graph fails the checks of :mod:`lsdseg.export.check`.
    """
    from lsdseg.config import SamplerConfig

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the .onnx file to write")
    for folder in path.parents:  # fail before the slow export, not when writing
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"{folder} is a file, not a folder; choose another output")
            break
    if steps is not None:
        SamplerConfig(steps=steps)  # validates before the model is loaded
    model, name, digest = resolve_weights(weights)
    digest = checkpoint_digest or digest
    cfg = model.cfg
    eta = cfg.sampler.eta if eta is None else eta
    if eta != 0:
        raise ValueError(
            f"eta={eta}: the exported graph runs deterministic DDIM (eta = 0) and has no input "
            "for the fresh noise eta > 0 needs at every step; export with eta=0 (--eta 0), or "
            "sample with eta > 0 on the torch backend"
        )
    steps = cfg.sampler.steps if steps is None else steps
    size = cfg.image_size if image_size is None else check_image_size(cfg, image_size)
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()  # the caller's stays as it is
    precision = "fp16" if half else "fp32"
    proto = trace(model, steps, size)
    for key, value in graph_metadata(model, steps, precision, name, digest, size).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "lsdseg", __version__
    proto.doc_string = f"lsdseg {__version__}: {name} ({digest}), {steps} DDIM steps, {precision}"
    if half:
        proto = to_fp16(proto)
    check_graph(proto)
    write_bytes_atomic(path, proto.SerializeToString())
    log.info("wrote %s (%s, %d steps, S=%d)", path, precision, steps, size)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict.

    Raises:
        ValueError: the file is not an ONNX graph written by lsdseg.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for foreign files
        raise ValueError(f"{path} is not an ONNX file ({e})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if "lsdseg_onnx_format" not in meta:
        raise ValueError(f"{path} was not exported by lsdseg (no lsdseg metadata)")
    return meta
