"""safe_sum: compensated float64 sums checked against math.fsum (exact, correctly rounded) and
NumPy; exact modular integer sums checked against NumPy's int(arr.sum()).

Every test here runs under every SIMD target this CPU supports (the module-level `simd` fixture).
"""

import math

import warnings

import numpy as np
import pytest

import memory_ops
from conftest import (
    FE_INVALID,
    FE_ROUNDING,
    LAYOUTS_1D,
    TAIL_SIZES,
    idfn,
    libm_or_skip,
    make_layout,
    mxcsr_bits_set,
    nd_views,
    numpy_quiet,
    random_values,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("simd")


def exact_sum(values):
    """The correctly rounded float64 sum of the float64 values of an array (any dtype/layout)."""
    return math.fsum(np.asarray(values, dtype=np.float64).ravel().tolist())


def assert_within_ulp_of_fsum(result, values, ulps=1):
    assert type(result) is float, f"expected a Python float, got {type(result).__name__}"
    expected = exact_sum(values)
    assert abs(result - expected) <= ulps * math.ulp(expected), (
        f"safe_sum={result!r} fsum={expected!r} ({abs(result - expected) / math.ulp(expected):.3g} ulp)"
    )


def assert_same_float(got, expected):
    """Equal as floats, NaN equal to NaN."""
    assert type(got) is float
    expected = float(expected)
    if math.isnan(expected):
        assert math.isnan(got), f"expected nan, got {got!r}"
    else:
        assert got == expected, f"got {got!r}, expected {expected!r}"


def assert_int_sum(result, arr):
    expected = int(np.asarray(arr).sum())  # NumPy wraps mod 2**64 (uint64 for unsigned input)
    assert type(result) is int, f"expected a Python int, got {type(result).__name__}"
    assert result == expected


# ---- kernel tails ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=idfn)
@pytest.mark.parametrize("n", TAIL_SIZES)
def test_sum_tails_float(n, dtype):
    a = random_values(n, dtype)
    before = snapshot(a)
    assert_within_ulp_of_fsum(memory_ops.safe_sum(a), a)
    assert_within_ulp_of_fsum(memory_ops.safe_sum(a[::-1]), a)
    assert snapshot(a) == before


@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=idfn)
@pytest.mark.parametrize("n", TAIL_SIZES)
def test_sum_tails_int(n, dtype):
    a = random_values(n, dtype)  # full range: int64 sums wrap like NumPy's accumulator
    before = snapshot(a)
    assert_int_sum(memory_ops.safe_sum(a), a)
    assert_int_sum(memory_ops.safe_sum(a[::-2]), a[::-2])
    assert snapshot(a) == before


# ---- dtypes -------------------------------------------------------------------------------------

INT_DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
              ">i4", ">u8", ">i8", "<u2"]


@pytest.mark.parametrize("dtype", INT_DTYPES, ids=idfn)
@pytest.mark.parametrize("n", [0, 1, 33, 8193, 2**16 + 5])
def test_sum_int_dtypes_match_numpy(dtype, n):
    a = random_values(n, dtype)
    before = snapshot(a)
    assert_int_sum(memory_ops.safe_sum(a), a)
    assert_int_sum(memory_ops.safe_sum(a[::-3]), a[::-3])
    assert snapshot(a) == before


def test_sum_int_wraps_like_numpy():
    cases = [
        np.array([2**64 - 1, 5], dtype=np.uint64),
        np.array([2**63 - 1, 1], dtype=np.int64),
        np.array([-(2**63), -1], dtype=np.int64),
        np.full(1000, 2**63 + 12345, dtype=np.uint64),
        np.full(70_000, 2**62 + 1, dtype=np.int64),
        np.full(70_000, 2**32 - 1, dtype=np.uint32),  # no wrap in the uint64 accumulator
        np.full(70_000, -(2**31), dtype=np.int32),
        np.full(70_000, 2**63 + 7, dtype=">u8"),
    ]
    for a in cases:
        assert_int_sum(memory_ops.safe_sum(a), a)
    assert memory_ops.safe_sum(np.array([2**64 - 1, 5], dtype=np.uint64)) == 4  # unsigned, not -...


