"""Property tests (hypothesis): random shapes, dtypes, slicings and factors, NumPy as the oracle.

Every test here runs under every SIMD target this CPU supports (the module-level `simd` fixture).
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import memory_ops
from conftest import assert_same_array, numpy_quiet, same_view, snapshot

pytestmark = [
    pytest.mark.usefixtures("simd"),
    # hypothesis, while reporting a failing example, touches every loaded module's attributes;
    # mypy_extensions (installed here) warns on `TypedDict` access, and warnings are errors: without
    # this a failing property turns into a pytest INTERNALERROR instead of a readable failure.
    pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"),
]

DTYPES = [np.float32, np.float64, np.int32, np.int64, np.int8, np.uint16, np.float16, np.bool_, ">f8"]
SCALAR_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                 np.uint32, np.uint64, np.bool_]

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)

SPECIAL_FACTORS = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 1e-300, 1e-40, 3.4e38, 1e39,
                   65504.0, 1e-8, 0.5, -1.0]

factors = st.one_of(
    st.floats(),                                   # any float: NaN, infinities, subnormals
    st.sampled_from(SPECIAL_FACTORS),
    st.integers(-300, 300),
    st.integers(-(2**70), 2**70),                  # out of range for most integer dtypes
    st.booleans(),
    st.sampled_from(SCALAR_DTYPES).flatmap(lambda t: hnp.from_dtype(np.dtype(t))),  # NumPy scalars
)


@st.composite
def views_of_shape(draw, dtype, shape):
    """(view, base): a view of the given shape over a bigger C-ordered base, with random steps
    (negative included) and a random axis order."""
    ndim = len(shape)
    steps = [draw(st.sampled_from([1, -1, 2, -2, 3])) for _ in range(ndim)]
    perm = draw(st.permutations(range(ndim))) if ndim else []
    base_shape = tuple(shape[p] * abs(steps[p]) for p in perm)
    base = draw(hnp.arrays(np.dtype(dtype), base_shape))
    if ndim == 0:
        return base[...], base  # a 0-d view (base[()] would be a scalar)
    view = base[tuple(slice(None, None, steps[p]) for p in perm)].transpose(np.argsort(perm))
    assert view.shape == tuple(shape)
    return view, base


@st.composite
def sliced_arrays(draw, dtypes=DTYPES):
    """(view, base): a random array with random per-axis slices (any steps) and a random transpose."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    base = draw(hnp.arrays(dtype, draw(shapes)))
    view = base[tuple(draw(st.slices(n)) for n in base.shape)] if base.ndim else base
    if view.ndim > 1 and draw(st.booleans()):
        view = view.transpose(draw(st.permutations(range(view.ndim))))
    return view, base


def _expect_numpy(fn):
    """NumPy's answer, or the exception NumPy raises."""
    with numpy_quiet():
        try:
            return np.asarray(fn()), None
        except Exception as e:  # noqa: BLE001 - any NumPy error must be mirrored
            return None, e


# ---- scale_copy ---------------------------------------------------------------------------------


@PROPS
@given(xb=sliced_arrays(), factor=factors)
def test_scale_copy_matches_numpy(xb, factor):
    x, base = xb
    before = snapshot(base)
    expected, error = _expect_numpy(lambda: x * factor)
    if error is not None:
        with pytest.raises(type(error)), numpy_quiet():
            memory_ops.scale_copy(x, factor)
    else:
        with numpy_quiet():
            got = memory_ops.scale_copy(x, factor)
        assert_same_array(got, expected)
        assert got.flags.c_contiguous
    assert snapshot(base) == before


@PROPS
@given(data=st.data(), shape=shapes, dtype=st.sampled_from(DTYPES), factor=factors)
def test_scale_copy_into_strided_out_matches_numpy(data, shape, dtype, factor):
    x, _ = data.draw(views_of_shape(dtype, shape))
    expected, error = _expect_numpy(lambda: x * factor)
    assume(error is None)
    out, out_base = data.draw(views_of_shape(expected.dtype, shape))
    want_base = out_base.copy()
    same_view(out, out_base, want_base)[...] = expected
    with numpy_quiet():
        got = memory_ops.scale_copy(x, factor, out=out)
    assert got is out
    assert_same_array(out, expected)
    assert_same_array(out_base, want_base)  # nothing outside `out` was written


# ---- scale_inplace ------------------------------------------------------------------------------


