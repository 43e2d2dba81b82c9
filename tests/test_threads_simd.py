"""Threads, SIMD targets, determinism, GIL release, and the importable environment switches."""

import math
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import memory_ops
from conftest import (
    FE_ROUNDING,
    PYTHON,
    SIMD_TARGETS,
    assert_same_array,
    libm_or_skip,
    mxcsr_bits_set,
    random_values,
    subprocess_env,
)

BIG = 2**20 + 3  # well past the serial threshold (2**16 elements): the parallel path runs


def run_python(repo_root, code, timeout=120, **env):
    return subprocess.run(
        [PYTHON, "-c", code], cwd=repo_root, env=subprocess_env(repo_root, **env),
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def restore_simd():
    previous = memory_ops.simd_arch()
    yield
    memory_ops._core._set_simd(previous)


# ---- info() and SIMD targets --------------------------------------------------------------------


def test_info_describes_the_build_and_the_cpu():
    info = memory_ops.info()
    assert info["version"] == memory_ops.__version__
    assert info["numpy"] == np.__version__
    assert info["simd"] == memory_ops.simd_arch()
    supported, compiled = info["simd_supported"], info["simd_compiled"]
    assert supported, "at least the baseline target runs on any CPU"
    assert set(supported) <= set(compiled)
    assert supported == [t for t in compiled if t in supported], "supported targets keep the best-first order"
    assert compiled[-1] in supported, "the baseline (last compiled) target always runs"
    assert memory_ops.simd_arch() in supported
    assert info["num_threads"] == memory_ops.get_num_threads()


def test_supported_targets_are_those_the_kernel_enabled():
    """Linux lists a SIMD extension in /proc/cpuinfo only when the CPU has it and the kernel enabled
    its registers (XCR0); a target the kernel did not enable would fault. The supported targets
    agree with that list, FMA included (the avx2 and avx512 targets are built with -mfma)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("x86 Linux only")
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    needs = {"avx512bw": {"avx512f", "avx512cd", "avx512dq", "avx512bw", "fma"}, "avx2": {"avx2", "fma"}, "sse2": {"sse2"}}
    info = memory_ops.info()
    for target in info["simd_compiled"]:
        assert (target in info["simd_supported"]) == needs[target].issubset(flags), target


def test_set_simd_caps_the_target(restore_simd):
    for name in SIMD_TARGETS:
        memory_ops._core._set_simd(name)
        assert memory_ops.simd_arch() == name
        assert memory_ops.info()["simd"] == name
    memory_ops._core._set_simd(None)
    assert memory_ops.simd_arch() == SIMD_TARGETS[0], "None restores the best target of this CPU"


@pytest.mark.parametrize("name", SIMD_TARGETS)
def test_env_var_selects_target_at_import(repo_root, name):
    r = run_python(repo_root, "import memory_ops; print(memory_ops.simd_arch())", MEMORY_OPS_SIMD=name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == name


def test_env_var_empty_means_best_target(repo_root):
    r = run_python(repo_root, "import memory_ops; print(memory_ops.simd_arch())", MEMORY_OPS_SIMD="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == SIMD_TARGETS[0]
    r = run_python(repo_root, "import memory_ops; print(memory_ops.simd_arch())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == SIMD_TARGETS[0]


@pytest.mark.parametrize("name", ["no_such_target_xyz", "AVX2"])
def test_env_var_bad_name_fails_import_naming_it(repo_root, name):
    r = run_python(repo_root, "import memory_ops; print(memory_ops.simd_arch())", MEMORY_OPS_SIMD=name)
    assert r.returncode != 0
    assert name in r.stderr
    assert "ValueError" in r.stderr
    assert r.stdout == ""


# ---- thread count -------------------------------------------------------------------------------


def test_set_and_get_num_threads():
    before = memory_ops.get_num_threads()
    assert isinstance(before, int) and before >= 1
    try:
        for n in (1, 3, 2, 7):
            assert memory_ops.set_num_threads(n) is None
            assert memory_ops.get_num_threads() == n
    finally:
        memory_ops.set_num_threads(before)


def test_threads_context_manager_restores_the_previous_count():
    before = memory_ops.get_num_threads()
    with memory_ops.threads(3) as n:
        assert n == 3
        assert memory_ops.get_num_threads() == 3
        with memory_ops.threads(1):
            assert memory_ops.get_num_threads() == 1
        assert memory_ops.get_num_threads() == 3
    assert memory_ops.get_num_threads() == before


def test_threads_context_manager_restores_on_exception():
    before = memory_ops.get_num_threads()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with memory_ops.threads(before + 2):
            assert memory_ops.get_num_threads() == before + 2
            raise Boom
    assert memory_ops.get_num_threads() == before


def test_num_threads_setting_belongs_to_the_calling_python_thread():
    # Documented: "for kernels started from this Python thread".
    before = memory_ops.get_num_threads()
    seen = {}

    def worker():
        memory_ops.set_num_threads(before + 3)
        seen["worker"] = memory_ops.get_num_threads()
        a = random_values(BIG, np.float64)
        seen["ok"] = memory_ops.safe_sum(a) == memory_ops.safe_sum(a.copy())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"worker": before + 3, "ok": True}
    assert memory_ops.get_num_threads() == before


def test_threadpoolctl_limits_the_openmp_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with memory_ops.threads(2):
        with threadpoolctl.threadpool_limits(1):
            assert memory_ops.get_num_threads() == 1
            a = random_values(BIG, np.float64)
            assert_same_array(memory_ops.scale_copy(a, 3.0), a * 3.0)
        assert memory_ops.get_num_threads() == 2
        with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
            assert memory_ops.get_num_threads() == 1
        assert memory_ops.get_num_threads() == 2


# ---- identical results for any thread count and SIMD target ------------------------------------


def _all_results():
    """Results of every op on large inputs in several layouts (native dtypes)."""
    out = []
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        a = random_values(BIG, dtype, seed=1)
        b = random_values(BIG, dtype, seed=2)
        f = 3 if np.dtype(dtype).kind == "i" else 1.7
        for x, y in ((a, b), (a[::-3], b[::3]), (a[: 1024 * 1023].reshape(1024, 1023), b[: 1024 * 1023].reshape(1023, 1024).T)):
            out.append(memory_ops.scale_copy(x, f))
            out.append(memory_ops.add_arrays(x, y))
            out.append(memory_ops.safe_sum(x))
            if np.dtype(dtype).kind == "f":
                c = x.copy()
                memory_ops.scale_inplace(c, f)
                out.append(c)
                c = x.copy()
                memory_ops.scale_inplace(c, np.float64(0.1))
                out.append(c)
    return out


def _assert_all_identical(reference, other):
    assert len(reference) == len(other)
    for r, o in zip(reference, other):
        if isinstance(r, np.ndarray):
            assert_same_array(o, r)
        else:
            assert type(o) is type(r) and repr(o) == repr(r)


def test_results_identical_for_1_2_3_4_threads():
    with memory_ops.threads(1):
        reference = _all_results()
    for n in (2, 3, 4):
        with memory_ops.threads(n):
            _assert_all_identical(reference, _all_results())


def test_results_identical_on_every_simd_target(restore_simd):
    memory_ops._core._set_simd(SIMD_TARGETS[-1])
    reference = _all_results()
    for name in SIMD_TARGETS[:-1]:
        memory_ops._core._set_simd(name)
        _assert_all_identical(reference, _all_results())


# ---- safe_sum determinism -----------------------------------------------------------------------

DETERMINISM_DATA = """
import numpy as np
rng = np.random.default_rng(20240611)
n = 3_000_000
x64 = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n)
x32 = x64.astype(np.float32)
"""

DETERMINISM_CHILD = DETERMINISM_DATA + """
import memory_ops
print(memory_ops.get_num_threads())
print(memory_ops.simd_arch())
print(repr(memory_ops.safe_sum(x64)))
print(repr(memory_ops.safe_sum(x32)))
"""


@pytest.fixture(scope="module")
def determinism_data():
    scope = {}
    exec(DETERMINISM_DATA, scope)
    return scope["x64"], scope["x32"]


def test_safe_sum_bit_identical_across_threads_and_targets(determinism_data, restore_simd):
    x64, x32 = determinism_data
    results = {}
    for name in SIMD_TARGETS:
        memory_ops._core._set_simd(name)
        for n in (1, 2, 3, 4):
            with memory_ops.threads(n):
                results[name, n] = (repr(memory_ops.safe_sum(x64)), repr(memory_ops.safe_sum(x32)))
    assert len(set(results.values())) == 1, results
    # Same layout, strided: still identical across thread counts.
    strided = x64[::-7]
    with memory_ops.threads(1):
        one = repr(memory_ops.safe_sum(strided))
    for n in (2, 3, 4):
        with memory_ops.threads(n):
            assert repr(memory_ops.safe_sum(strided)) == one


def _plan_changing_arrays():
    """float32 arrays whose blocks of 8192 elements need different anchors or paths in safe_sum: a
    block's pass 2 first runs on the previous block's plan, which depends on how the blocks are split
    between threads, and must be redone whenever the block's own plan differs. (float64 always takes
    TwoSum.)"""
    rng = np.random.default_rng(11)
    blocks = 13
    n = blocks * 8192 + 1000
    x = rng.standard_normal(n)
    alternating = np.repeat(np.where(np.arange(blocks + 1) % 2 == 0, 1.0, 1e10), 8192)[:n]
    random_scale = np.repeat(10.0 ** rng.uniform(-5, 5, blocks + 1), 8192)[:n]
    tiny = x * 100
    tiny[rng.integers(0, n, 9)] = 1e-9  # blocks summed plainly and blocks that round there (planned)
    overflowing = x * 100
    overflowing[5 * 8192:5 * 8192 + 64] = 3e38 * np.sign(x[:64])  # float32 sum of |x| overflows: TwoSum
    nonfinite = x * 100
    nonfinite[3 * 8192 + 5] = np.nan
    nonfinite[7 * 8192:8 * 8192] = np.inf
    finite = [x * alternating, x * random_scale, tiny, overflowing, np.arange(float(n)), x[::-1] * random_scale]
    return [a.astype(np.float32) for a in finite], [nonfinite.astype(np.float32)]


def test_safe_sum_bit_identical_when_block_plans_change(restore_simd):
    finite, nonfinite = _plan_changing_arrays()
    for x in finite + nonfinite:
        results = set()
        for name in SIMD_TARGETS:
            memory_ops._core._set_simd(name)
            for n in (1, 2, 3, 4):
                with memory_ops.threads(n):
                    results.add(repr(memory_ops.safe_sum(x)))
        assert len(results) == 1, (x.dtype, results)
    for x in finite:
        exact = math.fsum(x.astype(np.float64).tolist())
        assert abs(memory_ops.safe_sum(x) - exact) <= math.ulp(exact)
    for x in nonfinite:
        assert np.isnan(memory_ops.safe_sum(x))


def _rounding_blocks(pattern, seed):
    """float32 blocks of 8192 elements as the pattern says: e exact (1 <= |x| < 2), r rounds past the
    first eighth, R rounds within it (an element 2^-30 against lane sums near 2^9)."""
    rng = np.random.default_rng(seed)
    x = (rng.uniform(1, 2, len(pattern) * 8192) * rng.choice([-1.0, 1.0], len(pattern) * 8192)).astype(np.float32)
    for b, kind in enumerate(pattern):
        if kind != "e":
            x[b * 8192 + (5 if kind == "R" else 5000)] = np.float32(1e-9)
    return x


def _assert_every_rounding_block_planned(x, rounding):
    """Every SIMD target and 1-3 threads: exactly `rounding` blocks take their plan, and the sums are
    the same and within an ulp of math.fsum."""
    exact = math.fsum(x.astype(np.float64).tolist())
    results = set()
    for name in SIMD_TARGETS:
        memory_ops._core._set_simd(name)
        for n in (1, 2, 3):
            with memory_ops.threads(n):
                memory_ops._core._sum_planned_blocks(reset=True)
                results.add(repr(memory_ops.safe_sum(x)))
                assert memory_ops._core._sum_planned_blocks(reset=True) == rounding, (name, n)
    assert len(results) == 1, results
    assert abs(float(results.pop()) - exact) <= math.ulp(exact)


def test_safe_sum_finds_every_rounding_block_whatever_the_block_before_it(restore_simd):
    """A thread reads the floating-point flags in the middle of a float32 block only when its last
    block rounded; after an exact block it reads them at the end alone. Blocks that round only past
    their first eighth, or within it, must take their plan after an exact block as after a rounding
    one, whichever thread sums which blocks."""
    pattern = "erereRRreeRerrRe"
    _assert_every_rounding_block_planned(_rounding_blocks(pattern, 13), sum(kind != "e" for kind in pattern))


def test_safe_sum_finds_every_rounding_block_in_a_group_of_exact_ones(restore_simd):
    """After a streak of exact float32 blocks a thread sums up to 4 blocks plainly and reads the flags
    once for the group; the streak it waits for doubles after each group that rounded (4, 8, ... 64).
    On one thread, each run of exact blocks below is the streak awaited plus the position in a group
    (its first, or past 67 its second) of the rounding block after it: the streaks of 4, 8, 16 and 32
    put it at positions 0, 1, 2 and 3 in turn, the streak of 64 at every position of both groups; the
    run of 10 ends before a group. Every rounding block must take its plan, whichever blocks the
    threads take."""
    runs = [4, 9, 18, 35, 64, 65, 66, 67, 68, 69, 70, 71, 10]
    pattern = "".join("e" * run + "rR"[k % 2] for k, run in enumerate(runs)) + "e" * 7
    _assert_every_rounding_block_planned(_rounding_blocks(pattern, 14), len(runs))


def test_safe_sum_scalar_path_equals_batch_path(restore_simd):
    """Strided and unaligned float32 runs go through the scalar loops; the same elements in a
    contiguous aligned copy go through the batches. Lanes and blocks are the same, so are the bits."""
    finite, nonfinite = _plan_changing_arrays()
    # Values from 2^-75 to 2^75 that cancel in pairs: the compensation rounds, so a different order of
    # operations (an element in another lane) changes the bits.
    rng = np.random.default_rng(12)
    w = (rng.uniform(1, 2, 40_000) * np.exp2(rng.integers(-75, 76, 40_000))).astype(np.float32)
    cancelling = np.concatenate([w, -w, rng.standard_normal(20).astype(np.float32)])
    rng.shuffle(cancelling)
    for x in finite + nonfinite + [cancelling]:
        strided = x[::2]
        unaligned = np.zeros(4 * x.size + 1, np.uint8)[1:].view(np.float32)
        unaligned[:] = x
        assert unaligned.ctypes.data % 4 != 0
        for name in SIMD_TARGETS:
            memory_ops._core._set_simd(name)
            for n in (1, 2):
                with memory_ops.threads(n):
                    assert repr(memory_ops.safe_sum(strided)) == repr(memory_ops.safe_sum(np.ascontiguousarray(strided)))
                    assert repr(memory_ops.safe_sum(unaligned)) == repr(memory_ops.safe_sum(x))


def _elementwise_results(a, b):
    inplace = a.copy()
    memory_ops.scale_inplace(inplace, 3.1)
    return [memory_ops.scale_copy(a, 3.1), memory_ops.add_arrays(a, b), inplace]


def _numpy_results(a, b):
    inplace = a.copy()
    np.multiply(inplace, 3.1, out=inplace)
    return [a * 3.1, a + b, inplace]


@pytest.mark.parametrize("mode", ["up", "zero"])
def test_elementwise_ops_round_in_the_callers_mode_on_every_thread(mode):
    """NumPy computes a * f and a + b on the calling thread, in its rounding mode. The team's other
    threads compute their chunks in that mode too, whatever environment they were created in (a
    safe_sum just before creates them in round to nearest, its working environment)."""
    import platform

    machine = platform.machine()
    if machine not in FE_ROUNDING:
        pytest.skip(f"no <fenv.h> constants here for {machine}")
    libm = libm_or_skip()
    rng = np.random.default_rng(5)
    with memory_ops.threads(2):
        for dtype in (np.float64, np.float32):
            a, b = rng.random(BIG).astype(dtype), rng.random(BIG).astype(dtype)
            memory_ops.safe_sum(a)
            try:
                assert libm.fesetround(FE_ROUNDING[machine][mode]) == 0
                expected = _numpy_results(a, b)
                got = _elementwise_results(a, b)
            finally:
                libm.fesetround(FE_ROUNDING[machine]["nearest"])
            nearest = _numpy_results(a, b)
            assert not np.array_equal(expected[0], nearest[0])  # the mode changes results in both halves
            assert not np.array_equal(expected[0][BIG // 2:], nearest[0][BIG // 2:])
            for g, e in zip(got, expected):
                assert_same_array(g, e)
            assert libm.fegetround() == FE_ROUNDING[machine]["nearest"]
            assert_same_array(_elementwise_results(a, b)[0], nearest[0])  # back in round to nearest, all of it


def test_elementwise_ops_flush_subnormals_on_every_thread_when_the_caller_does():
    """Under the calling thread's FTZ and DAZ (MXCSR bits 15 and 6, which a library built with
    -ffast-math may set), NumPy reads subnormal inputs as zero; so do the team's threads."""
    rng = np.random.default_rng(6)
    a = rng.random(BIG) * 2.0**-1030  # subnormal float64
    b = rng.random(BIG) * 2.0**-1030
    with memory_ops.threads(2):
        memory_ops.safe_sum(a)
        with mxcsr_bits_set(0x8040):
            expected = _numpy_results(a, b)
            got = _elementwise_results(a, b)
    assert not expected[0].any()  # NumPy flushed every input to zero
    for g, e in zip(got, expected):
        assert_same_array(g, e)