@pytest.mark.parametrize("dtype", [np.float16, ">f8", ">f4", np.float32, np.float64], ids=idfn)
@pytest.mark.parametrize("n", [0, 1, 33, 8193, 2**16 + 5])
def test_sum_float_dtypes_are_exact_to_an_ulp(dtype, n):
    a = random_values(n, dtype)
    before = snapshot(a)
    assert_within_ulp_of_fsum(memory_ops.safe_sum(a), a)
    assert_within_ulp_of_fsum(memory_ops.safe_sum(a[1::3]), a[1::3])
    assert snapshot(a) == before


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f8"], ids=idfn)
def test_sum_empty_float_is_zero(dtype):
    for a in (np.empty(0, dtype), np.empty((3, 0), dtype), np.empty((0, 4, 2), dtype)):
        got = memory_ops.safe_sum(a)
        assert type(got) is float and got == 0.0 == a.sum()


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint16, np.int32, np.int64, np.uint64], ids=idfn)
def test_sum_empty_int_is_zero(dtype):
    for a in (np.empty(0, dtype), np.empty((3, 0), dtype)):
        got = memory_ops.safe_sum(a)
        assert type(got) is int and got == 0 == a.sum()


def test_sum_sequences_and_scalars():
    for value in ([1, 2, 3], (4, -5), [[1, 2], [3, 4]], [True, True, False], [], True, 7, np.int8(-3),
                  np.uint64(2**64 - 1), [2**63 - 1, 1]):
        arr = np.asarray(value)
        got = memory_ops.safe_sum(value)
        if arr.dtype.kind == "f":  # [] -> float64
            assert type(got) is float and got == float(arr.sum())
        else:
            assert_int_sum(got, arr)
    for value in ([1.5, 2], (0.1, 0.2, 0.3), 3.25, np.float32(2.5), np.float16(1.5), [[0.5], [1e16]]):
        assert_within_ulp_of_fsum(memory_ops.safe_sum(value), np.asarray(value))


# ---- NaN and infinities -------------------------------------------------------------------------

NONFINITE_CASES = [
    [np.inf, 1.0],
    [1.0, -np.inf],
    [np.inf, -np.inf],
    [np.nan],
    [1.0, np.nan, np.inf],
    [-np.inf, -np.inf, 5.0],
    [np.inf, np.inf],
    [np.nan, -np.inf],
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=idfn)
@pytest.mark.parametrize("values", NONFINITE_CASES, ids=repr)
def test_sum_nonfinite_propagates_like_numpy(dtype, values):
    """Also warns as NumPy does (invalid value for inf + -inf; see test_fp_exceptions.py)."""
    a = np.array(values, dtype=dtype)
    expected = _sum_and_warnings(lambda: np.asarray(a, np.float64).sum())
    assert_same_float(*_same_warnings(_sum_and_warnings(lambda: memory_ops.safe_sum(a)), expected))
    # The same values far apart in a large array (different blocks, lanes and threads).
    big = np.zeros(11 * 2**13 + 11, dtype=dtype)
    big[np.linspace(0, big.size - 1, len(values)).astype(int)] = a
    for view in (big, big[::-1], big.reshape(-1, 11).T):
        expected = _sum_and_warnings(lambda: np.asarray(view, np.float64).sum())
        assert_same_float(*_same_warnings(_sum_and_warnings(lambda: memory_ops.safe_sum(view)), expected))