@PROPS
@given(xb=sliced_arrays(dtypes=[np.float32, np.float64]), factor=factors)
def test_scale_inplace_matches_numpy(xb, factor):
    x, base = xb
    want_base = base.copy()
    want = same_view(x, base, want_base)
    with numpy_quiet():
        try:
            want *= factor
        except Exception as error:  # noqa: BLE001
            with pytest.raises(type(error)):
                memory_ops.scale_inplace(x, factor)
            assert snapshot(base) == snapshot(want_base)
            return
        assert memory_ops.scale_inplace(x, factor) is None
    assert_same_array(base, want_base)  # the view's elements as NumPy's, the rest untouched


@PROPS
@given(xb=sliced_arrays(dtypes=[np.int32, np.int64, np.int8, np.uint16, np.float16, np.bool_, ">f8", ">f4"]),
       factor=factors)
def test_scale_inplace_rejects_other_dtypes_untouched(xb, factor):
    x, base = xb
    before = snapshot(base)
    with pytest.raises(TypeError):
        memory_ops.scale_inplace(x, factor)
    assert snapshot(base) == before


# ---- add_arrays ---------------------------------------------------------------------------------


@PROPS
@given(data=st.data(), shape=shapes, dta=st.sampled_from(DTYPES), dtb=st.sampled_from(DTYPES))
def test_add_arrays_matches_numpy(data, shape, dta, dtb):
    a, base_a = data.draw(views_of_shape(dta, shape))
    b, base_b = data.draw(views_of_shape(dtb, shape))
    before = snapshot(base_a), snapshot(base_b)
    expected, error = _expect_numpy(lambda: a + b)
    assert error is None
    with numpy_quiet():
        got = memory_ops.add_arrays(a, b)
    assert_same_array(got, expected)
    assert got.flags.c_contiguous
    assert (snapshot(base_a), snapshot(base_b)) == before
    # Into a strided out of NumPy's dtype.
    out, out_base = data.draw(views_of_shape(expected.dtype, shape))
    want_base = out_base.copy()
    same_view(out, out_base, want_base)[...] = expected
    with numpy_quiet():
        assert memory_ops.add_arrays(a, b, out=out) is out
    assert_same_array(out_base, want_base)


@PROPS
@given(sa=shapes, sb=shapes)
def test_add_arrays_never_broadcasts(sa, sb):
    assume(sa != sb)
    a, b = np.zeros(sa), np.ones(sb)
    with pytest.raises(ValueError) as err:
        memory_ops.add_arrays(a, b)
    assert str(sa) in str(err.value) and str(sb) in str(err.value)


# ---- out= overlapping the inputs ----------------------------------------------------------------


@st.composite
def overlapping_1d(draw, count=2):
    """A buffer and `count` equal-length 1-d views of it (random starts and steps, negative too)."""
    n = draw(st.integers(1, 40))
    views = []
    for _ in range(count):
        step = draw(st.sampled_from([1, -1, 2, -2, 3]))
        span = (n - 1) * abs(step) + 1
        start = draw(st.integers(0, 8))
        views.append((start, step, span))
    size = max(start + span for start, _, span in views)
    out = []
    for start, step, span in views:
        out.append(slice(start, start + span, step) if step > 0 else slice(start + span - 1, (start - 1) if start else None, step))
    return size, out


@PROPS
@given(layout=overlapping_1d(count=2), dtype=st.sampled_from([np.float64, np.float32, np.int32, np.int8, np.float16]),
       seed=st.integers(0, 2**32 - 1))
def test_scale_copy_out_overlapping_input_matches_numpy_on_copies(layout, dtype, seed):
    size, (s_in, s_out) = layout
    buf = (np.random.default_rng(seed).standard_normal(size) * 50).astype(dtype)
    x, out = buf[s_in], buf[s_out]
    assert x.shape == out.shape
    factor = 3 if np.dtype(dtype).kind == "i" else -1.5
    with numpy_quiet():
        expected = x.copy() * factor
        assert memory_ops.scale_copy(x, factor, out=out) is out
    assert_same_array(out, expected)


@PROPS
@given(layout=overlapping_1d(count=3), dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.float16]),
       seed=st.integers(0, 2**32 - 1))
def test_add_arrays_out_overlapping_inputs_matches_numpy_on_copies(layout, dtype, seed):
    size, (s_a, s_b, s_out) = layout
    buf = (np.random.default_rng(seed).standard_normal(size) * 50).astype(dtype)
    a, b, out = buf[s_a], buf[s_b], buf[s_out]
    with numpy_quiet():
        expected = a.copy() + b.copy()
        assert memory_ops.add_arrays(a, b, out=out) is out
    assert_same_array(out, expected)