def test_safe_sum_bit_identical_across_processes(repo_root, determinism_data):
    x64, x32 = determinism_data
    expected = [repr(memory_ops.safe_sum(x64)), repr(memory_ops.safe_sum(x32))]
    runs = [({"OMP_NUM_THREADS": n}, n) for n in (1, 2, 3)]
    runs.append(({"OMP_NUM_THREADS": 3, "MEMORY_OPS_SIMD": SIMD_TARGETS[-1]}, 3))
    # A team smaller than the 3 threads asked for (OpenMP's thread limit): its one thread takes the
    # shares of the two that never start.
    runs.append(({"OMP_NUM_THREADS": 3, "OMP_THREAD_LIMIT": 1}, 3))
    for env, threads in runs:
        r = run_python(repo_root, DETERMINISM_CHILD, **env)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.split()
        assert int(lines[0]) == threads, f"OMP_NUM_THREADS={threads} not in force in the child"
        assert lines[1] == env.get("MEMORY_OPS_SIMD", SIMD_TARGETS[0])
        assert lines[2:] == expected, f"{env}: {lines[2:]} != {expected}"


FORK_CHILD = """
import os, signal
import numpy as np
import memory_ops
a = np.arange(2.0**20)
assert memory_ops.get_num_threads() == 2
memory_ops.scale_copy(a, 2.0)  # a parallel region: libgomp's thread pool now exists
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a hung child must not outlive the test
    ok = False
    try:
        ok = (memory_ops.get_num_threads() == 1 and memory_ops.info()["fork_child_serial"]
              and np.array_equal(memory_ops.scale_copy(a, 3.0), a * 3.0)
              and memory_ops.safe_sum(a) == float(a.sum())
              and np.array_equal(memory_ops.add_arrays(a, a), a + a))
    finally:
        os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_kernels_work_in_a_fork_child_after_a_parallel_region(repo_root):
    # A fork child of a process that ran an OpenMP region must not hang in libgomp's dead pool.
    r = run_python(repo_root, FORK_CHILD, timeout=90, OMP_NUM_THREADS=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0", f"fork child failed: exit code {r.stdout.strip()} {r.stderr}"


# ---- the GIL is released while a kernel runs ----------------------------------------------------


def _gil_calls():
    a = np.ones(2**24)  # 128 MiB: each call takes a while
    b = np.ones(2**24)
    return {
        "scale_inplace": lambda: memory_ops.scale_inplace(a, 1.0),
        "scale_copy": lambda: memory_ops.scale_copy(a, 1.0),
        "scale_copy_out": lambda: memory_ops.scale_copy(a, 1.0, out=b),
        "add_arrays": lambda: memory_ops.add_arrays(a, b, out=b),
        "safe_sum": lambda: memory_ops.safe_sum(a),
        "gil_holding_control": lambda: sum(range(3_000_000)),  # builtin loop: never drops the GIL
    }


@pytest.mark.parametrize("op", ["scale_inplace", "scale_copy", "scale_copy_out", "add_arrays", "safe_sum"])
def test_kernels_release_the_gil(op):
    calls = _gil_calls()
    state = {"count": 0}
    stop = threading.Event()

    def counter():
        while not stop.is_set():
            state["count"] += 1
            if state["count"] % 100 == 0:
                time.sleep(1e-6)  # lets the main thread take the GIL back as soon as it wants it

    def progress_during(call, min_calls=3, min_seconds=0.3):
        """Counter increments during each call, recorded right before and right after it."""
        increments = []
        start = time.perf_counter()
        while len(increments) < min_calls or time.perf_counter() - start < min_seconds:
            before = state["count"]
            call()
            increments.append(state["count"] - before)
        return increments

    old_interval = sys.getswitchinterval()
    # With a long switch interval the main thread keeps the GIL while it holds it: the counter can
    # advance during a call only if the call itself releases the GIL.
    sys.setswitchinterval(1.0)
    thread = threading.Thread(target=counter, daemon=True)
    thread.start()
    try:
        while state["count"] < 1000:
            time.sleep(0.001)
        with memory_ops.threads(1):  # leave a core to the counter thread
            control = progress_during(calls["gil_holding_control"], min_calls=3, min_seconds=0)
            during = progress_during(calls[op])
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    assert max(control) < 1000, f"the measurement cannot tell a GIL-holding call: {control}"
    assert statistics.median(during) > 1000, f"counter increments during {op} calls: {during}"
    assert statistics.median(during) > 10 * max(max(control), 1)


# ---- the seed demo ------------------------------------------------------------------------------


def _demo_paths(repo_root):
    return {"benchmarks": repo_root / "benchmarks" / "demo_memory.py",
            "shared_seed": repo_root.parent / "shared" / "seed" / "demo_memory.py"}


@pytest.mark.parametrize("where", ["benchmarks", "shared_seed"])
def test_seed_demo_runs(repo_root, where):
    path = _demo_paths(repo_root)[where]
    if not path.is_file():
        pytest.skip(f"{path} does not exist on this machine")
    r = subprocess.run([PYTHON, str(path)], cwd=repo_root, env=subprocess_env(repo_root),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 2, r.stdout
    assert lines[0].startswith("scale_copy")
    assert lines[1].startswith("scale_inplace")


def test_benchmarks_demo_is_a_verbatim_copy_of_the_seed(repo_root):
    paths = _demo_paths(repo_root)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"not present here: {', '.join(missing)}")
    assert paths["benchmarks"].read_bytes() == paths["shared_seed"].read_bytes()
