"""The optional C extension of the scorer (everything else is in pyproject.toml).

``avis.evaluation._rlec`` (avis/evaluation/_rlec.c: plain CPython C API, no NumPy headers) is the fast path of
``avis score``; ``optional=True``: without a C compiler the install still succeeds and the scorer uses its
numba / pycocotools paths (avis/evaluation/rle_c.py says which is available).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("avis.evaluation._rlec", ["avis/evaluation/_rlec.c"], optional=True)])
