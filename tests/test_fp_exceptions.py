"""Floating-point exceptions (overflow, invalid, underflow) of scale and add, reported as NumPy reports
them for a * f and a + b: np.errstate decides (ignore, warn, raise, call), the messages are NumPy's,
and the exceptions of every thread count, not only the calling thread's. A non-finite safe_sum is
reported as NumPy reports a.sum() (overflow, invalid value "encountered in reduce")."""

import warnings

import numpy as np
import pytest

import memory_ops
from conftest import assert_same_array, float_bits, mxcsr_bits_set

BIG = 2**20 + 3  # past the serial threshold: with 2 threads the last element is the team thread's

OPS = ["scale_copy", "scale_copy_out", "scale_inplace", "add_arrays", "add_arrays_out"]


def _case(op, kind, dtype, n):
    """(ours, numpy): two calls doing op on fresh copies of the same data, where the last element
    raises `kind` (the others are ordinary)."""
    info = np.finfo(dtype)
    a = np.full(n, 1.5, dtype)
    b = np.full(n, 0.25, dtype)
    f = 2.0
    if kind == "over":
        a[-1] = b[-1] = info.max
    elif kind == "invalid":
        a[-1], b[-1] = np.inf, -np.inf
        if op.startswith("scale"):
            a[:], f = 0.0, np.inf  # 0 * inf
            a[:-1] = 1.5
    elif kind == "under":
        a[-1] = info.smallest_normal
        f = 0.3 if op.startswith("scale") else f  # a subnormal, inexact product

    def run(library):
        x, y = a.copy(), b.copy()
        if op == "scale_copy":
            return memory_ops.scale_copy(x, f) if library == "ours" else x * f
        if op == "scale_copy_out":
            out = np.empty_like(x)
            return memory_ops.scale_copy(x, f, out=out) if library == "ours" else np.multiply(x, f, out=out)
        if op == "scale_inplace":
            if library == "ours":
                memory_ops.scale_inplace(x, f)
            else:
                x *= f
            return x
        if op == "add_arrays":
            return memory_ops.add_arrays(x, y) if library == "ours" else x + y
        out = np.empty_like(x)
        return memory_ops.add_arrays(x, y, out=out) if library == "ours" else np.add(x, y, out=out)

    return (lambda: run("ours")), (lambda: run("numpy"))


def _messages(record):
    return [(w.category, str(w.message)) for w in record]


def _two_kinds(op):
    """(ours, numpy) for op on 2 threads where the first element overflows (in the calling thread's
    chunk) and the last raises another exception in the team thread's chunk: underflow for scale
    (the smallest subnormal times 1.5), invalid for add (inf + -inf)."""
    a = np.full(BIG, 1.5)
    b = np.full(BIG, 0.25)
    a[0] = b[0] = np.finfo(np.float64).max
    if op.startswith("scale"):
        a[-1] = np.finfo(np.float64).smallest_subnormal
    else:
        a[-1], b[-1] = np.inf, -np.inf

    def run(library):
        x, y = a.copy(), b.copy()
        ours = library == "ours"
        if op == "scale_copy":
            return memory_ops.scale_copy(x, 1.5) if ours else x * 1.5
        if op == "scale_inplace":
            if ours:
                memory_ops.scale_inplace(x, 1.5)
            else:
                x *= 1.5
            return x
        return memory_ops.add_arrays(x, y) if ours else x + y

    return (lambda: run("ours")), (lambda: run("numpy"))


@pytest.mark.parametrize("policy", ["warn", "raise", "call"])
@pytest.mark.parametrize("op", ["scale_copy", "scale_inplace", "add_arrays"])
def test_exceptions_of_both_threads_are_reported_together_in_numpy_s_order(op, policy):
    ours, numpys = _two_kinds(op)
    reported = {}
    for library, run in (("numpy", numpys), ("ours", ours)):
        calls = []
        with memory_ops.threads(2), np.errstate(all=policy, call=lambda *args: calls.append(args)):
            if policy == "warn":
                with pytest.warns(RuntimeWarning) as record:
                    run()
                reported[library] = _messages(record)
            elif policy == "raise":
                with pytest.raises(FloatingPointError) as raised:
                    run()
                reported[library] = str(raised.value)
            else:
                run()
                reported[library] = calls
    assert reported["ours"] == reported["numpy"]
    if policy != "raise":
        assert len(reported["ours"]) == 2


