"""add_arrays (``a + b`` for equal shapes, no broadcasting) against NumPy, bit for bit.

Every test here runs under every SIMD target this CPU supports (the module-level `simd` fixture).
"""

import numpy as np
import pytest

import memory_ops
from conftest import (
    LAYOUTS_1D,
    TAIL_SIZES,
    assert_same_array,
    idfn,
    make_layout,
    nd_views,
    numpy_quiet,
    random_values,
    snapshot,
    special_values,
)

pytestmark = pytest.mark.usefixtures("simd")

NATIVE = [np.float32, np.float64, np.int32, np.int64]


def numpy_add(a, b):
    with numpy_quiet():
        return np.add(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", NATIVE, ids=idfn)
@pytest.mark.parametrize("n", TAIL_SIZES)
def test_add_tails(n, dtype):
    a = random_values(n, dtype, seed=1)  # integers over the full range: sums wrap like NumPy's
    b = random_values(n, dtype, seed=2)
    before = snapshot(a), snapshot(b)
    got = memory_ops.add_arrays(a, b)
    assert_same_array(got, a + b)
    assert got.flags.c_contiguous and got.flags.owndata
    assert got is not a and got is not b
    assert (snapshot(a), snapshot(b)) == before
    # The same array as both operands.
    assert_same_array(memory_ops.add_arrays(a, a), a + a)


PROMOTION_PAIRS = [
    (np.int32, np.float32),     # -> float64
    (np.float32, np.int32),
    (np.int8, np.int8),         # wraps
    (np.uint8, np.uint8),
    (np.uint8, np.int8),        # -> int16
    (np.int16, np.uint16),      # -> int32
    (np.uint32, np.uint32),     # wraps mod 2**32
    (np.uint32, np.int32),      # -> int64
    (np.uint64, np.uint64),     # wraps mod 2**64
    (np.uint64, np.int64),      # -> float64
    (np.int64, np.int32),
    (np.float16, np.float16),
    (np.float16, np.float32),
    (np.float16, np.int8),      # -> float16
    (np.float16, np.int16),     # -> float32
    (np.int64, np.float16),     # -> float64
    (np.float32, np.float64),
    (np.bool_, np.bool_),       # logical or
    (np.bool_, np.int8),
    (np.bool_, np.float32),
    (">f8", "<f8"),
    (">f8", ">f8"),
    (">i2", ">i2"),
    (">f4", np.int64),
    ("<u4", ">u4"),
]


@pytest.mark.parametrize("dta, dtb", PROMOTION_PAIRS, ids=idfn)
def test_add_dtype_promotion_matches_numpy(dta, dtb):
    a = random_values(517, dta, seed=3)
    b = random_values(517, dtb, seed=4)
    before = snapshot(a), snapshot(b)
    with numpy_quiet():
        got = memory_ops.add_arrays(a, b)
    assert_same_array(got, numpy_add(a, b))
    assert (snapshot(a), snapshot(b)) == before


def test_add_int_wraparound_at_the_limits():
    for dt in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        info = np.iinfo(dt)
        a = np.array([info.max, info.min, info.max, -1 if info.min < 0 else 1] * 9, dtype=dt)
        b = np.tile(np.array([1, info.min, info.max, info.min], dtype=dt), 9)
        assert_same_array(memory_ops.add_arrays(a, b), numpy_add(a, b))


def test_add_sequences_and_scalars():
    cases = [
        ([1, 2, 3], [4, 5, 6]),
        ([1.5, -2.0], (3, 4)),
        ([[1, 2], [3, 4]], [[0.5, 0.5], [1, 1]]),
        ([True, False], [True, True]),
        ([1, 2], np.array([1, 2], np.int8)),     # list -> int64
        (np.array([1, 2], np.float32), [0.1, 0.2]),
        ([], []),
    ]
    for a, b in cases:
        assert_same_array(memory_ops.add_arrays(a, b), numpy_add(a, b))
    # Python and NumPy scalars: NumPy's `a + b` (NEP 50 keeps Python scalars weak) as a 0-d array.
    for a, b in [(2, 3.5), (np.float32(1), 2.0), (2, np.float32(2)), (1, np.int8(1)), (np.int8(100), 100),
                 (True, 2), (np.uint8(3), np.int8(-1))]:
        with numpy_quiet():
            expected = np.asarray(a + b)
            got = memory_ops.add_arrays(a, b)
        assert isinstance(got, np.ndarray) and got.ndim == 0
        assert_same_array(got, expected)


@pytest.mark.parametrize("layout_a", LAYOUTS_1D)
@pytest.mark.parametrize("layout_b", ["contiguous", "neg_step2", "unaligned", "struct_field"])
@pytest.mark.parametrize("dtype", NATIVE + [np.int8], ids=idfn)
@pytest.mark.parametrize("n", [0, 1, 17, 1000, 2**16 + 5])
def test_add_layouts_1d(layout_a, layout_b, dtype, n):
    a, keep_a = make_layout(random_values(n, dtype, seed=5), layout_a)
    b, keep_b = make_layout(random_values(n, dtype, seed=6), layout_b)
    before = snapshot(a), snapshot(b)
    got = memory_ops.add_arrays(a, b)
    assert_same_array(got, numpy_add(a, b))
    assert got.flags.c_contiguous
    assert (snapshot(a), snapshot(b)) == before


@pytest.mark.parametrize("name_a", list(nd_views(np.arange(24.0))))
@pytest.mark.parametrize("name_b", ["c_3d", "f_3d", "neg_strides_3d", "5d_swapped", "0d", "empty_3x0"])
@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.float16], ids=idfn)
def test_add_nd_layouts(name_a, name_b, dtype):
    a = nd_views(random_values(24, dtype, seed=7))[name_a]
    views_b = nd_views(random_values(48, dtype, seed=8))
    # b: the named layout's kind of memory walk, but in a's shape when the shapes differ.
    b = views_b[name_b]
    if b.shape != a.shape:
        b = np.empty(a.shape[::-1], dtype=dtype).T if a.ndim > 1 else np.empty(a.shape, dtype=dtype)
        b[...] = random_values(a.size, dtype, seed=9).reshape(a.shape)
    before = snapshot(a), snapshot(b)
    got = memory_ops.add_arrays(a, b)
    assert_same_array(got, numpy_add(a, b))
    assert got.flags.c_contiguous
    assert (snapshot(a), snapshot(b)) == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=idfn)
