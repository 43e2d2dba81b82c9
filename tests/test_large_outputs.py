"""Outputs larger than the last-level cache take the streaming-store path (non-temporal stores from
the first vector-aligned element, scalar head and tail around them). Sizes here exceed 64 MiB, past
the LLC of common machines; outputs start at every element offset within a 64-byte line so the
aligned head is exercised."""

import numpy as np
import pytest

import memory_ops
from conftest import assert_same_array

pytestmark = pytest.mark.usefixtures("simd")

N = (1 << 23) + 13  # 64 MiB of float64


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.int64])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_outputs_equal_numpy(dtype, threads):
    n = N * 8 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(7)
    a = (rng.random(n) * 1000).astype(dtype)
    b = (rng.random(n) * 1000).astype(dtype)
    factor = dtype(3)
    with memory_ops.threads(threads):
        assert_same_array(memory_ops.scale_copy(a, factor), a * factor)
        assert_same_array(memory_ops.add_arrays(a, b), a + b)
        for offset in (0, 1, 3):  # output start: aligned, then off by 1 and 3 elements
            backing = np.zeros(n + 16, dtype)
            out = backing[offset:offset + n]
            assert memory_ops.scale_copy(a, factor, out=out) is out
            assert_same_array(out, a * factor)
            assert memory_ops.add_arrays(a, b, out=out) is out
            assert_same_array(out, a + b)
            # Nothing written outside the view.
            assert not backing[:offset].any() and not backing[offset + n:].any()