def _sum_and_warnings(fn):
    with np.errstate(all="warn"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        return fn(), [str(w.message) for w in record]


def _same_warnings(got, expected):
    """(got sum, expected sum) once both calls warned alike."""
    assert got[1] == expected[1]
    return got[0], expected[0]


# ---- accuracy on ill-conditioned sums -----------------------------------------------------------


@pytest.mark.parametrize("reps", [1, 5, 1000, 100_000])
@pytest.mark.parametrize("big, dtype", [(1e16, np.float64), (1e300, np.float64), (2.0**60, np.float64),
                                        (1e8, np.float32), (3e38, np.float32)], ids=idfn)
def test_sum_cancellation_pattern_is_exact(big, dtype, reps):
    a = np.array([big, 1.0, -big] * reps, dtype=dtype)
    s = memory_ops.safe_sum(a)
    exact = exact_sum(a)
    assert exact == reps
    assert type(s) is float and s == exact
    np_error = abs(float(np.asarray(a, np.float64).sum()) - exact)
    assert abs(s - exact) <= np_error


# Knuth's TwoSum computes t - s, which overflows when x is DBL_MAX and s small of the other sign even
# though s + x does not: the sum came out NaN with an "invalid value" warning.
NEAR_MAX_PAIRS = [(-2.9937604643020797e292, np.finfo(np.float64).max),
                  (-8.988465674311575e307, np.finfo(np.float64).max),
                  (6.985441083371519e292, -np.finfo(np.float64).max)]


@pytest.mark.parametrize("small, huge", NEAR_MAX_PAIRS, ids=repr)
@pytest.mark.parametrize("gap", [16, 32, 8, 2**13, 3 * 2**13 + 16], ids=lambda g: f"gap={g}")
def test_sum_float64_near_max_is_finite_where_its_sum_is(small, huge, gap, nthreads):
    """The two values one lane apart (gap 16, 32: in the SIMD loop, in both halves of a pair of
    groups), in different lanes of a block (8) and in different blocks; forward, reversed and
    strided."""
    a = np.zeros(4 * 2**13 + 5)
    a[7], a[7 + gap] = small, huge
    expected = math.fsum([small, huge])
    assert math.isfinite(expected)
    for view in (a, a[::-1], a[1:], np.repeat(a, 2)[::2]):
        with np.errstate(all="raise"):
            assert memory_ops.safe_sum(view) == expected == float(view.sum())


def _cancelling(rng, n, max_exp):
    """n random values of magnitudes 2**0..2**max_exp, with their negatives, plus O(1) noise."""
    x = rng.uniform(-1, 1, n) * 2.0 ** rng.integers(0, max_exp, n)
    x = np.concatenate([x, -x, rng.uniform(-1, 1, 257)])
    rng.shuffle(x)
    return x


@pytest.mark.parametrize("max_exp", [10, 30, 40])
@pytest.mark.parametrize("seed", range(4))
def test_sum_huge_cancellation_within_an_ulp_and_better_than_numpy(seed, max_exp):
    # Condition numbers up to ~1e17: compensated summation in float64 must still be within an ulp.
    rng = np.random.default_rng([seed, max_exp])
    x = _cancelling(rng, 50_000, max_exp)
    exact = exact_sum(x)
    for arr in (x, x.reshape(3, -1)[::-1].T, make_layout(x, "unaligned")[0]):
        s = memory_ops.safe_sum(arr)
        assert_within_ulp_of_fsum(s, x)
        assert abs(s - exact) <= abs(float(arr.sum()) - exact)


@pytest.mark.parametrize("seed", range(4))
def test_sum_float32_huge_cancellation_within_an_ulp(seed):
    rng = np.random.default_rng([seed, 32])
    x = _cancelling(rng, 50_000, 30).astype(np.float32)
    s = memory_ops.safe_sum(x)
    assert_within_ulp_of_fsum(s, x)
    exact = exact_sum(x)
    assert abs(s - exact) <= abs(float(x.astype(np.float64).sum()) - exact)
    assert abs(s - exact) <= abs(float(x.sum()) - exact)


@pytest.mark.parametrize("seed", range(3))
def test_sum_extreme_cancellation_no_worse_than_numpy(seed):
    # Condition numbers ~1e30, beyond what any float64 compensated sum guarantees to an ulp: still at
    # least as accurate as NumPy's pairwise sum.
    rng = np.random.default_rng([seed, 99])
    big = 2.0 ** rng.integers(40, 100, 50_000) * rng.choice([-1.0, 1.0], 50_000)
    x = np.concatenate([big, rng.standard_normal(50_000), -big[rng.permutation(big.size)]])
    rng.shuffle(x)
    exact = exact_sum(x)
    s = memory_ops.safe_sum(x)
    assert type(s) is float and math.isfinite(s)
    assert abs(s - exact) <= abs(float(x.sum()) - exact)


# ---- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS_1D)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.int8, np.uint64], ids=idfn)
@pytest.mark.parametrize("n", [0, 1, 17, 1000, 2**16 + 5])
def test_sum_layouts_1d(layout, dtype, n):
    values = random_values(n, dtype)
    view, keep = make_layout(values, layout)
    before = snapshot(view)
    got = memory_ops.safe_sum(view)
    if np.dtype(dtype).kind == "f":
        assert_within_ulp_of_fsum(got, values)
    else:
        assert_int_sum(got, values)
    assert snapshot(view) == before


@pytest.mark.parametrize("name", list(nd_views(np.arange(24.0))))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8], ids=idfn)
def test_sum_nd_layouts(name, dtype):
    view = nd_views(random_values(24, dtype))[name]
    before = snapshot(view)
    got = memory_ops.safe_sum(view)
    if np.dtype(dtype).kind == "f":
        assert_within_ulp_of_fsum(got, view)
    else:
        assert_int_sum(got, view)
    assert snapshot(view) == before