@pytest.mark.parametrize("op", ["scale_copy_out", "scale_inplace", "add_arrays_out"])
def test_under_errstate_raise_the_output_is_already_written_as_numpy_s_is(op):
    a = np.full(BIG, 1.5)
    a[-1] = np.finfo(np.float64).max
    written = {}
    for library in ("numpy", "ours"):
        ours = library == "ours"
        x, out = a.copy(), np.zeros(BIG)
        with memory_ops.threads(2), np.errstate(over="raise"), pytest.raises(FloatingPointError):
            if op == "scale_copy_out":
                memory_ops.scale_copy(x, 4.0, out=out) if ours else np.multiply(x, 4.0, out=out)
            elif op == "scale_inplace":
                memory_ops.scale_inplace(x, 4.0) if ours else np.multiply(x, 4.0, out=x)
            else:
                memory_ops.add_arrays(x, x, out=out) if ours else np.add(x, x, out=out)
        written[library] = x if op == "scale_inplace" else out
    assert_same_array(written["ours"], written["numpy"])
    assert written["ours"][0] != 0 and np.isinf(written["ours"][-1])


def test_add_underflow_under_the_callers_flush_to_zero_is_reported_like_numpy_s():
    """An add underflows only when flush-to-zero flushes a subnormal sum; reported so under FTZ alone
    and under FTZ with DAZ (MXCSR bits 15 and 6)."""
    a = np.full(BIG, 1.5)
    b = np.full(BIG, 0.25)
    a[-1], b[-1] = float.fromhex("0x1.0000000000001p-1022"), -(2.0**-1022)  # exact sum 2^-1074
    for bits in (0x8000, 0x8040):
        reported = {}
        for library in ("numpy", "ours"):
            with mxcsr_bits_set(bits), memory_ops.threads(2), np.errstate(under="warn"):
                with pytest.warns(RuntimeWarning) as record:
                    result = memory_ops.add_arrays(a, b) if library == "ours" else a + b
            reported[library] = (_messages(record), result)
        assert reported["ours"][0] == reported["numpy"][0]
        assert "underflow" in str(reported["ours"][0][0][1])
        assert_same_array(reported["ours"][1], reported["numpy"][1])
        assert reported["ours"][1][-1] == 0.0  # flushed


@pytest.mark.parametrize("n", [16, BIG])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["over", "invalid"])
@pytest.mark.parametrize("op", OPS)
def test_exceptions_warn_like_numpy(op, kind, dtype, n, nthreads):
    ours, numpys = _case(op, kind, dtype, n)
    with pytest.warns(RuntimeWarning) as expected_warnings:
        expected = numpys()
    with pytest.warns(RuntimeWarning) as got_warnings:
        got = ours()
    assert _messages(got_warnings) == _messages(expected_warnings)
    assert_same_array(got, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["over", "invalid"])
@pytest.mark.parametrize("op", OPS)
def test_exceptions_raise_like_numpy_under_errstate_raise(op, kind, dtype):
    ours, numpys = _case(op, kind, dtype, BIG)
    with memory_ops.threads(2), np.errstate(all="raise"):
        with pytest.raises(FloatingPointError) as expected:
            numpys()
        with pytest.raises(FloatingPointError) as got:
            ours()
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("op", OPS)
def test_exceptions_reach_the_errcall_like_numpy(op):
    ours, numpys = _case(op, "over", np.float64, BIG)
    calls = {"numpy": [], "ours": []}
    for library, run in (("numpy", numpys), ("ours", ours)):
        with memory_ops.threads(2), np.errstate(all="call", call=lambda *args, _l=library: calls[_l].append(args)):
            run()
    assert calls["ours"] == calls["numpy"]
    assert len(calls["ours"]) == 1


@pytest.mark.parametrize("op", OPS)
def test_ignored_exceptions_stay_silent(op, nthreads):
    # (pytest turns any warning into an error here)
    for kind in ("over", "invalid"):
        ours, numpys = _case(op, kind, np.float64, BIG)
        with np.errstate(all="ignore"):
            assert_same_array(ours(), numpys())


