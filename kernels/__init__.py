"""Triton kernels for lsdseg's fused ops, installed as ``lsdseg.kernels``.

Importing this package registers the ``"triton"`` backend of :mod:`lsdseg.ops`. The kernels are
not part of this release yet, so the import fails with a message that ``lsdseg.ops`` passes on.
"""

raise ImportError("the Triton kernels are not in this lsdseg release yet; use backend='torch'")