def test_sum_large_nd_layouts():
    x = random_values(2**18, np.float64) * 10.0 ** np.random.default_rng(3).integers(-8, 8, 2**18)
    c = x.reshape(64, 64, 64)
    for view in (c, c.T, c[::-1, ::2, ::-3], np.asfortranarray(c), c.transpose(1, 2, 0)[:, ::-1]):
        assert_within_ulp_of_fsum(memory_ops.safe_sum(view), view)


# ---- threads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64], ids=idfn)
def test_sum_large_arrays(nthreads, dtype):
    a = random_values(2**20 + 3, dtype)
    got = memory_ops.safe_sum(a)
    if np.dtype(dtype).kind == "f":
        assert_within_ulp_of_fsum(got, a)
        assert_within_ulp_of_fsum(memory_ops.safe_sum(a[::-3]), a[::-3])
    else:
        assert_int_sum(got, a)
        assert_int_sum(memory_ops.safe_sum(a[::-3]), a[::-3])


def test_sum_of_self_overlapping_view_counts_each_element_of_the_view():
    base = random_values(1000, np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(base, 37)[::-3]  # read-only, overlapping
    assert_within_ulp_of_fsum(memory_ops.safe_sum(windows), windows)
    ints = np.lib.stride_tricks.sliding_window_view(random_values(1000, np.int64), 37)
    assert_int_sum(memory_ops.safe_sum(ints), ints)


# ---- which float32 blocks take their plan ---------------------------------------------------------


def _sum_and_planned_blocks(x):
    memory_ops._core._sum_planned_blocks(reset=True)
    s = memory_ops.safe_sum(x)
    return s, memory_ops._core._sum_planned_blocks(reset=True)


def test_sum_float32_blocks_spanning_less_than_2_20_sum_plainly():
    """A float32 block whose nonzero magnitudes span less than 2^20 sums exactly with one plain
    addition per element (no first pass, no plan); a block spanning 10^16 rounds there and takes its
    plan. Both are within an ulp of math.fsum."""
    rng = np.random.default_rng(31)
    n = 40 * 8192 + 123
    signs = rng.choice([-1.0, 1.0], n)
    narrow = [rng.integers(-1000, 1000, n).astype(float), rng.uniform(1, 2, n) * signs,
              np.exp2(rng.uniform(-10, 9.9, n)) * signs, np.where(rng.random(n) < 0.5, 0.0, rng.uniform(1, 2, n))]
    for x in narrow:
        x = x.astype(np.float32)
        s, planned = _sum_and_planned_blocks(x)
        assert planned == 0
        assert_within_ulp_of_fsum(s, x)
    wide = (rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 8, n)).astype(np.float32)
    s, planned = _sum_and_planned_blocks(wide)
    assert planned == 41
    assert_within_ulp_of_fsum(s, wide)