def test_add_bit_exact_special_values(dtype):
    x = special_values(dtype)
    y = special_values(dtype)
    np.random.default_rng(5).shuffle(y)
    for a, b in [(x, y), (x[::-1], y), (x[::2], y[1::2]), (make_layout(x, "unaligned")[0], y),
                 (x, make_layout(y, "struct_field")[0]), (x, x), (x, -x)]:
        with numpy_quiet():
            got = memory_ops.add_arrays(a, b)
        assert_same_array(got, numpy_add(a, b))
    # Mixed float32 + float64 specials: the float32 side widens exactly.
    with numpy_quiet():
        other = special_values(np.float64 if dtype == np.float32 else np.float32)[: x.size]
        assert_same_array(memory_ops.add_arrays(x, other), numpy_add(x, other))


# ---- out= -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dta, dtb", [(np.float64, np.float64), (np.float32, np.float32), (np.int32, np.int32),
                                      (np.int8, np.int8), (np.float16, np.float16), (np.bool_, np.bool_),
                                      (np.int32, np.float32)], ids=idfn)
def test_add_out_returns_out_itself(dta, dtb):
    a = random_values(1000, dta, seed=10)
    b = random_values(1000, dtb, seed=11)
    expected = numpy_add(a, b)
    out = np.empty_like(expected)
    assert memory_ops.add_arrays(a, b, out=out) is out
    assert_same_array(out, expected)
    # A strided, reversed view of a bigger buffer as out: nothing outside it is written.
    big = np.zeros(3000, dtype=expected.dtype)
    view = big[::-3]
    want = big.copy()
    want[::-3] = expected
    assert memory_ops.add_arrays(a, b, out=view) is view
    assert_same_array(view, expected)
    np.testing.assert_array_equal(big, want, strict=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int8, np.float16], ids=idfn)
