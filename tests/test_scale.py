"""scale_copy (``input * factor``) and scale_inplace (``arr *= factor``) against NumPy, bit for bit.

Every test here runs under every SIMD target this CPU supports (the module-level `simd` fixture).
"""

import numpy as np
import pytest

import memory_ops
from conftest import (
    LAYOUTS_1D,
    TAIL_SIZES,
    assert_same_array,
    buffer_bytes,
    idfn,
    make_layout,
    nd_views,
    numpy_quiet,
    random_values,
    snapshot,
    special_values,
)

pytestmark = pytest.mark.usefixtures("simd")

FLOATS = [np.float32, np.float64]
NATIVE = [np.float32, np.float64, np.int32, np.int64]


def numpy_inplace(arr, factor):
    """NumPy's `arr *= factor` on a copy of arr (same layout)."""
    expected = arr.copy(order="K")
    with numpy_quiet():
        expected *= factor
    return expected


# ---- kernel tails ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=idfn)
@pytest.mark.parametrize("n", TAIL_SIZES)
def test_scale_copy_tails_float(n, dtype):
    a = random_values(n, dtype)
    before = snapshot(a)
    for factor in (1.7, -0.3):
        got = memory_ops.scale_copy(a, factor)
        assert_same_array(got, a * factor)
        assert got.flags.c_contiguous and got.flags.owndata
    assert snapshot(a) == before


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=idfn)
@pytest.mark.parametrize("n", TAIL_SIZES)
def test_scale_copy_tails_int(n, dtype):
    a = random_values(n, dtype)  # full range: products wrap like NumPy's
    before = snapshot(a)
    for factor in (3, -7, 0):
        assert_same_array(memory_ops.scale_copy(a, factor), a * factor)
    # An integer array times a float is float64.
    assert_same_array(memory_ops.scale_copy(a, 0.5), a * 0.5)
    assert snapshot(a) == before


@pytest.mark.parametrize("dtype", FLOATS, ids=idfn)
@pytest.mark.parametrize("n", TAIL_SIZES)
def test_scale_inplace_tails(n, dtype):
    a = random_values(n, dtype)
    expected = numpy_inplace(a, 1.7)
    assert memory_ops.scale_inplace(a, 1.7) is None
    assert_same_array(a, expected)


# ---- dtypes and NEP 50 promotion ------------------------------------------------------------------

PROMOTION_CASES = [
    (np.float32, 1.5),                  # Python float keeps float32
    (np.float32, np.float64(1.1)),      # NumPy float64 scalar promotes to float64
    (np.float32, np.float32(1.1)),
    (np.float32, 3),
    (np.float32, np.int64(3)),          # float32 * int64 scalar -> float64
    (np.float32, np.int8(3)),
    (np.float32, True),
    (np.float32, np.bool_(True)),
    (np.float32, np.float16(0.1)),
    (np.float64, np.float32(0.1)),
    (np.float64, 7),
    (np.float64, np.uint64(2**64 - 1)),
    (np.int32, 1.5),                    # int * float -> float64
    (np.int64, -2.25),
    (np.int32, 3),
    (np.int64, -7),
    (np.int32, np.int64(3)),
    (np.int8, 100),                     # wraps
    (np.int8, np.int8(-128)),
    (np.int8, np.uint8(200)),           # -> int16
    (np.int8, np.float16(0.5)),         # -> float16
    (np.uint8, 200),
    (np.int16, 300),
    (np.uint16, 65535),
    (np.uint32, 4000000000),
    (np.uint32, np.int32(-3)),          # -> int64
    (np.uint64, 2**64 - 1),
    (np.uint64, 3),
    (np.int64, np.uint64(3)),           # -> float64
    (np.int64, 2**62),
    (np.float16, 1.1),
    (np.float16, np.float16(-3.3)),
    (np.float16, 1e5),                  # overflows float16 -> inf, as NumPy
    (np.float16, 2),
    (np.float16, np.float32(1.1)),      # -> float32
    (np.bool_, True),                   # bool * bool stays bool
    (np.bool_, False),
    (np.bool_, np.bool_(True)),
    (np.bool_, 2),                      # -> int64
    (np.bool_, 2.5),                    # -> float64
    (np.bool_, np.float16(2.5)),        # -> float16
    (">f8", 2.5),                       # non-native byte order input, native result
    (">f4", 1.1),
    (">i4", 3),
    (">u2", 7),
    ("<f8", np.float64(-0.5)),
]


@pytest.mark.parametrize(
    "dtype, factor", PROMOTION_CASES, ids=[f"{np.dtype(d).str}*{type(f).__name__}({f!r})" for d, f in PROMOTION_CASES]
)
def test_scale_copy_dtype_promotion_matches_numpy(dtype, factor):
    a = random_values(301, dtype)
    before = snapshot(a)
    with numpy_quiet():
        expected = a * factor
        got = memory_ops.scale_copy(a, factor)
    assert_same_array(got, expected)
    assert snapshot(a) == before