def test_sum_float32_strided_runs_group_the_plain_sum_like_the_batches():
    """Whether a block's plain sum rounds depends on how its additions are grouped: the batches add
    a lane's odd groups of 16 elements into a second accumulator. Lane 0 of block 0 holds 2^53, 1
    and -2^53 in groups 0, 1 and 2 (lane 5 of block 1 the same with 2^60 and 3): one accumulator in
    element order rounds 2^53 + 1, the batches' two do not. Strided and unaligned runs, summed an
    element at a time, must group the same way and so take the same path."""
    x = np.zeros(3 * 8192, np.float32)
    x[[0, 16, 32]] = [2.0**53, 1.0, -(2.0**53)]
    x[[8192 + 5, 8192 + 21, 8192 + 37]] = [2.0**60, 3.0, -(2.0**60)]
    for layout in LAYOUTS_1D:
        view, _ = make_layout(x, layout)
        if layout == "neg_step2":
            continue  # reversed: other lanes, another sum
        assert _sum_and_planned_blocks(view) == (4.0, 0), layout


def test_sum_float32_plain_sum_merges_its_second_accumulator_after_the_first_eighth():
    """A block's plain pass runs as two runs, its first eighth (1024 elements) and the rest, and the
    first run's end merges the odd groups' accumulator into the lanes. Lane 0 holds 2^53 in group 62
    and 1 in group 63 (odd): the merge at 1024 rounds 2^53 + 1, so the block takes its plan, before
    -2^53 in group 64 could cancel it. The loop nest over whole contiguous blocks (one alone or a
    group's) must merge there too, as the two runs of strided and unaligned blocks do. On one thread
    block 0 is summed in a group, then again after a rounding block, block 3 alone after exact ones
    and block 12 in a group again; on two threads every block alone."""
    x = np.zeros(16 * 8192, np.float32)
    for b in (0, 3, 12):
        x[b * 8192 + np.array([992, 1008, 1024])] = [2.0**53, 1.0, -(2.0**53)]
    _assert_forward_layouts_sum(x, 3.0, planned_blocks=3)


def test_sum_float32_group_ending_in_a_short_block_reads_only_its_view():
    """On one thread, blocks 4 and 5 of a float32 view of 5 blocks and 100 elements are summed as
    a group: block 4 whole (one loop nest over the group's whole contiguous blocks), block 5 short,
    on its own. The views end inside a base array of ones, so a pass that took the short block for
    a whole one would add the base's next 8092 ones."""
    base = np.ones(6 * 8192 + 1, np.float32)
    n = 5 * 8192 + 100
    for view in (base[:n], base[1 : n + 1]):
        for threads in (1, 2):
            with memory_ops.threads(threads):
                assert memory_ops.safe_sum(view) == n, threads


def _assert_forward_layouts_sum(x, expected, planned_blocks):
    """safe_sum of x, and how many of its blocks took their plan, in every 1-d layout but the
    reversed one (its elements fall in other lanes: another sum), on 1 and 2 threads."""
    for layout in LAYOUTS_1D:
        view, _ = make_layout(x, layout)
        if layout == "neg_step2":
            continue
        for n in (1, 2):
            with memory_ops.threads(n):
                assert _sum_and_planned_blocks(view) == (expected, planned_blocks), (layout, n)


