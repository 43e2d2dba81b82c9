"""Fresh outputs of 32 MiB and more come from memory_ops' huge-page data handler (bindings/alloc.cpp):
mapped from a 2 MiB boundary and advised huge as a whole, freed with the array, resizable like any
NumPy array. Smaller outputs, and all outputs while NumPy's own huge-page advice is off, come from
NumPy's current handler."""

import contextlib
import ctypes
import os
import sys
import threading

import numpy as np
import pytest
from numpy._core.multiarray import _set_madvise_hugepage, get_handler_name

import memory_ops
from conftest import assert_same_array

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the huge-page handler is Linux-only")

OURS = "memory_ops_hugepage"
BIG = 1 << 25  # bytes: the handler's threshold
HUGE_PAGE = 1 << 21
# madvise(MADV_HUGEPAGE) only sets a mapping's "hg" flag on kernels built with transparent huge pages.
THP = os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.fixture
def numpy_advises_huge_pages():
    """NumPy's huge-page advice on; NumPy's current handler (not ours) the same before and after."""
    current = get_handler_name()
    assert current != OURS
    previous = _set_madvise_hugepage(True)
    yield
    _set_madvise_hugepage(previous)
    assert get_handler_name() == current, "memory_ops left its handler set as NumPy's current one"


def fresh_outputs(nbytes, dtype):
    """(memory_ops' fresh result, NumPy's) for scale_copy and add_arrays, nbytes each."""
    n = nbytes // np.dtype(dtype).itemsize
    a = (np.arange(n) % 1000).astype(dtype)
    b = a[::-1]
    return [(memory_ops.scale_copy(a, 3), a * 3), (memory_ops.add_arrays(a, b), a + b)]


def vm_flags(address):
    """The VmFlags of the /proc/self/smaps mapping that holds `address`."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def mapped_whole(start, nbytes):
    """Whether one /proc/self/maps mapping spans [start, start + nbytes)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= start and start + nbytes <= hi:
                return True
    return False


@contextlib.contextmanager
def users_handler():
    """A handler of the user's own as NumPy's current one: a new capsule of NumPy's default handler
    (what a tracing or pinned-memory handler would be), set through NumPy's C API (ctypes)."""
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    api = ctypes.cast(get_pointer(np._core.multiarray._ARRAY_API, None), ctypes.POINTER(ctypes.c_void_p))
    set_handler = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(api[304])
    get_handler = ctypes.PYFUNCTYPE(ctypes.py_object)(api[305])
    name = b"mem_handler"
    mine = new_capsule(get_pointer(get_handler(), name), name, None)
    previous = set_handler(mine)
    try:
        yield
    finally:
        set_handler(previous)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.int64])
def test_big_fresh_outputs_come_from_the_hugepage_handler(dtype, numpy_advises_huge_pages):
    for got, expected in fresh_outputs(BIG, dtype):
        assert get_handler_name(got) == OURS
        assert got.flags.owndata and got.flags.c_contiguous and got.base is None
        assert got.ctypes.data % HUGE_PAGE == 0
        if THP:
            assert "hg" in vm_flags(got.ctypes.data)
            assert "hg" in vm_flags(got.ctypes.data + got.nbytes - 1)
        assert_same_array(got, expected)


@pytest.mark.skipif(not THP, reason="no transparent huge pages in this kernel")
def test_the_mapping_ends_on_a_huge_page(numpy_advises_huge_pages):
    """An output that ends inside a huge page has that whole huge page mapped and advised."""
    nbytes = BIG + 3 * 4096 + 8
    for got, expected in fresh_outputs(nbytes, np.float64):
        end = got.ctypes.data + (nbytes + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
        assert mapped_whole(got.ctypes.data, end - got.ctypes.data)
        assert "hg" in vm_flags(end - 1)
        assert_same_array(got, expected)


def test_smaller_outputs_and_no_advice_keep_numpys_handler(numpy_advises_huge_pages):
    numpys = get_handler_name(np.empty(1))
    for got, expected in fresh_outputs(BIG - 8, np.float64):
        assert get_handler_name(got) == numpys
        assert_same_array(got, expected)
    _set_madvise_hugepage(False)
    for got, expected in fresh_outputs(BIG, np.float64):
        assert get_handler_name(got) == numpys
        assert_same_array(got, expected)


def test_resizing_a_big_output_keeps_its_values(numpy_advises_huge_pages):
    got, expected = fresh_outputs(BIG, np.float64)[0]
    n = got.size
    for size in (n + 12_345, 1000, 0, 3 * n // 2, n - 1):
        old, old_nbytes = got.ctypes.data, max(got.nbytes, 1)
        got.resize(size, refcheck=False)  # in place: the handler's realloc
        expected.resize(size, refcheck=False)
        assert got.ctypes.data != old and not mapped_whole(old, old_nbytes)  # the old block is unmapped
        assert_same_array(got, expected)
        assert get_handler_name(got) == OURS
        assert size == 0 or got.ctypes.data % HUGE_PAGE == 0  # however small the block


def test_big_outputs_are_unmapped_when_freed(numpy_advises_huge_pages):
    out = memory_ops.scale_copy(np.ones(BIG // 8), 2.0)
    assert get_handler_name(out) == OURS
    start, nbytes = out.ctypes.data, out.nbytes
    assert mapped_whole(start, nbytes)
    del out
    assert not mapped_whole(start, nbytes)  # (a later small mapping in the hole would not span it)


def test_a_handler_the_user_set_is_left_alone(numpy_advises_huge_pages):
    with users_handler():
        for got, expected in fresh_outputs(BIG, np.float64):
            assert get_handler_name(got) != OURS
            assert_same_array(got, expected)
        assert get_handler_name() != OURS
    assert get_handler_name(fresh_outputs(BIG, np.float64)[0][0]) == OURS


def test_failed_allocation_raises_memoryerror_and_restores_numpys_handler(numpy_advises_huge_pages):
    numpys = get_handler_name()
    too_big = np.broadcast_to(np.float64(1), (1 << 45,))  # 256 TiB of output
    with pytest.raises(MemoryError):
        memory_ops.scale_copy(too_big, 2.0)
    assert get_handler_name(np.empty(1)) == numpys
    assert get_handler_name(np.empty(BIG // 8)) == numpys


def test_threads_allocating_and_freeing_big_outputs(numpy_advises_huge_pages):
    a = np.arange(BIG // 8, dtype=np.float64)
    expected = a * 2.0
    failures = []

    def work():
        try:
            for _ in range(8):
                out = memory_ops.scale_copy(a, 2.0)
                if get_handler_name(out) != OURS or not np.array_equal(out, expected):
                    failures.append("wrong output")
        except Exception as e:  # reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_new_float64_comes_from_the_same_allocator(numpy_advises_huge_pages):
    """_core._new_float64, the benchmarks' fresh array, is allocated as the ops' fresh outputs are."""
    from memory_ops import _core

    big, small = _core._new_float64(BIG // 8), _core._new_float64(BIG // 8 - 1)
    assert big.dtype == np.float64 and big.shape == (BIG // 8,) and small.shape == (BIG // 8 - 1,)
    assert get_handler_name(big) == OURS and big.ctypes.data % HUGE_PAGE == 0
    assert get_handler_name(small) == get_handler_name(np.empty(1))
    with pytest.raises(ValueError, match="n must be >= 0"):
        _core._new_float64(-1)