@pytest.mark.parametrize(
    "dtype, factor",
    [(np.int8, 1000), (np.uint8, -1), (np.int32, 2**31), (np.uint64, -1), (np.int64, 2**63), (np.uint16, 2**16)],
)
def test_scale_copy_int_factor_out_of_range_raises_like_numpy(dtype, factor):
    a = random_values(10, dtype)
    with pytest.raises(Exception) as numpy_error:
        a * factor
    with pytest.raises(numpy_error.type):
        memory_ops.scale_copy(a, factor)


def test_scale_copy_sequences_and_scalars():
    for seq, factor in [([1, 2, 3], 2.5), ((1.5, -2.0), 3), ([[1, 2], [3, 4]], 3), ([True, False], 2), ([], 2.0)]:
        with numpy_quiet():
            expected = np.asarray(seq) * factor
        assert_same_array(memory_ops.scale_copy(seq, factor), expected)
    # Python and NumPy scalars as input: NumPy's `input * factor` (NEP 50 keeps Python scalars weak),
    # delivered as a 0-d array.
    for value, factor in [(3, np.float32(2)), (3.0, np.float32(2)), (True, 2.5), (np.float32(2), 3),
                          (np.int8(5), 100), (7, 3), (np.uint16(9), np.int8(-1))]:
        with numpy_quiet():
            expected = np.asarray(value * factor)
            got = memory_ops.scale_copy(value, factor)
        assert isinstance(got, np.ndarray) and got.ndim == 0
        assert_same_array(got, expected)


@pytest.mark.parametrize(
    "value", [np.float32(3.5), np.array(3.0), np.array(-0.0, np.float32), np.array(7, np.int8), np.array(True)],
    ids=repr,
)
@pytest.mark.parametrize("factor", [2.0, np.float64(0.1), 3, -1])
def test_scale_copy_0d(value, factor):
    with numpy_quiet():
        expected = np.asarray(np.asarray(value) * factor)
        got = memory_ops.scale_copy(value, factor)
    assert isinstance(got, np.ndarray) and got.shape == ()
    assert_same_array(got, expected)


# ---- layouts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS_1D)
@pytest.mark.parametrize("dtype", NATIVE + [np.float16, np.int8], ids=idfn)
@pytest.mark.parametrize("n", [0, 1, 17, 1000, 2**16 + 5])
def test_scale_copy_layouts_1d(layout, dtype, n):
    view, keep = make_layout(random_values(n, dtype), layout)
    factor = 3 if np.dtype(dtype).kind == "i" else 1.7
    before = snapshot(view)
    with numpy_quiet():
        expected = view * factor
    got = memory_ops.scale_copy(view, factor)
    assert_same_array(got, expected)
    assert got.flags.c_contiguous
    assert snapshot(view) == before


@pytest.mark.parametrize("name", list(nd_views(np.arange(24.0))))
@pytest.mark.parametrize("dtype", NATIVE + [np.uint8], ids=idfn)
def test_scale_copy_nd_layouts(name, dtype):
    view = nd_views(random_values(24, dtype))[name]
    factor = 5 if np.dtype(dtype).kind in "iu" else -2.5
    before = snapshot(view)
    with numpy_quiet():
        expected = np.asarray(view * factor)
    got = memory_ops.scale_copy(view, factor)
    assert_same_array(got, expected)
    assert got.flags.c_contiguous
    assert snapshot(view) == before


@pytest.mark.parametrize("layout", LAYOUTS_1D)
@pytest.mark.parametrize("dtype", FLOATS, ids=idfn)
@pytest.mark.parametrize("n", [0, 1, 17, 1000, 2**16 + 5])
def test_scale_inplace_layouts_1d(layout, dtype, n):
    values = random_values(n, dtype)
    view, keep = make_layout(values, layout)
    ref_view, ref_keep = make_layout(values, layout)
    with numpy_quiet():
        ref_view *= -1.3
    assert memory_ops.scale_inplace(view, -1.3) is None
    assert_same_array(view, ref_view)
    # Only the view's elements change: gaps, padding fields and the rest of the buffer do not.
    assert buffer_bytes(keep) == buffer_bytes(ref_keep)


@pytest.mark.parametrize("name", list(nd_views(np.arange(24.0))))
@pytest.mark.parametrize("dtype", FLOATS, ids=idfn)
def test_scale_inplace_nd_layouts(name, dtype):
    view = nd_views(random_values(24, dtype))[name]
    expected = numpy_inplace(view, 0.7)
    assert memory_ops.scale_inplace(view, 0.7) is None
    assert_same_array(view, expected)


# ---- factor kinds for scale_inplace, bit for bit --------------------------------------------------

