"""Argument checking: which calls raise TypeError / ValueError, what the messages name, and that a
failed call writes nothing."""

import re
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import memory_ops
from conftest import idfn, numpy_quiet, random_values, snapshot

BAD_FACTORS = [
    "2", b"2", None, 1j, complex(2, 0), np.complex64(1), np.complex128(0), [2.0], (2.0,), Decimal("2"),
    Fraction(1, 2), np.array([2.0]), np.array(2.0), np.array([2], dtype=np.int64), object(), np.str_("2"),
    np.datetime64("2020-01-01"), np.timedelta64(1, "s"),
]

GOOD_FACTORS = [
    2, -3, 2.5, True, False, np.int8(-2), np.uint8(3), np.int16(4), np.uint16(5), np.int32(-6), np.uint32(7),
    np.int64(8), np.uint64(9), np.float16(0.5), np.float32(0.25), np.float64(-1.5), np.bool_(True),
]


@pytest.mark.parametrize("factor", BAD_FACTORS, ids=lambda f: type(f).__name__ + (f"[{f.dtype}]" if hasattr(f, "dtype") else ""))
def test_bad_factor_raises_type_error(factor):
    a = random_values(100, np.float64)
    before = snapshot(a)
    with pytest.raises(TypeError, match="factor"):
        memory_ops.scale_copy(a, factor)
    with pytest.raises(TypeError, match="factor"):
        memory_ops.scale_copy(a, factor, out=np.empty_like(a))
    with pytest.raises(TypeError, match="factor"):
        memory_ops.scale_inplace(a, factor)
    assert snapshot(a) == before
    a32 = random_values(100, np.float32)
    before32 = snapshot(a32)
    with pytest.raises(TypeError):
        memory_ops.scale_inplace(a32, factor)
    assert snapshot(a32) == before32


@pytest.mark.parametrize("factor", GOOD_FACTORS, ids=idfn)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int8], ids=idfn)
def test_real_factors_are_accepted(dtype, factor):
    a = random_values(50, dtype)
    with numpy_quiet():
        expected = a * factor
        got = memory_ops.scale_copy(a, factor)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    if np.dtype(dtype).kind == "f":
        b = a.copy()
        assert memory_ops.scale_inplace(b, factor) is None


# ---- read-only inputs that are not real numbers -------------------------------------------------