@pytest.mark.parametrize("op", ["scale_copy", "scale_inplace"])
def test_underflow_is_ignored_by_default_and_warns_when_asked(op, nthreads):
    ours, numpys = _case(op, "under", np.float64, BIG)
    assert_same_array(ours(), numpys())  # NumPy's default ignores underflow
    with np.errstate(under="warn"):
        with pytest.warns(RuntimeWarning) as expected_warnings:
            numpys()
        with pytest.warns(RuntimeWarning) as got_warnings:
            ours()
    assert _messages(got_warnings) == _messages(expected_warnings)
    assert "underflow" in str(got_warnings[0].message)


def test_only_the_kernels_own_exceptions_count_and_the_callers_flags_survive():
    """Overflow and invalid flags the calling thread raised before are not the kernel's (no warning),
    and the thread still has them afterwards."""
    a = np.full(BIG, 1.5)
    for n in (16, BIG):
        for threads in (1, 2):
            with mxcsr_bits_set(0x09) as mxcsr:  # invalid, overflow
                with memory_ops.threads(threads):
                    got = [memory_ops.scale_copy(a[:n], 2.0), memory_ops.add_arrays(a[:n], a[:n])]
                after = mxcsr()
            assert after & 0x09 == 0x09
            assert_same_array(got[0], a[:n] * 2.0)
            assert_same_array(got[1], a[:n] + a[:n])



# ---- float16 results: computed in float32, converted after the kernel -----------------------------

HALF = np.array([1.5, 65504.0, 1e-4, -2.0] * 5000, np.float16)  # 20,000: past the serial threshold
HALF_CASES = {  # name -> (ours, numpy); NumPy's float16 loops report the conversion as the ufunc's
    "scale_copy overflow": (lambda: memory_ops.scale_copy(HALF, 3), lambda: HALF * 3),
    "scale_copy underflow": (lambda: memory_ops.scale_copy(HALF, 1e-4), lambda: HALF * 1e-4),
    "scale_copy out= overflow": (lambda: memory_ops.scale_copy(HALF, 3, out=np.empty_like(HALF)),
                                 lambda: np.multiply(HALF, 3, out=np.empty_like(HALF))),
    "add_arrays overflow": (lambda: memory_ops.add_arrays(HALF, HALF), lambda: HALF + HALF),
    "add_arrays out= overflow": (lambda: memory_ops.add_arrays(HALF, HALF, out=np.empty_like(HALF)),
                                 lambda: np.add(HALF, HALF, out=np.empty_like(HALF))),
}


@pytest.mark.parametrize("case", list(HALF_CASES))
def test_float16_results_report_the_op_s_exceptions_like_numpy(case, nthreads):
    ours, numpys = HALF_CASES[case]
    reported = {}
    for library, run in (("numpy", numpys), ("ours", ours)):
        with np.errstate(all="warn"), warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            result = run()
        reported[library] = (_messages(record), result)
    assert reported["ours"][0] == reported["numpy"][0]
    assert reported["ours"][0] and all("in cast" not in m for _, m in reported["ours"][0])
    assert_same_array(reported["ours"][1], reported["numpy"][1])
    with np.errstate(all="raise"):
        with pytest.raises(FloatingPointError) as expected:
            numpys()
        with pytest.raises(FloatingPointError) as got:
            ours()
    assert str(got.value) == str(expected.value)
    with np.errstate(all="ignore"):  # (any warning is an error here)
        assert_same_array(ours(), numpys())


# ---- safe_sum ------------------------------------------------------------------------------------

SUM_N = 11 * 2**13 + 11  # 12 blocks: past the serial threshold, shared between the threads


def _spread(values, dtype, n=SUM_N):
    """An array of n zeros holding `values` far apart (different blocks, lanes and threads)."""
    a = np.zeros(n, dtype)
    a[np.linspace(0, n - 1, len(values)).astype(int)] = values
    return a


def _lanes_overflow_both_ways():
    """Finite float64 values whose sum overflows in both directions: 1e308 twice at elements 0 and 16,
    -1e308 twice at 1 and 17 (safe_sum's lanes 0 and 1; NumPy's pairwise accumulators 0 and 1)."""
    a = np.zeros(32)
    a[[0, 16]], a[[1, 17]] = 1e308, -1e308
    return a