def test_add_out_is_an_input(dtype):
    for which in ("a", "b", "both"):
        a = random_values(2**16 + 5, dtype, seed=12)
        b = random_values(2**16 + 5, dtype, seed=13)
        if which == "both":
            b = a
        expected = numpy_add(a.copy(), b.copy())
        out = a if which in ("a", "both") else b
        with numpy_quiet():
            assert memory_ops.add_arrays(a, b, out=out) is out
        assert_same_array(out, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.int8, np.float16], ids=idfn)
@pytest.mark.parametrize("n", [10, 2**16 + 5])
def test_add_out_partially_overlapping_inputs(dtype, n):
    # (a, b, out) as functions of one buffer: every pair shares memory without being identical.
    cases = [
        (lambda x: x[:-1], lambda x, y: y[:-1], lambda x: x[1:]),       # out one ahead of a
        (lambda x: x[1:], lambda x, y: y[1:], lambda x: x[:-1]),        # out one behind a
        (lambda x: x[:-1], lambda x, y: x[1:], lambda x: x[1:]),        # out is b, a overlaps it
        (lambda x: x[1:], lambda x, y: x[:-1], lambda x: x[:-1]),
        (lambda x: x, lambda x, y: x[::-1], lambda x: x),               # b is a reversed, out = a
        (lambda x: x, lambda x, y: y, lambda x: x[::-1]),               # out is a reversed
        (lambda x: x[: n // 2], lambda x, y: y[: n // 2], lambda x: x[: n // 2 * 2 : 2]),
    ]
    for a_of, b_of, out_of in cases:
        x = random_values(n, dtype, seed=14)
        y = random_values(n, dtype, seed=15)
        a, b, out = a_of(x), b_of(x, y), out_of(x)
        expected = numpy_add(a.copy(), b.copy())
        with numpy_quiet():
            assert memory_ops.add_arrays(a, b, out=out) is out
        assert_same_array(out, expected)


def test_add_out_transpose_of_input():
    a = random_values(64 * 64, np.float64, seed=16).reshape(64, 64)
    b = random_values(64 * 64, np.float64, seed=17).reshape(64, 64)
    expected = numpy_add(a.copy(), b)
    out = a.T
    assert memory_ops.add_arrays(a, b, out=out) is out
    assert_same_array(out, expected)
    # b transposed onto itself, with a as the other operand.
    expected = numpy_add(a.copy(), b.T.copy())
    out = b
    assert memory_ops.add_arrays(a, b.T, out=out) is out
    assert_same_array(out, expected)


def test_add_out_0d():
    out = np.empty((), dtype=np.float64)
    assert memory_ops.add_arrays(np.array(1.5), np.array(2.25), out=out) is out
    assert_same_array(out, numpy_add(1.5, 2.25))


# ---- threads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NATIVE, ids=idfn)
def test_add_large_arrays(nthreads, dtype):
    a = random_values(2**20 + 3, dtype, seed=18)
    b = random_values(2**20 + 3, dtype, seed=19)
    assert_same_array(memory_ops.add_arrays(a, b), numpy_add(a, b))
    assert_same_array(memory_ops.add_arrays(a[::-3], b[::3]), numpy_add(a[::-3], b[::3]))
    c = a[: 1024 * 1023].reshape(1024, 1023)
    d = b[: 1024 * 1023].reshape(1023, 1024).T
    assert_same_array(memory_ops.add_arrays(c, d), numpy_add(c, d))


def test_add_self_overlapping_view_in_place_matches_numpy():
    # A writable view whose elements share memory (sliding windows over 6 values): NumPy's
    # `np.add(w, w, out=w)` adds every underlying element to itself exactly once ("as if there were
    # no overlap"); out may be the input itself and any strides are allowed, so add_arrays must agree.
    def windows(buf):
        return np.lib.stride_tricks.as_strided(buf, shape=(4, 3), strides=(8, 8), writeable=True)

    expected_base = np.arange(1.0, 7.0)
    w = windows(expected_base)
    np.add(w, w, out=w)
    np.testing.assert_array_equal(expected_base, np.arange(1.0, 7.0) * 2)  # NumPy's answer

    base = np.arange(1.0, 7.0)
    w = windows(base)
    assert memory_ops.add_arrays(w, w, out=w) is w
    np.testing.assert_array_equal(base, expected_base, strict=True)
