"""Reliability: Python threads, OpenMP inside Python threads, fork/spawn/forkserver children, reference
and memory leaks (also on the error paths), arrays of more than 2**31 elements, and Ctrl-C.

NumPy is the oracle: a * f, a *= f, a + b; safe_sum is checked against math.fsum and against itself
(it is documented bit-identical for any thread count). Every wait here has a timeout: a hang fails
the test instead of stalling the suite.

Keep module-level code import-safe and cheap: 'spawn' and 'forkserver' children re-import this
module to find their target function.
"""

import gc
import json
import math
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback

import numpy as np
import pytest

import memory_ops
from conftest import PYTHON, REPO_ROOT, SIMD_TARGETS, assert_same_array, random_values, subprocess_env

SMALL = 1000  # below the serial threshold (2**16 elements): the calling thread alone
LARGE = 300_000  # above it: an OpenMP parallel region when more than one thread is allowed
FACTOR = 1.7
JOIN_TIMEOUT = 60  # seconds; generous, a hang is what it catches
SANITIZED = os.environ.get("MEMORY_OPS_SANITIZED") == "1"  # scripts/test-sanitized.sh (ASan + UBSan)


def exact_sum(values):
    return math.fsum(np.asarray(values, dtype=np.float64).ravel().tolist())


def assert_close_to_fsum(result, values):
    expected = exact_sum(values)
    assert type(result) is float
    assert abs(result - expected) <= math.ulp(expected), f"safe_sum={result!r} fsum={expected!r}"


def bits_equal(got, expected):
    """Exact equality of two float64 arrays, bit for bit (no NaNs in the data used here)."""
    return (
        isinstance(got, np.ndarray)
        and got.dtype == expected.dtype
        and got.shape == expected.shape
        and np.array_equal(got.view(np.uint64), expected.view(np.uint64))
    )


