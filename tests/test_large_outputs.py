"""The streaming-store path (non-temporal stores from the first vector-aligned element, scalar head
and tail around them), taken when an op's operands span at least the streaming threshold (default:
the last-level cache). Small arrays are forced onto it by lowering the threshold; the large ones here
(64 MiB per operand) take it by default on common machines. Outputs start at every element offset
within a 64-byte line so the aligned head is exercised."""

import contextlib
import os
import re

import numpy as np
import pytest

import memory_ops
from conftest import assert_same_array
from memory_ops import _core

pytestmark = pytest.mark.usefixtures("simd")

N = (1 << 23) + 13  # 64 MiB of float64


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.int64])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_outputs_equal_numpy(dtype, threads):
    n = N * 8 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(7)
    a = (rng.random(n) * 1000).astype(dtype)
    b = (rng.random(n) * 1000).astype(dtype)
    with memory_ops.threads(threads):
        check_scale_and_add(a, b, dtype(3), offsets=(0, 1, 3))  # aligned, then off by 1 and 3 elements


def check_scale_and_add(a, b, factor, offsets):
    """scale_copy and add_arrays equal NumPy into fresh outputs and into out= views starting at each
    element offset (< 16) of a zeroed buffer, writing nothing outside the view."""
    n, dtype = a.size, a.dtype
    assert_same_array(memory_ops.scale_copy(a, factor), a * factor)
    assert_same_array(memory_ops.add_arrays(a, b), a + b)
    for offset in offsets:
        backing = np.zeros(n + 16, dtype)
        out = backing[offset:offset + n]
        assert memory_ops.scale_copy(a, factor, out=out) is out
        assert_same_array(out, a * factor)
        assert memory_ops.add_arrays(a, b, out=out) is out
        assert_same_array(out, a + b)
        assert not backing[:offset].any() and not backing[offset + n:].any()


@contextlib.contextmanager
def stream_threshold(nbytes):
    previous = _core._set_stream_threshold(nbytes)
    try:
        yield
    finally:
        _core._set_stream_threshold(previous)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.int64])
@pytest.mark.parametrize("threads", [1, 2])
def test_streamed_small_outputs_equal_numpy(dtype, threads):
    """Every length around the SIMD widths and every start offset, streamed; and a parallel size."""
    rng = np.random.default_rng(11)
    with stream_threshold(0), memory_ops.threads(threads):
        for n in [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1000, 70_001]:
            a = (rng.random(n) * 1000).astype(dtype)
            b = (rng.random(n) * 1000).astype(dtype)
            # every element offset in a 64-byte line
            check_scale_and_add(a, b, dtype(3), offsets=range(64 // np.dtype(dtype).itemsize))
            # In place never streams (the output is an input), and stays exact.
            c = a.copy()
            memory_ops.add_arrays(c, b, out=c)
            assert_same_array(c, a + b)
            if np.dtype(dtype).kind == "f":
                memory_ops.scale_inplace(c, 0.5)
                assert_same_array(c, (a + b) * dtype(0.5))


def _sysfs_last_level_cache():
    """(level, bytes) of cpu0's last-level data/unified cache from sysfs, or None."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    best = None
    if not os.path.isdir(root):
        return None
    for entry in sorted(os.listdir(root)):
        if not re.fullmatch(r"index\d+", entry):
            continue
        with open(os.path.join(root, entry, "type")) as f:
            if f.read().strip() not in ("Data", "Unified"):
                continue
        with open(os.path.join(root, entry, "level")) as f:
            level = int(f.read())
        with open(os.path.join(root, entry, "size")) as f:
            m = re.fullmatch(r"(\d+)([KMG]?)", f.read().strip())
        size = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
        if best is None or level > best[0]:
            best = (level, size)
    return best


def test_stream_threshold_defaults_to_the_last_level_cache():
    info = memory_ops.info()
    assert info["stream_threshold"] == info["llc_bytes"] > 0
    sysfs = _sysfs_last_level_cache()
    if sysfs is None:
        pytest.skip("no cache description in sysfs here")
    assert info["llc_bytes"] == sysfs[1]


def test_set_stream_threshold_returns_previous_and_rejects_negative():
    default = memory_ops.info()["stream_threshold"]
    assert _core._set_stream_threshold(123) == default
    assert memory_ops.info()["stream_threshold"] == 123
    assert _core._set_stream_threshold(default) == 123
    with pytest.raises(ValueError, match="bytes must be >= 0"):
        _core._set_stream_threshold(-1)
    assert memory_ops.info()["stream_threshold"] == default