INPLACE_FACTORS = [
    1.7, -0.0, 3, 0, True, False,
    np.float64(0.1), np.float64(1 / 3), np.float64(1e-310), np.float64(3.5e38), np.float64(1e300),
    np.float32(0.1), np.float16(0.3), np.int64(3), np.int64(2**62 + 1), np.int8(-5), np.uint64(2**64 - 1),
    np.bool_(True), np.uint8(250),
]


@pytest.mark.parametrize("factor", INPLACE_FACTORS, ids=idfn)
@pytest.mark.parametrize("dtype", FLOATS, ids=idfn)
def test_scale_inplace_factor_kinds_match_numpy_bitwise(dtype, factor):
    a = np.concatenate([special_values(dtype), random_values(97, dtype)])
    for arr in (a.copy(), a.copy()[::-3]):
        expected = numpy_inplace(arr, factor)
        with numpy_quiet():
            memory_ops.scale_inplace(arr, factor)
        assert_same_array(arr, expected)


def test_scale_inplace_float32_by_float64_scalar_is_computed_in_float64():
    # A value where computing in float32 (factor rounded to float32 first) differs from NumPy's
    # float64 computation rounded back: the test is only meaningful if the two differ.
    a = random_values(10_000, np.float32)
    factor = np.float64(0.1)
    in_float32 = a * np.float32(factor)
    expected = numpy_inplace(a, factor)
    assert not np.array_equal(in_float32, expected), "test data does not distinguish the two paths"
    memory_ops.scale_inplace(a, factor)
    assert_same_array(a, expected)


# ---- IEEE corner cases ----------------------------------------------------------------------------

SPECIAL_FACTORS = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e308, 5e-324, 1e-45, 1e-300, 3.4e38, 1e39, 0.5, -2.0,
                   1 / 3, np.float64(1 / 3), np.float64(1e-320), np.float32(1e-40), np.float32(-np.inf), 7, -3]


@pytest.mark.parametrize("factor", SPECIAL_FACTORS, ids=idfn)
@pytest.mark.parametrize("dtype", FLOATS, ids=idfn)
def test_scale_bit_exact_special_values(dtype, factor):
    values = special_values(dtype)
    for x in (values, values[::-1], values[1::3], make_layout(values, "unaligned")[0]):
        before = snapshot(x)
        with numpy_quiet():
            expected = x * factor
            got = memory_ops.scale_copy(x, factor)
        assert_same_array(got, expected)
        assert snapshot(x) == before
        if np.result_type(x, factor) == x.dtype or (x.dtype == np.float32 and np.result_type(x, factor) == np.float64):
            arr = x.copy()
            expected = numpy_inplace(arr, factor)
            with numpy_quiet():
                memory_ops.scale_inplace(arr, factor)
            assert_same_array(arr, expected)


# ---- out= -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, factor", [(np.float64, 2.5), (np.float32, 1.1), (np.int32, 3), (np.int8, 3),
                                           (np.float16, 1.1), (np.bool_, True), (np.int64, 0.5)],
                         ids=idfn)
def test_scale_copy_out_returns_out_itself(dtype, factor):
    a = random_values(1000, dtype)
    with numpy_quiet():
        expected = a * factor
    out = np.empty_like(expected)
    got = memory_ops.scale_copy(a, factor, out=out)
    assert got is out
    assert_same_array(out, expected)


@pytest.mark.parametrize("dtype, factor", [(np.float64, -2.5), (np.int8, 5), (np.float16, 0.3)],
                         ids=idfn)
def test_scale_copy_out_strided_views(dtype, factor):
    a = random_values(60, dtype).reshape(6, 10)
    with numpy_quiet():
        expected = a * factor
    # A strided, negatively stepped view of a bigger buffer: only the view's elements are written.
    big = np.zeros((12, 30), dtype=expected.dtype)
    out = big[::-2, 5:25:2]
    assert out.shape == a.shape
    want_big = big.copy()
    want_big[::-2, 5:25:2] = expected
    assert memory_ops.scale_copy(a, factor, out=out) is out
    assert_same_array(out, expected)
    np.testing.assert_array_equal(big, want_big, strict=True)
    # Fortran-ordered out.
    out_f = np.zeros(a.shape, dtype=expected.dtype, order="F")
    assert memory_ops.scale_copy(a, factor, out=out_f) is out_f
    assert_same_array(out_f, expected)


@pytest.mark.parametrize("dtype, factor", [(np.float64, -2.5), (np.float32, 3.0), (np.int64, 3), (np.int8, 3),
                                           (np.float16, 1.5)], ids=idfn)
def test_scale_copy_out_is_input(dtype, factor):
    a = random_values(2**16 + 5, dtype)
    for view in (a, a[::-3], a[: 2**15].reshape(2**7, 2**8).T):
        with numpy_quiet():
            expected = view * factor
            got = memory_ops.scale_copy(view, factor, out=view)
        assert got is view
        assert_same_array(view, expected)