# ---- safe_sum -----------------------------------------------------------------------------------


def _float_elements(dtype):
    dtype = np.dtype(dtype)
    finite = (st.floats(-1e300, 1e300, width=64) if dtype.itemsize == 8
              else st.floats(width=8 * dtype.itemsize, allow_nan=False, allow_infinity=False))
    return st.one_of(finite, finite, finite, st.sampled_from([np.nan, np.inf, -np.inf]))


@st.composite
def float_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64, np.float16, ">f8"])))
    base = draw(hnp.arrays(dtype, draw(shapes), elements=_float_elements(dtype)))
    view = base[tuple(draw(st.slices(n)) for n in base.shape)] if base.ndim else base
    if view.ndim > 1 and draw(st.booleans()):
        view = view.transpose(draw(st.permutations(range(view.ndim))))
    return view, base


@PROPS
@given(xb=float_arrays())
def test_safe_sum_float_is_compensated_and_propagates_nonfinite(xb):
    x, base = xb
    before = snapshot(base)
    with np.errstate(all="warn"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = memory_ops.safe_sum(x)
    assert type(got) is float
    values = np.asarray(x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        with numpy_quiet():
            expected = float(values.sum())
        assert (math.isnan(got) and math.isnan(expected)) or got == expected, (got, expected)
    else:
        assert_compensated_accuracy(got, values)
    # Reported as README says: overflow when finite values sum to a non-finite value; invalid when
    # infinities of both signs meet or non-NaN values sum to NaN (no signalling NaNs are drawn).
    finite = bool(np.all(np.isfinite(values)))
    both_infinities = bool(np.any(values == np.inf) and np.any(values == -np.inf))
    kinds = ["overflow"] * (finite and not math.isfinite(got))
    kinds += ["invalid"] * (both_infinities or (math.isnan(got) and not np.any(np.isnan(values))))
    assert [str(w.message) for w in record] == [
        {"overflow": "overflow encountered in reduce", "invalid": "invalid value encountered in reduce"}[k] for k in kinds
    ]
    assert snapshot(base) == before


def assert_compensated_accuracy(got, values):
    """The error bound of compensated (TwoSum) summation: an ulp of the exact sum plus a second-order
    term ~(n eps)^2 * sum|x| (with room for the 16 lanes and the block partials). Plain or pairwise
    summation only guarantees ~n eps * sum|x| and misses it on cancelling data."""
    exact = math.fsum(values.tolist())
    n = values.size + 20
    bound = math.ulp(exact) + 4 * (n * 2.0**-53) ** 2 * math.fsum(np.abs(values).tolist())
    assert abs(got - exact) <= bound, f"safe_sum={got!r} fsum={exact!r} bound={bound!r}"


@st.composite
def cancelling_arrays(draw):
    """Big values and their exact negatives around small ones, shuffled, in a random layout: the exact
    sum is that of the small values, far below the rounding error of a plain sum."""
    big = draw(st.lists(st.floats(-1e20, 1e20), min_size=1, max_size=40))
    small = draw(st.lists(st.floats(-1, 1), min_size=0, max_size=20))
    values = np.array(big + small + [-v for v in big], dtype=np.float64)
    values = values[np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(values.size)]
    layout = draw(st.sampled_from(["contiguous", "reversed", "strided", "float32"]))
    if layout == "reversed":
        return values[::-1]
    if layout == "strided":
        spaced = np.full(values.size * 3, np.nan)
        spaced[1::3] = values
        return spaced[1::3]
    return values.astype(np.float32) if layout == "float32" else values


@PROPS
@given(x=cancelling_arrays())
def test_safe_sum_cancelling_data_is_compensated(x):
    got = memory_ops.safe_sum(x)
    assert type(got) is float
    assert_compensated_accuracy(got, np.asarray(x, dtype=np.float64))


@PROPS
@given(xb=sliced_arrays(dtypes=[np.int32, np.int64, np.int8, np.uint16, np.bool_, np.uint64, ">i4", np.uint32]))
def test_safe_sum_int_matches_numpy(xb):
    x, base = xb
    before = snapshot(base)
    got = memory_ops.safe_sum(x)
    assert type(got) is int
    assert got == int(x.sum())
    assert snapshot(base) == before
