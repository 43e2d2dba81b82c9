"""memory_ops: copy-free, multithreaded SIMD array kernels for NumPy.

Four operations that never copy what they need not copy: ``scale_copy`` (``input * factor``),
``scale_inplace`` (``arr *= factor``), ``add_arrays`` (``a + b``) and ``safe_sum``. NumPy's
answer (values and dtype) is the reference for each. Kernels run on OpenMP threads
(``OMP_NUM_THREADS``, :func:`set_num_threads`, :func:`threads`, threadpoolctl) with the GIL
released (above 500 elements, as NumPy's loops), on the best SIMD target of the CPU
(``MEMORY_OPS_SIMD`` caps it; see :func:`simd_arch`).
"""

import os as _os
from contextlib import contextmanager as _contextmanager

from . import _core
from ._core import (
    add_arrays,
    get_num_threads,
    safe_sum,
    scale_copy,
    scale_inplace,
    set_num_threads,
    simd_arch,
)
from ._version import __version__

__all__ = [
    "__version__",
    "add_arrays",
    "get_num_threads",
    "info",
    "safe_sum",
    "scale_copy",
    "scale_inplace",
    "set_num_threads",
    "simd_arch",
    "threads",
]

if _os.environ.get("MEMORY_OPS_SIMD"):
    _core._set_simd(_os.environ["MEMORY_OPS_SIMD"])


@_contextmanager
def threads(n):
    """Run the ``with`` block with ``n`` OpenMP threads (for this Python thread), then restore."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        set_num_threads(previous)


def info():
    """Versions, SIMD targets (in use, compiled, supported by this CPU), OpenMP threads, and the
    serial and streaming-store thresholds (elements; operand bytes) with the cache size behind the latter."""
    import numpy

    facts = {"version": __version__, "numpy": numpy.__version__}
    facts.update(_core._info())
    return facts
