"""The ``lsdseg`` command line (installed as ``lsdseg.cli``)."""