BAD_INPUTS = [
    np.array(["a", "b"]),
    np.array([b"a", b"b"]),
    np.array([1, None], dtype=object),
    np.array([1.0, 2.0], dtype=object),
    None,
    np.ones(2, dtype=np.complex128),
    np.ones(2, dtype=np.complex64),
    ["x", "y"],
    [1 + 2j, 3],
    np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"),
    np.ones(2, dtype="timedelta64[s]"),
    "12",
    {"a": 1},
]
BAD_INPUT_IDS = [
    "str_array", "bytes_array", "object_none", "object_float", "None", "complex128", "complex64", "list_of_str",
    "list_complex", "datetime64", "timedelta64", "str", "dict",
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_non_real_inputs_raise_type_error_naming_the_argument(bad):
    good = np.ones(2)
    with pytest.raises(TypeError, match=r"'input'"):
        memory_ops.scale_copy(bad, 2.0)
    with pytest.raises(TypeError, match=r"'a'"):
        memory_ops.add_arrays(bad, good)
    with pytest.raises(TypeError, match=r"'b'"):
        memory_ops.add_arrays(good, bad)
    with pytest.raises(TypeError, match=r"'arr'"):
        memory_ops.safe_sum(bad)


# ---- scale_inplace's array ----------------------------------------------------------------------

INPLACE_BAD_TYPES = [
    [1.0, 2.0],
    (1.0, 2.0),
    np.float64(1.0),
    1.0,
    np.arange(4, dtype=np.int64),
    np.arange(4, dtype=np.int32),
    np.arange(4, dtype=np.uint8),
    np.ones(4, dtype=np.bool_),
    np.ones(4, dtype=np.float16),
    np.ones(4, dtype=">f8"),
    np.ones(4, dtype=">f4"),
    np.ones(4, dtype=np.complex128),
    np.ones(4, dtype=object),
    np.ones(4, dtype=np.longdouble),
]


@pytest.mark.parametrize("arr", INPLACE_BAD_TYPES,
                         ids=lambda a: type(a).__name__ + (f"[{a.dtype.str}]" if isinstance(a, np.ndarray) else ""))
def test_scale_inplace_rejects_non_float_arrays_with_type_error(arr):
    before = snapshot(arr) if isinstance(arr, np.ndarray) else None
    copy_before = list(arr) if isinstance(arr, (list, tuple)) else None
    with pytest.raises(TypeError):
        memory_ops.scale_inplace(arr, 2.0)
    with pytest.raises(TypeError):
        memory_ops.scale_inplace(arr, 2)
    if before is not None:
        assert snapshot(arr) == before
    if copy_before is not None:
        assert list(arr) == copy_before


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=idfn)
def test_scale_inplace_read_only_raises_value_error(dtype):
    base = random_values(1000, dtype)
    for arr in (base.copy(), base.copy()[::-2], np.broadcast_to(base[:1], (10,))):
        arr.flags.writeable = False
        before = snapshot(arr)
        with pytest.raises(ValueError, match="read-only"):
            memory_ops.scale_inplace(arr, 2.0)
        with pytest.raises(ValueError):
            memory_ops.scale_inplace(arr, np.float64(2.0))
        assert snapshot(arr) == before
    # A read-only view of a writable buffer: the buffer is not written either.
    owner = base.copy()
    view = owner[::3]
    view.flags.writeable = False
    with pytest.raises(ValueError):
        memory_ops.scale_inplace(view, 3.0)
    np.testing.assert_array_equal(owner, base, strict=True)
    # A read-only array built over immutable bytes.
    frozen = np.frombuffer(base.tobytes(), dtype=dtype)
    with pytest.raises(ValueError):
        memory_ops.scale_inplace(frozen, 3.0)
    np.testing.assert_array_equal(frozen, base, strict=True)


# ---- out= ---------------------------------------------------------------------------------------


def _out_cases():
    a64 = np.arange(6.0)
    a32 = np.arange(6, dtype=np.float32)
    i32 = np.arange(6, dtype=np.int32)
    i8 = np.arange(6, dtype=np.int8)
    return [
        # (call, out, expected error)
        ("scale_copy", (a64, 2.0), np.empty(6, np.float32), TypeError),
        ("scale_copy", (a64, 2.0), np.empty(6, ">f8"), TypeError),
        ("scale_copy", (a32, 2.0), np.empty(6, np.float64), TypeError),       # NEP 50: float32 result
        ("scale_copy", (a32, np.float64(2.0)), np.empty(6, np.float32), TypeError),  # float64 result
        ("scale_copy", (i32, 2), np.empty(6, np.int64), TypeError),
        ("scale_copy", (i32, 2.0), np.empty(6, np.int32), TypeError),         # float64 result
        ("scale_copy", (i8, 2), np.empty(6, np.int16), TypeError),
        ("scale_copy", (a64, 2.0), [0.0] * 6, TypeError),
        ("scale_copy", (a64, 2.0), bytearray(48), TypeError),
        ("scale_copy", (a64, 2.0), np.empty(7), ValueError),
        ("scale_copy", (a64, 2.0), np.empty((1, 6)), ValueError),
        ("scale_copy", (a64, 2.0), np.empty((6, 1)), ValueError),
        ("scale_copy", (a64, 2.0), np.empty(()), ValueError),
        ("scale_copy", (a64, 2.0), "read-only", ValueError),
        ("scale_copy", (i8, 3), "read-only", ValueError),
        ("add_arrays", (a64, a64), np.empty(6, np.float32), TypeError),
        ("add_arrays", (a32, i32), np.empty(6, np.float32), TypeError),       # float64 result
        ("add_arrays", (i8, i8), np.empty(6, np.int32), TypeError),
        ("add_arrays", (a64, a64), [0.0] * 6, TypeError),
        ("add_arrays", (a64, a64), np.empty(5), ValueError),
        ("add_arrays", (a64, a64), np.empty((2, 3)), ValueError),
        ("add_arrays", (a64, a64), "read-only", ValueError),
        ("add_arrays", (i8, i8), "read-only", ValueError),
    ]


