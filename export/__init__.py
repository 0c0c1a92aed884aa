"""ONNX / TensorRT export and their runtimes, installed as ``lsdseg.export``.

- :mod:`lsdseg.export.onnx`: :func:`~lsdseg.export.onnx.export_onnx` writes one ONNX graph
  with the DDIM steps unrolled (FP32 or FP16), checked by :mod:`lsdseg.export.check`.
- :mod:`lsdseg.export.ort`: the ``"onnx"`` backend, which runs that graph with ONNX Runtime,
  exporting it on first use into a cache (:mod:`lsdseg.export.cache`).
- :mod:`lsdseg.export.trt`: TensorRT engines built from that graph through the Python API;
  :mod:`lsdseg.export.trtexec`: the same build as a ``trtexec`` command line (Jetson);
  :mod:`lsdseg.export.trt_spec`: what an engine is built from and for, and its sidecar;
  :mod:`lsdseg.export.trt_runtime`: the ``"trt"`` backend that runs them.

Importing this package registers the ``"onnx"`` and ``"trt"`` whole-model backends of
:mod:`lsdseg.segmenter` (``lsdseg.load(..., backend="onnx")`` imports it by name). onnx,
onnxruntime and tensorrt are imported only when a backend or an export needs them, so a
missing one is reported then, with the command that installs it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lsdseg.backends import Runner
from lsdseg.model import LatentSegmenter
from lsdseg.segmenter import register_runner


def _onnx_runner(model: LatentSegmenter, checkpoint: Path | None, device: torch.device) -> Runner:
    from .ort import OrtRunner

    return OrtRunner(model, checkpoint, device)


def _trt_runner(model: LatentSegmenter, checkpoint: Path | None, device: torch.device) -> Runner:
    from .trt_runtime import TrtRunner

    return TrtRunner(model, checkpoint, device)


register_runner("onnx", _onnx_runner)
register_runner("trt", _trt_runner)