@pytest.mark.parametrize("dtype, factor", [(np.float64, -2.5), (np.float32, 3.0), (np.int32, 3), (np.int8, 3),
                                           (np.float16, 1.5)], ids=idfn)
@pytest.mark.parametrize("n", [10, 2**16 + 5])
def test_scale_copy_out_partially_overlapping_input(dtype, factor, n):
    cases = [
        (lambda a: a[:-1], lambda a: a[1:]),     # out one element ahead of input
        (lambda a: a[1:], lambda a: a[:-1]),     # out one element behind
        (lambda a: a[::-1], lambda a: a),        # reversed
        (lambda a: a[: n // 2 * 2 : 2], lambda a: a[: n // 2]),  # different strides
    ]
    for in_of, out_of in cases:
        a = random_values(n, dtype)
        src, dst = in_of(a), out_of(a)
        with numpy_quiet():
            expected = src.copy() * factor
            got = memory_ops.scale_copy(src, factor, out=dst)
        assert got is dst
        assert_same_array(dst, expected)


def test_scale_copy_out_transpose_of_input():
    a = random_values(64 * 64, np.float64).reshape(64, 64)
    expected = a.copy() * 3.0
    out = a.T
    assert memory_ops.scale_copy(a, 3.0, out=out) is out
    assert_same_array(out, expected)


def test_scale_copy_out_0d():
    a = np.array(2.5)
    out = np.empty((), dtype=np.float64)
    assert memory_ops.scale_copy(a, 3.0, out=out) is out
    assert_same_array(out, a * 3.0)


# ---- threads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NATIVE, ids=idfn)
def test_scale_large_arrays(nthreads, dtype):
    a = random_values(2**20 + 3, dtype)
    factor = 3 if np.dtype(dtype).kind == "i" else 1.7
    assert_same_array(memory_ops.scale_copy(a, factor), a * factor)
    strided = a[::-3]
    assert_same_array(memory_ops.scale_copy(strided, factor), strided * factor)
    if np.dtype(dtype).kind == "f":
        expected = numpy_inplace(a, factor)
        memory_ops.scale_inplace(a, factor)
        assert_same_array(a, expected)


# ---- self-overlapping views ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["scale_inplace", "scale_copy_out_is_input"])
def test_self_overlapping_view_scaled_in_place_matches_numpy(how):
    # A writable view whose elements share memory (sliding windows over 6 values): NumPy's
    # `w *= 2` / `np.multiply(w, 2, out=w)` multiplies every underlying element exactly once
    # ("as if there were no overlap"). scale_inplace accepts any strides, so it must agree.
    def windows(buf):
        return np.lib.stride_tricks.as_strided(buf, shape=(4, 3), strides=(8, 8), writeable=True)

    expected_base = np.arange(1.0, 7.0)
    expected_window = windows(expected_base)
    expected_window *= 2.0
    np.testing.assert_array_equal(expected_base, np.arange(1.0, 7.0) * 2)  # NumPy's answer

    base = np.arange(1.0, 7.0)
    window = windows(base)
    if how == "scale_inplace":
        memory_ops.scale_inplace(window, 2.0)
    else:
        assert memory_ops.scale_copy(window, 2.0, out=window) is window
    np.testing.assert_array_equal(base, expected_base, strict=True)


# ---- NumPy's warnings and races NumPy does not have ------------------------------------------------


@pytest.mark.parametrize("call", ["scale_copy", "scale_inplace"])
def test_python_float_overflowing_float32_warns_like_numpy(call):
    a = np.ones(5, np.float32)
    with pytest.warns(RuntimeWarning, match="overflow"):
        expected = a * 1e300
    with pytest.warns(RuntimeWarning, match="overflow"):
        got = memory_ops.scale_copy(a, 1e300) if call == "scale_copy" else memory_ops.scale_inplace(a, 1e300)
    assert_same_array(a if got is None else got, expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_out_with_a_stride_0_axis_gets_numpy_s_value(threads):
    # Every element of `out` is the same memory: NumPy's answer is the last element's value; a
    # parallel kernel writing it directly would race.
    n = 2**17 + 3
    a = random_values(n, np.float64)
    b = random_values(n, np.float64)
    mine = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(n,), strides=(0,), writeable=True)
    numpys = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(n,), strides=(0,), writeable=True)
    with memory_ops.threads(threads):
        assert memory_ops.scale_copy(a, 3.0, out=mine) is mine
        np.multiply(a, 3.0, out=numpys)
        assert_same_array(mine.copy(), numpys.copy())
        assert memory_ops.add_arrays(a, b, out=mine) is mine
        np.add(a, b, out=numpys)
        assert_same_array(mine.copy(), numpys.copy())