def _signalling_nan(dtype, n):
    bits = {np.float64: (np.uint64, 0x7FF0000000000001), np.float32: (np.uint32, 0x7F800001)}[dtype]
    a = np.zeros(n, bits[0])
    a[n // 2] = bits[1]
    return a.view(dtype)


SUM_CASES = {  # name -> (array, the warnings NumPy's a.sum() gives it)
    "finite overflow": (np.array([1.5e308, 1.5e308]), ["overflow"]),
    "finite overflow, spread": (_spread([1e308] * 3, np.float64), ["overflow"]),
    "finite negative overflow, spread": (_spread([-1e308, 0.5, -1e308], np.float64), ["overflow"]),
    "finite overflow both ways": (_lanes_overflow_both_ways(), ["overflow", "invalid"]),
    "inf - inf": (np.array([np.inf, -np.inf]), ["invalid"]),
    "inf - inf, spread": (_spread([np.inf, 1.0, -np.inf], np.float64), ["invalid"]),
    "inf - inf, float32, spread": (_spread([np.inf, 1.0, -np.inf], np.float32), ["invalid"]),
    "signalling NaN": (_signalling_nan(np.float64, 5), ["invalid"]),
    "signalling NaN, float32, spread": (_signalling_nan(np.float32, SUM_N), ["invalid"]),
    "quiet NaN": (_spread([np.nan, np.inf, 1e308], np.float64), []),
    "quiet NaN and inf - inf": (_spread([np.nan, np.inf, -np.inf], np.float64), ["invalid"]),
    "infinities of one sign": (_spread([np.inf, 1e308, np.inf], np.float64), []),
}


def _sum_messages(fn):
    with np.errstate(all="warn"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn()
    return result, _messages(record)


@pytest.mark.parametrize("case", list(SUM_CASES))
def test_non_finite_sums_warn_like_numpy(case, nthreads):
    a, kinds = SUM_CASES[case]
    expected, expected_warnings = _sum_messages(a.sum)
    got, got_warnings = _sum_messages(lambda: memory_ops.safe_sum(a))
    assert got_warnings == expected_warnings
    assert [str(m).split()[0] for _, m in got_warnings] == kinds
    assert all(category is RuntimeWarning and str(m).endswith("encountered in reduce") for category, m in got_warnings)
    assert float_bits(np.float64(got)) == float_bits(np.float64(expected))  # the same inf or NaN


@pytest.mark.parametrize("view", ["reversed", "strided"])
def test_non_finite_sums_of_views_warn_like_numpy(view):
    for case in ("finite overflow, spread", "inf - inf, spread", "quiet NaN"):
        a = SUM_CASES[case][0]
        v = a[::-1] if view == "reversed" else np.repeat(a, 2)[::2]
        assert _sum_messages(lambda: memory_ops.safe_sum(v))[1] == _sum_messages(v.sum)[1]


@pytest.mark.parametrize("case", ["finite overflow, spread", "inf - inf, spread", "signalling NaN"])
def test_non_finite_sums_raise_and_call_like_numpy(case):
    a = SUM_CASES[case][0]
    with np.errstate(all="raise"):
        with pytest.raises(FloatingPointError) as expected:
            a.sum()
        with pytest.raises(FloatingPointError) as got:
            memory_ops.safe_sum(a)
    assert str(got.value) == str(expected.value)
    calls = {"numpy": [], "ours": []}
    for library, run in (("numpy", a.sum), ("ours", lambda: memory_ops.safe_sum(a))):
        with np.errstate(all="call", call=lambda *args, _l=library: calls[_l].append(args)):
            run()
    assert calls["ours"] == calls["numpy"] and len(calls["ours"]) == 1


def test_non_finite_sums_stay_silent_when_ignored():
    # (pytest turns any warning into an error here)
    with np.errstate(all="ignore"):
        for a, _ in SUM_CASES.values():
            assert float_bits(np.float64(memory_ops.safe_sum(a))) == float_bits(np.float64(a.sum()))


def test_float32_sums_do_not_overflow_in_float64():
    """NumPy sums float32 in float32 and overflows at 3.4e38; safe_sum's float64 accumulator does not."""
    a = _spread([3e38, 3e38, 3e38], np.float32)
    assert memory_ops.safe_sum(a) == 3 * float(np.float32(3e38))  # and no warning (an error here)
    with pytest.warns(RuntimeWarning, match="overflow encountered in reduce"):
        assert np.isinf(a.sum())