def run_threads(target, n, *args, timeout=JOIN_TIMEOUT):
    """Run target(i, *args) on n daemon threads; return the exceptions they raised (none is lost)."""
    errors = []
    lock = threading.Lock()

    def wrapper(i):
        try:
            target(i, *args)
        except BaseException as e:  # noqa: BLE001  (every failure is reported to the test)
            with lock:
                errors.append(f"thread {i}: {type(e).__name__}: {e}\n{traceback.format_exc()}")

    threads = [threading.Thread(target=wrapper, args=(i,), daemon=True, name=f"reliability-{i}") for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running after {timeout} s (hang?): {alive}"
    return errors


# ---- 1. many Python threads on shared read-only inputs ------------------------------------------


@pytest.fixture(scope="module")
def shared_inputs():
    """Read-only shared inputs below and above the serial threshold, NumPy's answers, saved copies."""
    cases = {}
    for n in (SMALL, LARGE):
        a = random_values(n, np.float64, seed=11)
        b = random_values(n, np.float64, seed=12)
        with memory_ops.threads(1):
            ref_sum = memory_ops.safe_sum(a)
        assert_close_to_fsum(ref_sum, a)
        expected = {"scale": a * FACTOR, "add": a + b, "sum": ref_sum}
        saved = (a.copy(), b.copy())
        a.flags.writeable = False
        b.flags.writeable = False
        cases[n] = (a, b, expected, saved)
    return cases


@pytest.mark.parametrize("omp", [None, 1, 2], ids=["omp=default", "omp=threads(1)", "omp=threads(2)"])
def test_sixteen_python_threads_on_shared_readonly_inputs(shared_inputs, omp):
    n_threads, iterations = 16, 20
    barrier = threading.Barrier(n_threads, timeout=JOIN_TIMEOUT)
    calls = [0] * n_threads
    # A factor per thread: a result computed for (or written by) another thread cannot pass.
    factors = [FACTOR + 0.0625 * i for i in range(n_threads)]
    scaled = {(i, n): a * factors[i] for i in range(n_threads) for n, (a, *_) in shared_inputs.items()}

    def check(got, expected, what):
        if not bits_equal(got, expected):
            raise AssertionError(f"{what} differs from NumPy")

    def work(i):
        f = factors[i]
        # Private outputs, refilled with NaN before every call: a kernel that wrote nothing passes not.
        private = {n: (np.empty(n), np.empty(n), np.empty(n)) for n in shared_inputs}
        barrier.wait()
        for it in range(iterations):
            for n, (a, b, expected, _) in shared_inputs.items():
                out_scale, out_add, inplace = private[n]
                out_scale.fill(np.nan)
                out_add.fill(np.nan)
                assert memory_ops.scale_copy(a, f, out=out_scale) is out_scale
                check(out_scale, scaled[i, n], f"scale_copy(out=) n={n} it={it}")
                check(memory_ops.scale_copy(a, f), scaled[i, n], f"scale_copy n={n} it={it}")
                inplace[...] = a
                assert memory_ops.scale_inplace(inplace, f) is None
                check(inplace, scaled[i, n], f"scale_inplace n={n} it={it}")
                assert memory_ops.add_arrays(a, b, out=out_add) is out_add
                check(out_add, expected["add"], f"add_arrays(out=) n={n} it={it}")
                check(memory_ops.add_arrays(a, b), expected["add"], f"add_arrays n={n} it={it}")
                s = memory_ops.safe_sum(a)
                if repr(s) != repr(expected["sum"]):
                    raise AssertionError(f"safe_sum n={n} it={it}: {s!r} != single-threaded {expected['sum']!r}")
                calls[i] += 6

    def worker(i):
        if omp is None:
            work(i)
            return
        with memory_ops.threads(omp):
            assert memory_ops.get_num_threads() == omp
            work(i)
            # The count is per Python thread: the 15 others setting theirs did not change this one.
            assert memory_ops.get_num_threads() == omp

    main_threads = memory_ops.get_num_threads()
    errors = run_threads(worker, n_threads)
    assert errors == [], "\n".join(errors)
    assert calls == [iterations * 6 * len(shared_inputs)] * n_threads
    assert memory_ops.get_num_threads() == main_threads
    for a, b, _, (saved_a, saved_b) in shared_inputs.values():
        assert not a.flags.writeable and not b.flags.writeable
        assert_same_array(a, saved_a)
        assert_same_array(b, saved_b)


def test_simd_target_switched_while_threads_compute(shared_inputs):
    # The SIMD cap is process-wide: switching it while kernels run in other threads changes which
    # target the next call takes, never a result (they are bit-identical on every target).
    targets = SIMD_TARGETS
    previous = memory_ops.simd_arch()
    done = threading.Event()
    switches = [0]

    def switcher():
        while not done.is_set():
            for name in targets:
                memory_ops._core._set_simd(name)
                switches[0] += 1
            time.sleep(0)

    def worker(i):
        for _ in range(20):
            for n, (a, b, expected, _) in shared_inputs.items():
                if not bits_equal(memory_ops.scale_copy(a, FACTOR), expected["scale"]):
                    raise AssertionError(f"scale_copy n={n}")
                if not bits_equal(memory_ops.add_arrays(a, b), expected["add"]):
                    raise AssertionError(f"add_arrays n={n}")
                if repr(memory_ops.safe_sum(a)) != repr(expected["sum"]):
                    raise AssertionError(f"safe_sum n={n}")

    flipper = threading.Thread(target=switcher, daemon=True)
    flipper.start()
    try:
        errors = run_threads(worker, 8)
    finally:
        done.set()
        flipper.join(JOIN_TIMEOUT)
        memory_ops._core._set_simd(previous)
    assert not flipper.is_alive()
    assert errors == [], "\n".join(errors)
    assert switches[0] >= len(targets)


COLD_START_CHILD = r"""
import sys, threading
import numpy as np
import memory_ops
# No memory_ops call has run in this process yet: pybind11's NumPy set-up and the extension's own
# first-use statics are initialised by whichever of these threads gets there first, while the
# others switch in every microsecond.
sys.setswitchinterval(1e-6)
N = 16
barrier = threading.Barrier(N, timeout=30)
a = np.arange(3000.0)
b = np.ones(3000)
ops = [
    lambda: np.array_equal(memory_ops.scale_copy(a, 2.0), a * 2.0),
    lambda: (lambda c: (memory_ops.scale_inplace(c, 2.0), np.array_equal(c, a * 2.0))[1])(a.copy()),
    lambda: np.array_equal(memory_ops.add_arrays(a, b), a + b),
    lambda: memory_ops.safe_sum(a) == float(a.sum()),
    lambda: np.array_equal(memory_ops.scale_copy(a.astype(np.int16), 3), a.astype(np.int16) * 3),
    lambda: memory_ops.safe_sum(a.astype(np.float16)) == float(a.astype(np.float16).astype(np.float64).sum()),
]
errors = []

def work(i):
    try:
        barrier.wait()
        for _ in range(5):
            if not ops[i % len(ops)]():
                errors.append(f"thread {i}: wrong result")
    except Exception as e:
        errors.append(f"thread {i}: {e!r}")

threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join(60)
alive = sum(t.is_alive() for t in threads)
print(alive, errors, flush=True)
sys.exit(1 if alive or errors else 0)
"""


@pytest.mark.parametrize("run", range(3))
def test_first_calls_of_a_process_from_sixteen_threads_at_once(repo_root, run):
    r = subprocess.run([PYTHON, "-c", COLD_START_CHILD], cwd=repo_root, env=subprocess_env(repo_root),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert r.stdout.strip() == "0 []"


def test_readonly_shared_input_is_refused_as_an_inplace_target_from_threads(shared_inputs):
    a = shared_inputs[LARGE][0]
    saved = shared_inputs[LARGE][3][0]
    refused = [0] * 8

    def worker(i):
        for _ in range(10):
            try:
                memory_ops.scale_inplace(a, 2.0)
            except ValueError:
                refused[i] += 1
            try:
                memory_ops.add_arrays(a, a, out=a)
            except ValueError:
                refused[i] += 1

    errors = run_threads(worker, 8)
    assert errors == [], "\n".join(errors)
    assert refused == [20] * 8
    assert_same_array(a, saved)


# ---- 2. OpenMP teams inside Python threads ------------------------------------------------------


def test_openmp_teams_inside_four_python_threads():
    # 4 Python threads x 2 OpenMP threads on 2 cores: oversubscribed on purpose. Each must finish
    # and give the single-threaded result bit for bit.
    x64 = random_values(2**22, np.float64, seed=21)
    x32 = random_values(2**22 + 5, np.float32, seed=22)
    x64.flags.writeable = False
    x32.flags.writeable = False
    with memory_ops.threads(1):
        ref = (memory_ops.safe_sum(x64), memory_ops.safe_sum(x32), memory_ops.safe_sum(x64[::-3]))
    assert_close_to_fsum(ref[0], x64)
    assert_close_to_fsum(ref[1], x32)
    results = [None] * 4

    def worker(i):
        with memory_ops.threads(2):
            got = []
            for _ in range(3):
                got.append((memory_ops.safe_sum(x64), memory_ops.safe_sum(x32), memory_ops.safe_sum(x64[::-3])))
            results[i] = got

    errors = run_threads(worker, 4)
    assert errors == [], "\n".join(errors)
    for i, got in enumerate(results):
        assert got is not None, f"thread {i} produced nothing"
        for triple in got:
            assert [repr(v) for v in triple] == [repr(v) for v in ref], f"thread {i}: {triple} != {ref}"


# ---- 3. child processes: fork after a parallel region, spawn, forkserver ------------------------


def _child_inputs():
    a = random_values(LARGE, np.float64, seed=31)
    b = random_values(LARGE, np.float64, seed=32)
    s = random_values(2**17 + 3, np.float32, seed=33)
    return a, b, s


def _ops_results(a, b, s):
    """Every op, on sizes that take the parallel path when allowed (run under threads(2))."""
    out = np.full_like(a, np.nan)
    memory_ops.scale_copy(a, FACTOR, out=out)
    inplace = a.copy()
    memory_ops.scale_inplace(inplace, FACTOR)
    inplace32 = s.copy()
    memory_ops.scale_inplace(inplace32, np.float64(0.1))
    added = np.full_like(a, np.nan)
    memory_ops.add_arrays(a, b, out=added)
    return {
        "scale_copy": memory_ops.scale_copy(a, FACTOR),
        "scale_copy_out": out,
        "scale_inplace": inplace,
        "scale_inplace_f32_f64": inplace32,
        "add_arrays": memory_ops.add_arrays(a, b),
        "add_arrays_out": added,
        "add_arrays_f32_strided": memory_ops.add_arrays(s[-2::-2], s[1::2][::-1]),
        "safe_sum": memory_ops.safe_sum(a),
        "safe_sum_f32": memory_ops.safe_sum(s),
        "safe_sum_strided": memory_ops.safe_sum(a[::-3]),
        "safe_sum_int": memory_ops.safe_sum(np.arange(LARGE, dtype=np.int32)),
    }


def _compare(got, expected):
    """Names of the results that differ (arrays by bit pattern, numbers by repr and type)."""
    bad = []
    for name, exp in expected.items():
        g = got.get(name)
        if isinstance(exp, np.ndarray):
            ok = (isinstance(g, np.ndarray) and g.dtype == exp.dtype and g.shape == exp.shape
                  and g.tobytes() == exp.tobytes())
        else:
            ok = type(g) is type(exp) and repr(g) == repr(exp)
        if not ok:
            bad.append(name)
    return bad


def _thread_count():
    """Threads of this process (Linux), or None."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _child_main(queue, expected):
    """Target of the child processes: run every op with 2 OpenMP threads, report to the parent."""
    try:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        import memory_ops as mo  # the child's own import (spawn/forkserver) or the inherited one (fork)

        inputs = _child_inputs()
        before = _thread_count()
        with mo.threads(2):
            got = _ops_results(*inputs)
        # Threads the kernels added (counted before queue.put starts its feeder thread): none when
        # they ran serially, libgomp's team otherwise.
        added = None if before is None else _thread_count() - before
        queue.put({"bad": _compare(got, expected), "pid": os.getpid(), "error": None, "threads_added": added})
    except BaseException:  # noqa: BLE001
        queue.put({"bad": None, "pid": os.getpid(), "error": traceback.format_exc(), "threads_added": None})
        raise


def _start_and_collect(ctx, target, payload, *, daemon, timeout):
    """Start target(queue, payload) in a child; return (report or None, still alive, exit code, pid).

    A child that hangs is terminated (after `timeout` for its report and again for its exit)."""
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, payload), daemon=daemon)
    proc.start()
    try:
        try:
            report = queue.get(timeout=timeout)
        except Exception:  # queue.Empty: the child hung or died before reporting
            report = None
        proc.join(JOIN_TIMEOUT)
        alive = proc.is_alive()
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        queue.close()
        queue.join_thread()
    return report, alive, proc.exitcode, proc.pid


def _run_child(ctx, expected):
    report, alive, exitcode, pid = _start_and_collect(ctx, _child_main, expected, daemon=True, timeout=JOIN_TIMEOUT)
    if report is None:
        report = {"bad": None, "pid": pid, "error": "no report from the child (it hung or died first)"}
    assert not alive, f"{ctx.get_start_method()} child did not finish within {JOIN_TIMEOUT} s (hang?)"
    assert report["error"] is None, report["error"]
    assert exitcode == 0, f"{ctx.get_start_method()} child exit code {exitcode}"
    assert report["pid"] != os.getpid()
    assert report["bad"] == [], f"{ctx.get_start_method()} child results differ from the parent's: {report['bad']}"
    return report


@pytest.fixture(scope="module")
def parent_results():
    """The parent's results, after checking them against NumPy; a parallel region has run."""
    a, b, s = _child_inputs()
    with memory_ops.threads(2):
        got = _ops_results(a, b, s)
    assert_same_array(got["scale_copy"], a * FACTOR)
    assert_same_array(got["scale_copy_out"], a * FACTOR)
    assert_same_array(got["scale_inplace"], a * FACTOR)
    expected32 = s.copy()
    expected32 *= np.float64(0.1)
    assert_same_array(got["scale_inplace_f32_f64"], expected32)
    assert_same_array(got["add_arrays"], a + b)
    assert_same_array(got["add_arrays_out"], a + b)
    assert_same_array(got["add_arrays_f32_strided"], s[-2::-2] + s[1::2][::-1])
    assert_close_to_fsum(got["safe_sum"], a)
    assert_close_to_fsum(got["safe_sum_f32"], s)
    assert_close_to_fsum(got["safe_sum_strided"], a[::-3])
    assert got["safe_sum_int"] == LARGE * (LARGE - 1) // 2
    return got


def _run_parallel_region():
    """A parallel region for sure (2 OpenMP threads, 2**17+ elements): libgomp's pool now exists."""
    big = np.ones(2**18, dtype=np.float64)
    with memory_ops.threads(2):
        assert memory_ops.safe_sum(big) == 2.0**18


@pytest.mark.parametrize("where", ["main_thread", "worker_thread"])
def test_fork_child_after_a_parallel_region(parent_results, where):
    if where == "main_thread":
        _run_parallel_region()
    else:
        before = _thread_count()
        errors = run_threads(lambda i: _run_parallel_region(), 1)
        assert errors == [], "\n".join(errors)
        # The finished thread's OpenMP team exits on its own time; fork once it is gone, so that no
        # exiting thread holds an allocator lock the child would inherit (a hang seen under ASan).
        deadline = time.monotonic() + 10
        while before is not None and _thread_count() > before and time.monotonic() < deadline:
            time.sleep(0.01)
    # The child runs kernels with threads(2) on parallel-sized inputs: without the fork guard it
    # would wait forever in libgomp's dead pool (the join timeout catches that).
    report = _run_child(multiprocessing.get_context("fork"), parent_results)
    if report["threads_added"] is not None:
        assert report["threads_added"] == 0, f"the fork child started {report['threads_added']} threads"
    # And the parent's own pool still works after the fork.
    with memory_ops.threads(2):
        assert _compare(_ops_results(*_child_inputs()), parent_results) == []


def test_fork_grandchild_after_a_parallel_region(parent_results):
    # A fork child's fork child: the guard is inherited, the grandchild runs serially too.
    _run_parallel_region()
    ctx = multiprocessing.get_context("fork")

    def middle():  # runs in the child (fork: closures need no pickling)
        _run_child(ctx, parent_results)

    # Not a daemon: daemonic processes may not have children. Terminated if it hangs.
    report, alive, exitcode, _ = _start_and_collect(ctx, _in_child_report, middle, daemon=False, timeout=2 * JOIN_TIMEOUT)
    if report is None:
        report = "no report from the child (it hung or died first)"
    assert not alive
    assert report == "ok", report
    assert exitcode == 0


def _in_child_report(queue, fn):
    try:
        fn()
        queue.put("ok")
    except BaseException:  # noqa: BLE001
        queue.put(traceback.format_exc())


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_fresh_child_process(parent_results, method, monkeypatch):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method} not available here")
    _run_parallel_region()  # irrelevant to a fresh interpreter, which must run in parallel as usual
    # The child imports this module (and memory_ops, built in place at the repo root) afresh.
    env = subprocess_env(REPO_ROOT)
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    report = _run_child(multiprocessing.get_context(method), parent_results)
    if report["threads_added"] is not None:
        assert report["threads_added"] >= 1, "a fresh interpreter runs kernels on an OpenMP team as usual"


FORK_BEFORE_ANY_REGION = r"""
import os, signal
import numpy as np
import memory_ops

def threads_now():
    return len(os.listdir("/proc/self/task"))

def run_and_check(tag):
    a = np.arange(2.0**18)
    before = threads_now()
    with memory_ops.threads(2):
        ok = (np.array_equal(memory_ops.scale_copy(a, 3.0), a * 3.0)
              and np.array_equal(memory_ops.add_arrays(a, a), a + a)
              and memory_ops.safe_sum(a) == float(2**18 * (2**18 - 1) // 2))
    print(tag, ok, threads_now() - before, flush=True)

def fork_and_wait(child):
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # a hung child must not outlive the test
        try:
            child()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status

def child():
    run_and_check("child")  # no region ran before the fork: a team may start here
    fork_and_wait(lambda: run_and_check("grandchild"))  # the child has run one: serial

fork_and_wait(child)
run_and_check("parent")
"""


def test_fork_before_any_parallel_region_keeps_the_child_parallel(repo_root):
    # The guard serialises only the children of a process whose libgomp pool exists.
    r = subprocess.run([PYTHON, "-c", FORK_BEFORE_ANY_REGION], cwd=repo_root, env=subprocess_env(repo_root),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # One line per process: "<who> <results ok> <threads its kernels added>".
    lines = {who: (ok, int(added)) for who, ok, added in (line.split() for line in r.stdout.splitlines())}
    assert set(lines) == {"parent", "child", "grandchild"}, r.stdout
    assert all(ok == "True" for ok, _ in lines.values()), r.stdout
    assert lines["child"][1] >= 1, f"a fork child of a process without a team ran serially: {r.stdout}"
    assert lines["grandchild"][1] == 0, f"a fork child of a process with a team started threads: {r.stdout}"
    assert lines["parent"][1] >= 1, r.stdout


# ---- 4. leaks -----------------------------------------------------------------------------------


def _leak_cases():
    """(name, call, expected exception or None, objects whose reference counts must not change)."""
    a = random_values(SMALL, np.float64, seed=41)
    b = random_values(SMALL, np.float64, seed=42)
    a32 = random_values(SMALL, np.float32, seed=43)
    i32 = np.arange(SMALL, dtype=np.int32)
    out = np.empty_like(a)
    out_i64 = np.empty(SMALL, dtype=np.int64)
    inplace = np.ones(SMALL)
    readonly = np.ones(SMALL)
    readonly.flags.writeable = False
    short = np.ones(SMALL - 1)
    as_list = [1.0] * 10
    f_float = float("1.0000001")  # fresh objects, not shared constants
    f_np64 = np.float64(0.999999)
    f_int = int("3")  # a small int: shared, but its count must still balance
    bad_factor = "".join(["not ", "a number"])
    strings = np.array(["a", "b"])
    huge_int = 2**40

    def inplace_scale():
        memory_ops.scale_inplace(inplace, f_float)

    cases = [
        ("scale_copy", lambda: memory_ops.scale_copy(a, f_float), None, (a, f_float)),
        ("scale_copy_out", lambda: memory_ops.scale_copy(a, f_float, out=out), None, (a, f_float, out)),
        ("scale_copy_promoted", lambda: memory_ops.scale_copy(a32, f_np64), None, (a32, f_np64)),
        ("scale_copy_int", lambda: memory_ops.scale_copy(i32, f_int), None, (i32,)),
        ("scale_inplace", inplace_scale, None, (inplace, f_float)),
        ("scale_inplace_f32_f64", lambda: memory_ops.scale_inplace(a32, f_np64), None, (a32, f_np64)),
        ("add_arrays", lambda: memory_ops.add_arrays(a, b), None, (a, b)),
        ("add_arrays_out", lambda: memory_ops.add_arrays(a, b, out=out), None, (a, b, out)),
        ("add_arrays_promoted", lambda: memory_ops.add_arrays(a32, i32), None, (a32, i32)),
        ("safe_sum", lambda: memory_ops.safe_sum(a), None, (a,)),
        ("safe_sum_int", lambda: memory_ops.safe_sum(i32), None, (i32,)),
        # Calls that raise, each on a different error path.
        ("scale_copy_bad_factor", lambda: memory_ops.scale_copy(a, bad_factor), TypeError, (a, bad_factor)),
        ("scale_inplace_bad_factor", lambda: memory_ops.scale_inplace(inplace, bad_factor), TypeError,
         (inplace, bad_factor)),
        ("scale_inplace_readonly", lambda: memory_ops.scale_inplace(readonly, f_float), ValueError,
         (readonly, f_float)),
        ("scale_inplace_list", lambda: memory_ops.scale_inplace(as_list, f_float), TypeError, (as_list, f_float)),
        ("scale_inplace_int_array", lambda: memory_ops.scale_inplace(i32, f_float), TypeError, (i32, f_float)),
        ("scale_copy_out_dtype", lambda: memory_ops.scale_copy(a, f_float, out=out_i64), TypeError,
         (a, f_float, out_i64)),
        ("scale_copy_out_readonly", lambda: memory_ops.scale_copy(a, f_float, out=readonly), ValueError,
         (a, f_float, readonly)),
        ("scale_copy_factor_overflow", lambda: memory_ops.scale_copy(i32, huge_int), OverflowError, (i32, huge_int)),
        ("add_arrays_shape", lambda: memory_ops.add_arrays(a, short), ValueError, (a, short)),
        ("add_arrays_out_shape", lambda: memory_ops.add_arrays(a, b, out=short), ValueError, (a, b, short)),
        ("add_arrays_strings", lambda: memory_ops.add_arrays(a, strings), TypeError, (a, strings)),
        ("safe_sum_strings", lambda: memory_ops.safe_sum(strings), TypeError, (strings,)),
        ("safe_sum_none", lambda: memory_ops.safe_sum(None), TypeError, ()),
    ]
    return cases


LEAK_CASES = [c[0] for c in _leak_cases()]


def _call_n(call, exc, n):
    raised = 0
    if exc is None:
        for _ in range(n):
            call()
    else:
        for _ in range(n):
            try:
                call()
            except exc:
                raised += 1
    return raised


def _dtype_refcounts():
    return {dt: sys.getrefcount(np.dtype(dt)) for dt in ("float32", "float64", "int32", "int64")}


@pytest.mark.parametrize("name", LEAK_CASES)
def test_reference_counts_balance(name):
    (_, call, exc, watched), = [c for c in _leak_cases() if c[0] == name]
    _call_n(call, exc, 10)  # first-use caches (dispatchers, static dtypes, numpy module) settle
    gc.collect()
    before = [sys.getrefcount(o) for o in watched]
    dtypes_before = _dtype_refcounts()
    raised = _call_n(call, exc, 1000)
    gc.collect()
    after = [sys.getrefcount(o) for o in watched]
    assert raised == (1000 if exc is not None else 0), f"{name}: {raised} of 1000 calls raised {exc}"
    assert after == before, f"{name}: reference counts {before} -> {after} after 1000 calls"
    assert _dtype_refcounts() == dtypes_before, f"{name}: a dtype's reference count changed"


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine holds freed memory (LeakSanitizer checks leaks there)")
def test_resident_memory_flat_over_many_calls():
    # 10**4 calls per case on 1000-element arrays: a leaked 8 KB output per call would add ~80 MB.
    limit = 8 * 2**20
    growth = {}
    for name, call, exc, _ in _leak_cases():
        _call_n(call, exc, 1000)  # warm up: allocator pools, caches
        gc.collect()
        before = _rss_bytes()
        raised = _call_n(call, exc, 10**4)
        gc.collect()
        growth[name] = _rss_bytes() - before
        assert raised == (10**4 if exc is not None else 0), name
    leaky = {k: f"{v / 2**20:.1f} MiB" for k, v in growth.items() if v >= limit}
    assert not leaky, f"resident memory grew by >= {limit // 2**20} MiB over 10**4 calls: {leaky}"


# ---- 5. more than 2**31 elements (slow: ~8.6 GB per array) -------------------------------------

HUGE_N = 2**31 + 17


def _mem_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEMORY_OPS_RUN_SLOW") != "1", reason="set MEMORY_OPS_RUN_SLOW=1 to run (~9 GB)")
def test_arrays_of_more_than_2_31_elements():
    need = 4 * HUGE_N + 2**30  # one 4-byte array at a time, plus slack
    available = _mem_available_bytes()
    if available is not None and available < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free, {available / 2**30:.1f} GiB available")
    n = HUGE_N
    hi = 2**31  # the first index past a signed 32-bit count
    spots = [0, 1, hi - 1, hi, hi + 1, hi + 16, n - 2]  # hi + 16 == n - 1

    def expected_sum(special, lo=0):
        """Sum of a[lo:] for an array of ones with `special` values at some indices."""
        inside = [v for i, v in special.items() if i >= lo]
        return float(n - lo - len(inside)) + math.fsum(inside)

    # float32: fill cheaply, mark elements on both sides of 2**31.
    t0 = time.perf_counter()
    a = np.ones(n, dtype=np.float32)
    special = {0: 7.0, hi - 1: 0.5, hi: 3.0, hi + 8: -5.0, n - 1: 1.25}
    for i, v in special.items():
        a[i] = v
    assert memory_ops.safe_sum(a) == expected_sum(special)
    assert memory_ops.scale_inplace(a, 2.0) is None
    for i in spots:
        assert a[i] == np.float32(2.0 * special.get(i, 1.0)), f"a[{i}] = {a[i]}"
    doubled = {i: 2.0 * v for i, v in special.items()}
    assert memory_ops.safe_sum(a) == 2.0 * expected_sum(special)
    # A strided view with byte offsets past 2**32 (every 3rd element, 715 million of them).
    every3 = [v for i, v in doubled.items() if i % 3 == 0]
    count3 = (n + 2) // 3
    assert memory_ops.safe_sum(a[::3]) == 2.0 * (count3 - len(every3)) + math.fsum(every3)
    # out= the input itself: in place, no second 8.6 GB array.
    assert memory_ops.scale_copy(a, 0.25, out=a) is a
    assert memory_ops.add_arrays(a, a, out=a) is a
    for i in spots:
        assert a[i] == np.float32(special.get(i, 1.0)), f"a[{i}] = {a[i]}"
    assert memory_ops.safe_sum(a) == expected_sum(special)
    # A short view whose data starts 8 GiB into the buffer.
    tail = a[hi - 8:]
    assert memory_ops.safe_sum(tail) == expected_sum(special, lo=hi - 8)
    memory_ops.scale_inplace(tail, 4.0)
    assert a[hi - 9] == 1.0 and a[hi - 8] == 4.0 and a[n - 1] == 5.0
    del a, tail
    gc.collect()
    t1 = time.perf_counter()

    # int32: the sum (> 2**31) leaves int32 range; scale and add wrap like NumPy's.
    def wrap32(v):
        return (v + 2**31) % 2**32 - 2**31

    x = np.ones(n, dtype=np.int32)
    ispecial = {hi - 1: -7, hi: 2**31 - 1, hi + 8: -(2**31), n - 1: 5}
    for i, v in ispecial.items():
        x[i] = v
    assert memory_ops.safe_sum(x) == (n - len(ispecial)) + sum(ispecial.values())
    assert memory_ops.scale_copy(x, 3, out=x) is x
    assert memory_ops.add_arrays(x, x, out=x) is x
    want = {i: wrap32(wrap32(3 * v) * 2) for i, v in ispecial.items()}
    for i in [0, 1, hi - 2, hi + 1, hi + 9, n - 2] + list(ispecial):
        assert x[i] == want.get(i, 6), f"x[{i}] = {x[i]}, expected {want.get(i, 6)}"
    assert memory_ops.safe_sum(x) == 6 * (n - len(ispecial)) + sum(want.values())
    every2 = {i: v for i, v in want.items() if (n - 1 - i) % 2 == 0}  # x[::-2] starts at n - 1
    assert memory_ops.safe_sum(x[::-2]) == 6 * ((n + 1) // 2 - len(every2)) + sum(every2.values())
    del x
    gc.collect()
    print(f"\n>2**31 elements: float32 part {t1 - t0:.1f} s, int32 part {time.perf_counter() - t1:.1f} s")


# ---- 6. Ctrl-C ----------------------------------------------------------------------------------

LOOP_CHILD = r"""
import json, signal, sys
import numpy as np
import memory_ops
# A shell running a background job sets SIGINT to "ignore" for it, and Python keeps an inherited
# "ignore": restore Ctrl-C's KeyboardInterrupt, whatever launched the test run.
signal.signal(signal.SIGINT, signal.default_int_handler)
a = np.ones(2**22)  # 32 MiB: each call takes milliseconds, so SIGINT mostly lands inside one
out = np.empty_like(a)
memory_ops.scale_inplace(np.ones(8), 2.0)  # first use: pybind11's NumPy set-up runs Python code
started = done = 0
try:
    print("looping", flush=True)
    while True:
        started += 1
        memory_ops.scale_inplace(a, 2.0 if started % 2 else 0.5)
        memory_ops.scale_copy(a, 3.0, out=out)
        memory_ops.add_arrays(a, a, out=out)
        memory_ops.safe_sum(a)
        done += 1
except KeyboardInterrupt:
    values = np.unique(a).tolist()
    print(json.dumps({"started": started, "done": done, "values": values}), flush=True)
    raise
"""

SINGLE_CALL_CHILD = r"""
import json, os, signal, sys, threading
import numpy as np
import memory_ops
# A shell running a background job sets SIGINT to "ignore" for it, and Python keeps an inherited
# "ignore": restore Ctrl-C's KeyboardInterrupt, whatever launched the test run.
signal.signal(signal.SIGINT, signal.default_int_handler)
a = np.ones(2**26)  # 512 MiB: one call takes tens of milliseconds
# The first memory_ops call of a process initialises pybind11's NumPy support, which runs Python
# code (and imports): the GIL can change hands there. Do it now, so that the call below releases
# the GIL only around its kernel.
memory_ops.scale_inplace(np.ones(8), 2.0)

def attempt():
    # With a long switch interval the main thread keeps the GIL until it releases it itself: the
    # killer thread runs only once scale_inplace has dropped the GIL around its kernel.
    sys.setswitchinterval(30.0)
    a.fill(1.0)
    state = {"sent": False, "returned": False, "returned_when_sent": None}
    ready = threading.Event()

    def killer():
        ready.wait()
        state["returned_when_sent"] = state["returned"]
        os.kill(os.getpid(), signal.SIGINT)
        state["sent"] = True

    threading.Thread(target=killer, daemon=True).start()
    try:
        ready.set()
        memory_ops.scale_inplace(a, 2.0)
        state["returned"] = True
        sys.setswitchinterval(0.005)
        for _ in range(6000):  # the interrupt is due; wait for it at most ~60 s
            threading.Event().wait(0.01)
        return {"state": state, "no_interrupt": True}, None
    except KeyboardInterrupt as e:
        return {"state": state, "values": np.unique(a).tolist()}, e

for tries in range(1, 6):
    report, interrupt = attempt()
    # The killer was not scheduled before the kernel had returned (a very busy machine): nothing
    # was tested, try again.
    if report["state"]["returned_when_sent"] is not True:
        break
report["tries"] = tries
print(json.dumps(report), flush=True)
if interrupt is not None:
    raise interrupt  # exit as an uncaught Ctrl-C does (its traceback shows where it was raised)
"""


def _wait_for_line(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else None


def _finish(proc, timeout=JOIN_TIMEOUT):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child did not exit within {timeout} s after SIGINT (hang?)\n{err}")
    return out, err


def _assert_died_of_keyboard_interrupt(proc, err):
    assert "KeyboardInterrupt" in err, err
    assert "Fatal Python error" not in err and "Segmentation fault" not in err, err
    # An uncaught KeyboardInterrupt makes Python exit by SIGINT (exit status -2 from Popen).
    assert proc.returncode == -signal.SIGINT, f"exit status {proc.returncode}\n{err}"


@pytest.mark.parametrize("omp", [1, 2])
def test_sigint_interrupts_a_loop_of_kernel_calls_between_calls(omp):
    proc = subprocess.Popen([PYTHON, "-c", LOOP_CHILD], cwd=REPO_ROOT, env=subprocess_env(REPO_ROOT, OMP_NUM_THREADS=omp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _wait_for_line(proc, JOIN_TIMEOUT)
        assert line is not None and line.strip() == "looping", f"child did not start: {line!r}"
        time.sleep(0.3)  # let it run a few calls
        proc.send_signal(signal.SIGINT)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _assert_died_of_keyboard_interrupt(proc, err)
    report = json.loads(out.strip().splitlines()[-1])
    # Whatever call was running when SIGINT came finished: every element was scaled the same
    # number of times (1.0 after an even number of scale_inplace calls, 2.0 after an odd one).
    assert len(report["values"]) == 1, f"array torn by the interrupt: {report}"
    assert report["values"][0] in (1.0, 2.0), report
    assert report["started"] >= 1 and report["done"] <= report["started"], report


@pytest.mark.parametrize("omp", [1, 2])
def test_sigint_during_one_long_call_is_handled_after_it_completes(omp):
    proc = subprocess.Popen([PYTHON, "-c", SINGLE_CALL_CHILD], cwd=REPO_ROOT,
                            env=subprocess_env(REPO_ROOT, OMP_NUM_THREADS=omp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = _finish(proc, timeout=2 * JOIN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _assert_died_of_keyboard_interrupt(proc, err)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["state"]["sent"], report
    # SIGINT was sent while the main thread had not come back from scale_inplace, yet the call
    # completed: every element is scaled, none half-way.
    assert report["state"]["returned_when_sent"] is False, report
    assert report["values"] == [2.0], report