@pytest.mark.parametrize("case", _out_cases(), ids=lambda c: f"{c[0]}-{c[3].__name__}")
def test_bad_out_raises_and_writes_nothing(case):
    name, args, out, error = case
    fn = getattr(memory_ops, name)
    if isinstance(out, str):  # "read-only": the right dtype and shape, not writable
        with numpy_quiet():
            expected = getattr(np, {"scale_copy": "multiply", "add_arrays": "add"}[name])(*args)
        out = np.zeros_like(expected)
        out.flags.writeable = False
    before = snapshot(out) if isinstance(out, np.ndarray) else bytes(out) if isinstance(out, bytearray) else list(out)
    inputs_before = [snapshot(x) for x in args if isinstance(x, np.ndarray)]
    with pytest.raises(error, match="out"):
        fn(*args, out=out)
    after = snapshot(out) if isinstance(out, np.ndarray) else bytes(out) if isinstance(out, bytearray) else list(out)
    assert after == before
    assert [snapshot(x) for x in args if isinstance(x, np.ndarray)] == inputs_before


def _masked(dtype=np.float64):
    return np.ma.array(np.arange(1.0, 7.0, dtype=dtype), mask=[0, 1, 0, 0, 1, 0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=idfn)
def test_masked_arrays_raise_type_error_and_are_left_alone(dtype):
    """The kernels would use (or write over) the masked values where NumPy honours the mask: a masked
    sum of 1..6 without 2 and 5 is 14, the data's sum 21. So a MaskedArray anywhere is refused."""
    m, plain = _masked(dtype), np.ones(6, dtype)
    before = (snapshot(m.data), m.mask.copy())
    calls = {
        "arr": [lambda: memory_ops.safe_sum(m), lambda: memory_ops.scale_inplace(m, 2.0)],
        "input": [lambda: memory_ops.scale_copy(m, 2.0), lambda: memory_ops.scale_copy(m, 2.0, out=np.empty(6, dtype))],
        "a": [lambda: memory_ops.add_arrays(m, plain)],
        "b": [lambda: memory_ops.add_arrays(plain, m), lambda: memory_ops.add_arrays(plain, m, out=np.empty(6, dtype))],
        "out": [lambda: memory_ops.scale_copy(plain, 2.0, out=m), lambda: memory_ops.add_arrays(plain, plain, out=m)],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(TypeError, match=f"argument '{name}' is a numpy.ma.MaskedArray; memory_ops ignores masks"):
                fn()
    assert (snapshot(m.data), m.mask.tolist()) == (before[0], before[1].tolist())
    assert m.sum() == 14
    # What the message offers works: the data, filled or compressed values are plain arrays.
    assert memory_ops.safe_sum(m.filled(0)) == memory_ops.safe_sum(m.compressed()) == 14
    assert memory_ops.safe_sum(m.data) == 21


def test_other_ndarray_subclasses_are_still_accepted(tmp_path):
    class Sub(np.ndarray):
        pass

    mapped = np.memmap(tmp_path / "data.bin", dtype=np.float64, mode="w+", shape=(4,))
    mapped[:] = [1.0, 2.0, 3.0, 4.0]
    for a in (np.arange(1.0, 5.0).view(Sub), mapped):
        assert memory_ops.safe_sum(a) == 10.0
        assert np.array_equal(memory_ops.scale_copy(a, 2.0), np.asarray(a) * 2.0)
        memory_ops.scale_inplace(a, 2.0)
        assert memory_ops.safe_sum(a) == 20.0


def test_out_is_keyword_only():
    a = np.arange(3.0)
    with pytest.raises(TypeError):
        memory_ops.scale_copy(a, 2.0, np.empty(3))
    with pytest.raises(TypeError):
        memory_ops.add_arrays(a, a, np.empty(3))


def test_missing_and_extra_arguments_raise_type_error():
    a = np.arange(3.0)
    with pytest.raises(TypeError):
        memory_ops.scale_copy(a)
    with pytest.raises(TypeError):
        memory_ops.scale_inplace(a)
    with pytest.raises(TypeError):
        memory_ops.add_arrays(a)
    with pytest.raises(TypeError):
        memory_ops.safe_sum()
    with pytest.raises(TypeError):
        memory_ops.safe_sum(a, a)


# ---- shapes: add_arrays never broadcasts --------------------------------------------------------

SHAPE_PAIRS = [
    ((2, 2), (4,)),
    ((3,), (1,)),
    ((1,), (3,)),
    ((2, 3), (3, 2)),
    ((6,), (2, 3)),
    ((), (1,)),
    ((1, 1), ()),
    ((0,), (3, 0)),
    ((3, 0), (0, 3)),
    ((2, 1, 3), (2, 3)),
    ((2, 3, 4, 5, 6), (2, 3, 4, 5, 1)),
]


@pytest.mark.parametrize("shape_a, shape_b", SHAPE_PAIRS, ids=str)
def test_add_different_shapes_raise_value_error_naming_both(shape_a, shape_b):
    a = np.ones(shape_a)
    b = np.ones(shape_b, dtype=np.float32)
    for x, y in ((a, b), (b, a)):
        with pytest.raises(ValueError) as err:
            memory_ops.add_arrays(x, y)
        message = str(err.value)
        assert str(x.shape) in message and str(y.shape) in message, message
        with pytest.raises(ValueError):
            memory_ops.add_arrays(x, y, out=np.empty(np.broadcast_shapes(x.shape, y.shape)
                                                     if _broadcastable(x.shape, y.shape) else x.shape))


def _broadcastable(s1, s2):
    try:
        np.broadcast_shapes(s1, s2)
        return True
    except ValueError:
        return False


def test_add_lists_of_different_lengths_raise_value_error():
    with pytest.raises(ValueError, match=re.escape("(2,)") + ".*" + re.escape("(3,)")):
        memory_ops.add_arrays([1, 2], [1, 2, 3])


# ---- threads and SIMD settings ------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, -(2**31)])
def test_set_num_threads_below_one_raises_value_error(n):
    before = memory_ops.get_num_threads()
    with pytest.raises(ValueError):
        memory_ops.set_num_threads(n)
    assert memory_ops.get_num_threads() == before
    with pytest.raises(ValueError):
        with memory_ops.threads(n):
            pass  # pragma: no cover
    assert memory_ops.get_num_threads() == before


@pytest.mark.parametrize("name", ["bogus", "", "AVX2", "avx2 ", "neon64x", "sse"])
def test_unknown_simd_target_raises_value_error(name):
    before = memory_ops.simd_arch()
    with pytest.raises(ValueError) as err:
        memory_ops._core._set_simd(name)
    assert repr(name) in str(err.value) or f"'{name}'" in str(err.value)
    assert memory_ops.simd_arch() == before


@pytest.mark.parametrize("factor", [10**400, -(10**400)], ids=["+1e400", "-1e400"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int8], ids=idfn)
def test_python_int_factor_too_big_for_any_dtype_raises_like_numpy(dtype, factor):
    a = random_values(10, dtype)
    before = snapshot(a)
    with pytest.raises(Exception) as numpy_error:
        a * factor
    with pytest.raises(numpy_error.type):
        memory_ops.scale_copy(a, factor)
    if np.dtype(dtype).kind == "f":
        with pytest.raises(numpy_error.type):
            memory_ops.scale_inplace(a, factor)
    assert snapshot(a) == before


def test_stream_hook_refuses_misaligned_buffers():
    n = 1000
    misaligned = np.frombuffer(bytearray(8 * n + 1), dtype=np.float64, offset=1, count=n)
    assert not misaligned.flags.aligned
    with pytest.raises(TypeError, match="aligned"):
        memory_ops._core._stream("sum", None, misaligned, None)
    assert memory_ops._core._stream("sum", None, np.ones(n), None) == n
