"""Shared fixtures and helpers for the memory_ops test suite.

NumPy is the oracle everywhere: helpers here compare a memory_ops result with NumPy's answer bit for
bit (dtype, shape and, for floating dtypes, the IEEE bit pattern, NaN payloads excepted).
"""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # the package is built in place at the repo root
    sys.path.insert(0, str(REPO_ROOT))

import memory_ops  # noqa: E402  (conftest lives in tests/, the package at the repo root)

SIMD_TARGETS = list(memory_ops.info()["simd_supported"])

# Sizes that hit every SIMD tail: 0, below one batch, around batch multiples (4/8/16 lanes, unroll
# by 2 or 4), well above, and across the serial/parallel threshold (2**16 elements).
TAIL_SIZES = [0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000, 4097, 2**15 + 3, 2**16 + 5, 2**17 + 7]

PYTHON = sys.executable  # children run with the interpreter running the tests

_UINT_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@pytest.fixture(scope="session")
def repo_root():
    """The repository root (the directory holding memory_ops/), derived from this file's location."""
    return REPO_ROOT


@pytest.fixture(scope="module", params=SIMD_TARGETS, ids=[f"simd={t}" for t in SIMD_TARGETS])
def simd(request):
    """Run the requesting tests once per SIMD target this CPU supports; restore the target after.

    Use in a module with ``pytestmark = pytest.mark.usefixtures("simd")`` so that every value test
    of the module runs under every target. Module-scoped so hypothesis tests can use it too.
    """
    previous = memory_ops.simd_arch()
    memory_ops._core._set_simd(request.param)
    assert memory_ops.simd_arch() == request.param
    try:
        yield request.param
    finally:
        memory_ops._core._set_simd(previous)


@pytest.fixture(params=[1, 2], ids=["threads=1", "threads=2"])
def nthreads(request):
    """Run the requesting test with 1 and with 2 OpenMP threads; restore the count after."""
    with memory_ops.threads(request.param):
        assert memory_ops.get_num_threads() == request.param
        yield request.param


@contextmanager
def numpy_quiet():
    """NumPy as the oracle computes through overflow/invalid/cast warnings (pytest makes them errors)."""
    with np.errstate(all="ignore"):
        yield


def float_bits(a):
    """The bit pattern of a floating array as unsigned integers of the same size."""
    a = np.asarray(a)
    return a.view(_UINT_OF_SIZE[a.dtype.itemsize])


def assert_same_array(got, expected, *, check_type=True):
    """Assert got equals NumPy's `expected` exactly: ndarray, dtype, shape and values.

    Floating values are compared by their bit patterns (so -0.0 != 0.0 and subnormals count) where
    both are not NaN; NaN positions must agree (payloads are not compared).
    """
    if check_type:
        assert isinstance(got, np.ndarray), f"expected an ndarray, got {type(got).__name__}"
    expected = np.asarray(expected)
    got_arr = np.asarray(got)
    assert got_arr.dtype == expected.dtype, f"dtype {got_arr.dtype} != NumPy's {expected.dtype}"
    assert got_arr.shape == expected.shape, f"shape {got_arr.shape} != NumPy's {expected.shape}"
    if got_arr.dtype.kind == "f":
        got_nan = np.isnan(got_arr)
        exp_nan = np.isnan(expected)
        np.testing.assert_array_equal(got_nan, exp_nan, err_msg="NaN positions differ")
        got_bits = np.ascontiguousarray(got_arr)[~got_nan].astype(got_arr.dtype.newbyteorder("="))
        exp_bits = np.ascontiguousarray(expected)[~exp_nan].astype(expected.dtype.newbyteorder("="))
        np.testing.assert_array_equal(
            float_bits(got_bits), float_bits(exp_bits), err_msg=f"bit patterns differ\n got={got_arr!r}\n exp={expected!r}"
        )
    else:
        np.testing.assert_array_equal(got_arr, expected, strict=True)


def snapshot(a):
    """Bytes of everything an array's view covers, for 'was it modified?' checks (any layout)."""
    a = np.asarray(a)
    return a.dtype, a.shape, a.copy(order="K").tobytes()


def make_layout(base_1d, layout):
    """A writable 1-d view holding base_1d's values in the named memory layout.

    Returns (view, owner) where owner is the underlying buffer (an ndarray or a bytearray): every
    byte of it, gaps and padding included, can be compared after an in-place operation.
    """
    n = base_1d.size
    dt = base_1d.dtype
    if layout == "contiguous":
        v = base_1d.copy()
        return v, v
    if layout == "step3":
        big = np.zeros(3 * n, dtype=dt)
        v = big[::3]
    elif layout == "neg_step2":
        big = np.zeros(2 * n, dtype=dt)
        v = big[::-2]
    elif layout == "unaligned":
        buf = bytearray(dt.itemsize * n + 1)
        v = np.frombuffer(buf, dtype=dt, offset=1, count=n)
        assert v.flags.writeable and (n == 0 or dt.itemsize == 1 or not v.flags.aligned)
        big = buf
    elif layout == "struct_field":
        # A packed record: field 'v' is read with byte stride itemsize + 4 (12 for float64).
        big = np.zeros(n, dtype=[("v", dt), ("pad", "f4")])
        big["pad"] = np.float32(7.5)
        v = big["v"]
    else:
        raise ValueError(layout)
    v[...] = base_1d
    return v, big


LAYOUTS_1D = ["contiguous", "step3", "neg_step2", "unaligned", "struct_field"]


