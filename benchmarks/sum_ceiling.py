"""How fast can a sum as accurate as safe_sum's read memory here? Minimal loops against the limit.

    PYTHONPATH=. python3 benchmarks/sum_ceiling.py [--repeat N] [--n N ...]

benchmarks/targets.py holds safe_sum to 0.9 of the read limit (the plain SIMD sum of the same bytes,
memory_ops._core._stream("sum")), with safe_sum's arithmetic alone (memory_ops._core._sum_arithmetic)
as the ceiling. This checks that ceiling from outside memory_ops: benchmarks/bare_sum.cpp holds the
least work per element such a sum does, as bare loops (float32: each element widened to float64 and
added; float64: each addition's exact error kept, by Fast2Sum on operands ordered by magnitude), and
a plain read loop of its own, each splitting the array in one fixed part per thread. They are built
here with the host compiler (c++ -O2 -march=native -fopenmp) and timed through ctypes in the same
rotation as memory_ops' loops, over the same array, at the same OpenMP thread count
(memory_ops.get_num_threads()). Printed as GB/s and as fractions of the limit.
"""

import argparse
import ctypes
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

import memory_ops
from memory_ops import _core

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from targets import interleaved  # noqa: E402

SOURCE = pathlib.Path(__file__).resolve().parent / "bare_sum.cpp"


def compiler():
    """The host's C++ compiler ($CXX, c++ or g++), or None."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def build(directory):
    cxx = compiler()
    if cxx is None:
        sys.exit("sum_ceiling.py: no C++ compiler (c++ or g++, or $CXX) to build bare_sum.cpp")
    lib = pathlib.Path(directory) / "bare_sum.so"
    subprocess.run([cxx, "-O2", "-march=native", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", str(lib)],
                   check=True)
    bare = ctypes.CDLL(str(lib))
    for name, pointer in (("bare_read", ctypes.c_double), ("bare_widen", ctypes.c_float),
                          ("bare_two_sum", ctypes.c_double)):
        fn = getattr(bare, name)
        fn.argtypes = [ctypes.POINTER(pointer), ctypes.c_long]
        fn.restype = ctypes.c_double
    return bare


def pointer(a, ctype):
    return a.ctypes.data_as(ctypes.POINTER(ctype))


def compare(bare, n, dtype, repeat):
    a = np.random.default_rng(11).random(n).astype(dtype)
    a64 = a.view(np.float64)
    if dtype == np.float32:
        loop = lambda: bare.bare_widen(pointer(a, ctypes.c_float), a.size)
        what = "widen and add"
    else:
        loop = lambda: bare.bare_two_sum(pointer(a, ctypes.c_double), a.size)
        what = "Fast2Sum, ordered"
    # (the loops must sum what they read: a loop that skipped elements would look fast)
    for name, value, reference in (("bare loop", loop(), memory_ops.safe_sum(a)),
                                   ("bare read", bare.bare_read(pointer(a64, ctypes.c_double), a64.size),
                                    float(np.sum(a64)))):
        if not abs(value - reference) <= 1e-9 * abs(reference):
            sys.exit(f"sum_ceiling.py: the {name} summed {np.dtype(dtype).name} data to {value!r}, not {reference!r}")
    t = interleaved({
        "limit": lambda: _core._stream("sum", None, a64, None),
        "bare read": lambda: bare.bare_read(pointer(a64, ctypes.c_double), a64.size),
        f"bare loop ({what})": loop,
        "safe_sum's arithmetic": lambda: _core._sum_arithmetic(a),
        "safe_sum": lambda: memory_ops.safe_sum(a),
    }, repeat)
    print(f"{np.dtype(dtype).name}, n={n:,} ({a.nbytes / 2**20:.0f} MiB):")
    for name, seconds in t.items():
        # (the bare loops split the array in fixed halves, memory_ops' loops share it out in chunks:
        # a bare loop is compared with the bare read too, split as it is)
        beside = f"  {t['bare read'] / seconds:5.2f} of the bare read" if name.startswith("bare loop") else ""
        print(f"  {name:<32} {a.nbytes / seconds / 1e9:7.1f} GB/s  {t['limit'] / seconds:5.2f} of the limit{beside}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=21, help="interleaved repeats (default 21)")
    parser.add_argument("--n", type=int, nargs="+", default=[5_000_000], help="array sizes (default 5,000,000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        bare = build(directory)
        info = memory_ops.info()
        print(f"memory_ops {info['version']} on {info['simd']}, {memory_ops.get_num_threads()} OpenMP threads; "
              f"bare loops {'AVX-512' if bare.bare_avx512() else 'scalar (no AVX-512 here)'}\n")
        for n in args.n:
            for dtype in (np.float64, np.float32):
                compare(bare, n, dtype, args.repeat)


if __name__ == "__main__":
    main()
