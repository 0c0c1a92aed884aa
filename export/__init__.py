"""ONNX / TensorRT export and their runtimes, installed as ``lsdseg.export``.

Importing this package registers the ``"onnx"`` and ``"trt"`` whole-model backends of
:mod:`lsdseg.segmenter`. They are not part of this release yet, so the import fails with a
message that ``lsdseg.load`` passes on.
"""

raise ImportError("ONNX / TensorRT export is not in this lsdseg release yet; use backend='torch'")