def test_sum_float32_exact_block_whose_lane_tree_rounds_keeps_the_trees_error():
    """An exact block's lanes are combined by a pairwise tree; when its plain additions round, the
    TwoSums' errors must be kept. Lanes 0, 1 and 3 of a block hold -2^49, 1 + 2^-23 and 2^49, one
    element each: no plain addition rounds, but the tree rounds (1 + 2^-23) + 2^49, and without its
    error the block sums to 1 instead of 1 + 2^-23. Block 4 rounds plainly (2^53 + 1 in one lane)
    and takes its plan. On one thread blocks 0-3 are summed in a group, 6 and 8 alone after the
    rounding block, and 15 in the last group (13-15); on two threads every block alone."""
    x = np.zeros(16 * 8192, np.float32)
    tree_rounds = (0, 1, 2, 3, 6, 8, 15)
    for b in tree_rounds:
        x[b * 8192 + np.array([0, 1, 3])] = [-(2.0**49), 1 + 2.0**-23, 2.0**49]
    x[4 * 8192 + np.array([0, 32, 64])] = [2.0**53, 1.0, -(2.0**53)]
    _assert_forward_layouts_sum(x, len(tree_rounds) * (1 + 2.0**-23) + 1.0, planned_blocks=1)


# ---- the caller's floating-point environment -------------------------------------------------------


def _fenv_arrays():
    rng = np.random.default_rng(21)
    w = rng.uniform(1, 2, 30_000) * np.exp2(rng.integers(-60, 61, 30_000))
    cancelling = np.concatenate([w, -w, rng.standard_normal(50)])
    rng.shuffle(cancelling)
    subnormal = (rng.random(50_000) * 2.0**-126).astype(np.float32)
    return [cancelling, cancelling.astype(np.float32), rng.random(100_000).astype(np.float32),
            rng.standard_normal(100_000), subnormal, subnormal.astype(np.float64)]


@pytest.mark.parametrize("mode", ["up", "zero"])
def test_sum_is_the_same_under_the_callers_rounding_mode_and_leaves_it_alone(mode):
    """TwoSum and extraction are error-free only in round to nearest: safe_sum computes in it whatever
    rounding mode and exception flags the calling thread has set, and gives both back unchanged."""
    import platform

    machine = platform.machine()
    if machine not in FE_ROUNDING:
        pytest.skip(f"no <fenv.h> constants here for {machine}")
    libm = libm_or_skip()
    arrays = _fenv_arrays()
    with memory_ops.threads(1):  # the calling thread sums (OpenMP workers keep their own modes)
        nearest = [memory_ops.safe_sum(a) for a in arrays]
        invalid = FE_INVALID[machine]
        try:
            for raised in (False, True):
                libm.feclearexcept(invalid)
                if raised:
                    libm.feraiseexcept(invalid)
                assert libm.fesetround(FE_ROUNDING[machine][mode]) == 0
                got = [memory_ops.safe_sum(a) for a in arrays]
                assert libm.fegetround() == FE_ROUNDING[machine][mode]
                assert bool(libm.fetestexcept(invalid)) == raised
                libm.fesetround(FE_ROUNDING[machine]["nearest"])
                assert got == nearest
        finally:
            libm.fesetround(FE_ROUNDING[machine]["nearest"])
            libm.feclearexcept(invalid)


def test_sum_counts_subnormals_under_the_callers_flush_to_zero():
    """A library built with -ffast-math may set FTZ and DAZ (MXCSR bits 15 and 6) for the thread:
    subnormal inputs would then read as zero. safe_sum clears both while it runs and restores the
    caller's MXCSR."""
    arrays = _fenv_arrays()[4:]  # float32 subnormals, and the same values as float64
    with memory_ops.threads(1):
        with mxcsr_bits_set(0) as mxcsr:
            assert mxcsr() & 0x8040 == 0
        expected = [memory_ops.safe_sum(a) for a in arrays]
        assert all(e > 0 for e in expected)
        with mxcsr_bits_set(0x8040) as mxcsr:
            got = [memory_ops.safe_sum(a) for a in arrays]
            after = mxcsr()
    assert after & 0x8040 == 0x8040
    assert got == expected