def nd_views(values):
    """Named N-d views over copies of `values` (any 1-d array of >= 24 elements), in many layouts."""
    v = values[:24]
    c = v.reshape(2, 3, 4).copy()
    out = {
        "c_3d": c,
        "f_3d": np.asfortranarray(c),
        "transposed_3d": c.copy().transpose(2, 0, 1),
        "neg_strides_3d": c.copy()[::-1, :, ::-1],
        "sliced_2d": v.reshape(4, 6).copy()[::2, ::-3],
        "transposed_2d": v.reshape(4, 6).copy().T,
        "5d": v.reshape(2, 1, 3, 2, 2).copy(),
        "5d_swapped": v.reshape(2, 1, 3, 2, 2).copy().swapaxes(0, 4)[::-1],
        "empty_3x0": np.empty((3, 0), dtype=v.dtype),
        "empty_0": np.empty((0,), dtype=v.dtype),
        "0d": np.array(v[5]),
    }
    return out


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Every test leaves the SIMD cap, the thread count and the streaming threshold as it found them."""
    arch = memory_ops.simd_arch()
    threads = memory_ops.get_num_threads()
    stream = memory_ops._core._info()["stream_threshold"]
    yield
    leaked = (memory_ops.get_num_threads(), memory_ops.simd_arch(), memory_ops._core._set_stream_threshold(stream))
    memory_ops.set_num_threads(threads)  # restore first, so one leak cannot spread to other tests
    memory_ops._core._set_simd(arch)
    assert leaked == (threads, arch, stream), (
        f"test leaked a change of (threads, simd, stream threshold): {leaked} != {(threads, arch, stream)}")


def subprocess_env(repo_root, **extra):
    """Environment for a child Python that imports memory_ops from repo_root."""
    env = {k: v for k, v in os.environ.items() if k not in ("MEMORY_OPS_SIMD", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(repo_root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def random_values(n, dtype, seed=0):
    """n reproducible values of dtype: normal*100 for floats, the full range for integers."""
    rng = np.random.default_rng([seed, n])
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(n) * 100).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, n).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, n, endpoint=True, dtype=dt.newbyteorder("=")).astype(dt)


def special_values(dtype):
    """Every IEEE corner case of a floating dtype, shuffled and repeated past a few SIMD widths."""
    dt = np.dtype(dtype)
    fi = np.finfo(dt)
    vals = np.array(
        [0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, fi.tiny, -fi.tiny, fi.smallest_subnormal,
         -fi.smallest_subnormal, 3 * fi.smallest_subnormal, fi.max, -fi.max, fi.eps, 1 / 3, -2.5, 1e-3],
        dtype=dt,
    )
    out = np.tile(vals, 7)
    np.random.default_rng(42).shuffle(out)
    return out


def buffer_bytes(owner):
    """All bytes of a layout's buffer owner (an ndarray or a bytearray), gaps and padding included."""
    return owner.tobytes() if isinstance(owner, np.ndarray) else bytes(owner)


def idfn(x):
    """Readable test ids for dtypes, NumPy scalars and Python values."""
    if (isinstance(x, type) and issubclass(x, np.generic)) or isinstance(x, np.dtype):
        return np.dtype(x).name if np.dtype(x).isnative else np.dtype(x).str
    if isinstance(x, np.generic):
        return f"{type(x).__name__}({x!r})".replace("np.", "")
    if isinstance(x, str):
        return x
    return repr(x)


def same_view(view, base, other_base):
    """The view of other_base (a copy of base, same layout) that `view` is of `base`."""
    offset = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return np.ndarray(view.shape, dtype=view.dtype, buffer=other_base, offset=offset, strides=view.strides)


# ---- the calling thread's floating-point environment (tests of rounding modes, FTZ/DAZ) -----------


def libm_or_skip():
    """The C maths library through ctypes, for <fenv.h>'s functions (or the test is skipped)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("m")
    lib = ctypes.CDLL(name) if name else None
    if lib is None or not hasattr(lib, "fesetround"):
        pytest.skip("no C99 fenv functions reachable through ctypes")
    return lib


# <fenv.h> on x86-64 and aarch64 Linux (glibc): rounding modes and FE_INVALID, which glibc raises
# on x86-64 with an SSE division (FE_INEXACT it sets in the x87 status word, which the sum never
# touches, so a wiped flag would go unseen).
FE_ROUNDING = {
    "x86_64": {"up": 0x800, "zero": 0xC00, "nearest": 0},
    "aarch64": {"up": 0x400000, "zero": 0xC00000, "nearest": 0},
}
FE_INVALID = {"x86_64": 0x01, "aarch64": 0x01}


@contextmanager
def mxcsr_bits_set(bits):
    """The calling thread's MXCSR with `bits` set while the block runs, and its whole floating-point
    environment as before afterwards (x86-64 glibc, else the test is skipped). Set through fesetenv:
    glibc's x86-64 fenv_t holds the MXCSR at byte 28 (feraiseexcept would raise flags in the x87
    unit instead). Yields a function that reads the thread's MXCSR."""
    import ctypes
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("MXCSR is x86-64's")
    libm = libm_or_skip()

    def fenv():
        env = ctypes.create_string_buffer(32)  # sizeof(fenv_t) on x86-64 glibc
        assert libm.fegetenv(env) == 0
        return env

    def mxcsr():
        return int.from_bytes(fenv().raw[28:32], "little")

    before = fenv()
    changed = ctypes.create_string_buffer(before.raw[:28] + (mxcsr() | bits).to_bytes(4, "little"))
    assert libm.fesetenv(changed) == 0
    try:
        yield mxcsr
    finally:
        libm.fesetenv(before)
