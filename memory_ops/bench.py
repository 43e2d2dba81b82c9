"""Benchmark: what a fresh output array costs, against compute, as threads increase.

``python -m memory_ops.bench`` times memory_ops' four operations at sizes from in-cache to far
beyond the last-level cache, at 1, 2, 4 ... threads, next to NumPy, numexpr (when installed) and a
memory-bandwidth limit measured in the same run, and takes each fresh-output time apart::

    fresh output time = compute (same call, warm preallocated ``out=``) + allocation

Allocation is what ``np.empty``, the first touch of the new pages (page faults; the kernel zeroing
them) and freeing the result cost, paid again on every call; ``out=`` avoids it. Compute shrinks
with threads until memory bandwidth is full; the allocation part is kernel work that threads help
far less. The tables and the plot show, per size and thread count, how each part actually moves on
the machine at hand, and the allocation share of a fresh-output call.

Options (all optional; the default needs about a minute on a 2-core machine)::

    --ops scale_copy,scale_inplace,add_arrays,safe_sum   (default: all four)
    --sizes 4KiB,256KiB,8MiB,128MiB   bytes per array with a unit (B, K/KiB, M/MiB, G/GiB:
                                      powers of 1024), or a bare number of elements
                                      (default: 4 KiB, L2/4, LLC/4, >= 4 x LLC, from the machine)
    --threads 1,2,4   (default: 1, 2, 4 ... up to OMP_NUM_THREADS when set, else the CPUs this
                      process may use: affinity mask and cgroup CPU quota)
    --repeat N        timed samples per measurement (default: 41 up to the L2 size, 31 beyond)
    --dtype float64|float32
    --quick           tiny sizes (4 KiB, 256 KiB), 2 repeats: a smoke test of a few seconds
    --json PATH       every raw timing plus machine facts (schema below)
    --plot PATH.png   stacked allocation/compute bars per thread count and op, GB/s against size
                      (needs matplotlib)

Bad arguments (unknown op, size 0, threads < 1, an output path that cannot be written) print one
line on stderr and exit with status 2. Interrupted (Ctrl-C): status 130.

What is measured
----------------
``scale_copy`` and ``add_arrays`` run twice: ``fresh`` (a new result each call, which is freed
before the next call; the timed region covers allocation, page faults, compute and the free) and
``out`` (into a preallocated, already touched array: compute only). ``scale_inplace`` (factor 1.0)
and ``safe_sum`` have no output to allocate. NumPy's counterparts: ``a * f`` and
``np.multiply(a, f, out=o)``, ``np.multiply(w, 1.0, out=w)``, ``a + b`` and ``np.add(a, b, out=o)``,
``a.sum()``; numexpr's: ``evaluate("a*f")`` with and without ``out=``, ``evaluate("a+b")``,
``evaluate("sum(a)")``. NumPy is single-threaded: it is timed once per size (during the first
thread count) and shown as ``numpy (1 thr)`` in every thread row. numexpr gets the same thread
count as memory_ops (``numexpr.set_num_threads``).

The limit is a STREAM-style copy/scale/add/sum inside the extension (``memory_ops._core._stream``,
OpenMP threads as set, float64 buffers of the same byte size), bytes counted as STREAM counts them:
copy and scale 2 arrays, add 3, sum 1 (16, 16, 24 and 8 B per float64 element; write-allocate
traffic is not counted). Every op's GB/s uses the same counting (scale_copy and scale_inplace: 2
arrays, add_arrays: 3, safe_sum: 1) and is compared with the STREAM kernel of the same shape
(scale, scale, add, sum) at the same size and thread count. ``first_touch`` is ``np.empty`` of one
array's bytes, one write per 4 KiB page (``_stream("touch")``, OpenMP threads as set) and the free:
the allocation cost on its own.

Each (op, size, thread count) runs every implementation ``warmup`` times, then ``repeat`` rounds in
which the implementations take turns (rotating order), so memory_ops, NumPy and numexpr see the same
machine state. A sample times ``inner`` back-to-back calls (enough for about 5 ms) and records the
time per call. Reported: median, with the interquartile range (q1..q3) and min/max as spread. The
garbage collector is off while timing.

JSON schema (``--json``; version 1). Times in seconds, sizes in elements unless named ``_bytes``::

    schema            "memory_ops.bench/1"
    created_utc       ISO 8601 time the run started
    duration_s        wall time of the whole run
    command           argv of the run (list of str)
    config            {ops, sizes, size_bytes, dtype, itemsize, threads, repeat (int or null =
                       automatic), quick, warmup, target_sample_s}
    machine           {cpu_model, logical_cpus, affinity_cpus, cgroup_cpu_limit (float or null),
                       available_cpus, physical_cores (int or null), page_size,
                       caches: [{level, type, size_bytes, shared_cpu_list}], l2_bytes, llc_bytes,
                       thp_enabled, thp_defrag, numpy_madvise_hugepage, mem_total_bytes,
                       mem_available_bytes, platform, loadavg (1, 5, 15 min, at the start),
                       simd, stream_hook (bool),
                       memory_ops_info (memory_ops.info()), versions: {python, numpy, memory_ops,
                       numexpr, rich, matplotlib} (null when not installed),
                       env: {OMP_NUM_THREADS, OMP_PROC_BIND, OMP_PLACES, MEMORY_OPS_SIMD}}
    other_cpus        CPUs other processes (and the hypervisor: steal) kept busy on average
                      while this run measured (from /proc/stat less this process' own CPU
                      time; null where /proc/stat is missing)
    notes             list of str (missing optional parts, interference, anomalies)
    measurements      list of {op, variant, impl, size, size_bytes, dtype, threads,
                       bytes_per_call, inner, times_s (list, seconds per call), median_s, q1_s,
                       q3_s, min_s, max_s, other_cpus, gbps, limit_gbps, pct_of_limit}
                        op/variant: scale_copy/fresh|out, scale_inplace/inplace,
                                    add_arrays/fresh|out, safe_sum/reduce,
                                    stream/copy|scale|add|sum, first_touch/touch
                        impl: memory_ops | numpy | numexpr (first_touch is numpy when the
                              extension has no _stream hook)
                        limit_gbps, pct_of_limit: the matching STREAM kernel; null for stream,
                              first_touch and when not measured
                        other_cpus: as above, while this measurement's group of interleaved
                              implementations ran (null when that took under 0.25 s: too short
                              for /proc/stat's clock ticks)
    decomposition     list of {op, impl, size, size_bytes, threads, fresh_s, compute_s,
                       allocation_s, allocation_share, first_touch_s}
                        compute_s = median(out); allocation_s = max(median(fresh) - compute_s, 0);
                        allocation_share = allocation_s / fresh_s; first_touch_s: median
                        first_touch at the same size and thread count (null if not measured)
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

import memory_ops

SCHEMA = "memory_ops.bench/1"

OPS = ("scale_copy", "scale_inplace", "add_arrays", "safe_sum")
VARIANTS = {
    "scale_copy": ("fresh", "out"),
    "scale_inplace": ("inplace",),
    "add_arrays": ("fresh", "out"),
    "safe_sum": ("reduce",),
}
# Ops with an output to allocate: fresh-output time = compute (out=) + allocation.
ALLOC_OPS = ("scale_copy", "add_arrays")
COMPUTE_VARIANT = {"scale_copy": "out", "scale_inplace": "inplace", "add_arrays": "out", "safe_sum": "reduce"}
# STREAM kernel of the same shape as each op, and the arrays STREAM counts for each kernel.
STREAM_KIND = {"scale_copy": "scale", "scale_inplace": "scale", "add_arrays": "add", "safe_sum": "sum"}
STREAM_ARRAYS = {"copy": 2, "scale": 2, "add": 3, "sum": 1}
OP_ARRAYS = {"scale_copy": 2, "scale_inplace": 2, "add_arrays": 3, "safe_sum": 1}
IMPLS = ("memory_ops", "numpy", "numexpr")

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
QUICK_SIZE_BYTES = (4 * KIB, 256 * KIB)
FALLBACK_L2 = 1 * MIB
FALLBACK_LLC = 32 * MIB
TARGET_SAMPLE_S = 5e-3
QUICK_TARGET_SAMPLE_S = 2e-4
MAX_INNER = 100_000

# Field names of the --json document (documented in the module docstring; tests validate against
# this). Values: the JSON type(s) each field may take.
RESULT_FIELDS: dict[str, Any] = {
    "schema": str,
    "created_utc": str,
    "duration_s": float,
    "command": list,
    "config": {
        "ops": list,
        "sizes": list,
        "size_bytes": list,
        "dtype": str,
        "itemsize": int,
        "threads": list,
        "repeat": (int, type(None)),
        "quick": bool,
        "warmup": int,
        "target_sample_s": float,
    },
    "machine": {
        "cpu_model": str,
        "logical_cpus": int,
        "affinity_cpus": int,
        "cgroup_cpu_limit": (float, type(None)),
        "available_cpus": int,
        "physical_cores": (int, type(None)),
        "page_size": int,
        "caches": list,
        "l2_bytes": (int, type(None)),
        "llc_bytes": (int, type(None)),
        "thp_enabled": (str, type(None)),
        "thp_defrag": (str, type(None)),
        "numpy_madvise_hugepage": (bool, type(None)),
        "mem_total_bytes": (int, type(None)),
        "mem_available_bytes": (int, type(None)),
        "platform": str,
        "loadavg": (list, type(None)),
        "simd": str,
        "stream_hook": bool,
        "memory_ops_info": dict,
        "versions": dict,
        "env": dict,
    },
    "other_cpus": (float, type(None)),
    "notes": list,
    "measurements": list,
    "decomposition": list,
}
CACHE_FIELDS = {"level": int, "type": str, "size_bytes": int, "shared_cpu_list": (str, type(None))}
VERSION_FIELDS = ("python", "numpy", "memory_ops", "numexpr", "rich", "matplotlib")
ENV_FIELDS = ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "MEMORY_OPS_SIMD")
MEASUREMENT_FIELDS: dict[str, Any] = {
    "op": str,
    "variant": str,
    "impl": str,
    "size": int,
    "size_bytes": int,
    "dtype": str,
    "threads": int,
    "bytes_per_call": int,
    "inner": int,
    "times_s": list,
    "median_s": float,
    "q1_s": float,
    "q3_s": float,
    "min_s": float,
    "max_s": float,
    "other_cpus": (float, type(None)),
    "gbps": float,
    "limit_gbps": (float, type(None)),
    "pct_of_limit": (float, type(None)),
}
DECOMPOSITION_FIELDS: dict[str, Any] = {
    "op": str,
    "impl": str,
    "size": int,
    "size_bytes": int,
    "threads": int,
    "fresh_s": float,
    "compute_s": float,
    "allocation_s": float,
    "allocation_share": float,
    "first_touch_s": (float, type(None)),
}


class UsageError(Exception):
    """A bad command-line argument: reported on one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """CPU model name from /proc/cpuinfo (x86 'model name', Arm 'Hardware'/'Model'), else platform."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        for line in (text or "").splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def physical_cores(cpuinfo: str | None = None) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, or None when it does not say."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    cores = set()
    for block in (text or "").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip()] = value.strip()
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def affinity_cpus() -> int:
    """CPUs in this process' affinity mask (os.cpu_count() where there is no such mask)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """CPU quota of this process' cgroup in CPUs (v2 cpu.max or v1 cfs quota/period), None if unlimited.

    The tightest limit on the path from the process' cgroup up to the root counts.
    """
    root = Path(root)
    limits: list[float] = []

    def walk(base: Path, rel: str):
        rel_path = Path(rel.lstrip("/"))
        candidates = [base / rel_path, *[base / p for p in rel_path.parents]] if rel else [base]
        for d in dict.fromkeys(candidates):  # own cgroup first, then its ancestors
            yield d

    lines = (_read(proc_cgroup) or "").splitlines()
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2
            for d in walk(root, rel):
                text = _read(d / "cpu.max")
                if text:
                    quota, _, period = text.partition(" ")
                    if quota != "max" and period:
                        limits.append(int(quota) / int(period))
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                for d in walk(root / mount, rel):
                    quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                    if quota and period and int(quota) > 0 and int(period) > 0:
                        limits.append(int(quota) / int(period))
    if not lines:
        text = _read(root / "cpu.max")
        if text and not text.startswith("max"):
            quota, _, period = text.partition(" ")
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def available_cpus(affinity: int | None = None, cgroup_limit: float | None = None) -> int:
    """CPUs this process can keep busy: the affinity mask, capped by the cgroup quota (rounded up)."""
    n = affinity_cpus() if affinity is None else affinity
    if cgroup_limit is not None:
        n = min(n, max(1, math.ceil(cgroup_limit)))
    return max(1, n)


def parse_cache_size(text: str) -> int | None:
    """'32K' / '1024K' / '32768K' / '1M' / '65536' (sysfs cache size) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text or "", re.IGNORECASE)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": KIB, "M": MIB, "G": GIB}[m.group(2).upper()]


def caches(cpu_dir: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> list[dict[str, Any]]:
    """CPU 0's caches from sysfs: [{level, type, size_bytes, shared_cpu_list}], by level."""
    out = []
    base = Path(cpu_dir)
    for d in sorted(base.glob("index*")) if base.is_dir() else []:
        level, kind, size = _read(d / "level"), _read(d / "type"), parse_cache_size(_read(d / "size") or "")
        if level and level.isdigit() and kind and size:
            out.append({"level": int(level), "type": kind, "size_bytes": size, "shared_cpu_list": _read(d / "shared_cpu_list")})
    return sorted(out, key=lambda c: (c["level"], c["type"]))


def cache_size(cache_list: Sequence[Mapping[str, Any]], level: int | None = None) -> int | None:
    """Size of the data/unified cache at `level` (None: the last level), or None if unknown."""
    data = [c for c in cache_list if c["type"] in ("Data", "Unified")]
    if not data:
        return None
    if level is None:
        level = max(c["level"] for c in data)
    sizes = [c["size_bytes"] for c in data if c["level"] == level]
    return max(sizes) if sizes else None


def _bracketed(text: str | None) -> str | None:
    """'always [madvise] never' -> 'madvise'."""
    if not text:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text.strip()


def _meminfo() -> dict[str, int]:
    out = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * KIB
    return out


def _numpy_madvise_hugepage() -> bool | None:
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        return None
    previous = _set_madvise_hugepage(True)
    _set_madvise_hugepage(previous)
    return bool(previous)


def _version(module: str) -> str | None:
    """Version of an optional package that imports here, else None."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    try:
        return version(module)
    except PackageNotFoundError:
        return str(getattr(mod, "__version__", "unknown"))


def _stream_hook() -> Callable[..., float] | None:
    return getattr(memory_ops._core, "_stream", None)


def machine_info() -> dict[str, Any]:
    """Everything about the machine a reader needs to interpret the numbers."""
    cpuinfo = _read("/proc/cpuinfo")
    cache_list = caches()
    limit = cgroup_cpu_limit()
    affinity = affinity_cpus()
    mem = _meminfo()
    try:
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        page_size = 4096
    return {
        "cpu_model": cpu_model(cpuinfo),
        "logical_cpus": os.cpu_count() or 1,
        "affinity_cpus": affinity,
        "cgroup_cpu_limit": limit,
        "available_cpus": available_cpus(affinity, limit),
        "physical_cores": physical_cores(cpuinfo),
        "page_size": int(page_size),
        "caches": cache_list,
        "l2_bytes": cache_size(cache_list, 2),
        "llc_bytes": cache_size(cache_list),
        "thp_enabled": _bracketed(_read("/sys/kernel/mm/transparent_hugepage/enabled")),
        "thp_defrag": _bracketed(_read("/sys/kernel/mm/transparent_hugepage/defrag")),
        "numpy_madvise_hugepage": _numpy_madvise_hugepage(),
        "mem_total_bytes": mem.get("MemTotal"),
        "mem_available_bytes": mem.get("MemAvailable"),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "simd": memory_ops.simd_arch(),
        "stream_hook": _stream_hook() is not None,
        "memory_ops_info": memory_ops.info(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "memory_ops": memory_ops.__version__,
            "numexpr": _version("numexpr"),
            "rich": _version("rich"),
            "matplotlib": _version("matplotlib"),
        },
        "env": {k: os.environ.get(k) for k in ENV_FIELDS},
    }


# ---------------------------------------------------------------------------------------------
# Configuration: sizes, thread counts, repeats
# ---------------------------------------------------------------------------------------------

_UNITS = {"b": 1, "k": KIB, "kb": KIB, "kib": KIB, "m": MIB, "mb": MIB, "mib": MIB, "g": GIB, "gb": GIB, "gib": GIB}


def parse_size(token: str, itemsize: int) -> int:
    """'4KiB' / '8M' / '128MiB' (bytes per array, powers of 1024) or '1000' (elements) -> elements."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", token)
    if not m or (m.group(2) and m.group(2).lower() not in _UNITS):
        raise UsageError(f"bad size {token!r}: use elements (1000) or bytes with a unit (4KiB, 8MiB, 1GiB)")
    number, unit = float(m.group(1)), m.group(2).lower()
    if unit:
        n = int(number * _UNITS[unit]) // itemsize
        if n < 1:
            raise UsageError(f"size {token!r} is less than one element ({itemsize} B); sizes must be at least 1 element")
    else:
        if number != int(number):
            raise UsageError(f"bad size {token!r}: a number of elements must be a whole number")
        n = int(number)
        if n < 1:
            raise UsageError(f"size {token!r}: sizes must be at least 1 element")
    return n


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _pow2_ceil(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


def default_size_bytes(l2: int | None, llc: int | None, mem_available: int | None = None) -> list[int]:
    """4 KiB, L2-resident (L2/4), LLC-resident (LLC/4) and >= 4 x LLC bytes per array.

    Per-array sizes leave room for the three arrays add_arrays touches. The largest is capped so
    that the run's ~8 arrays of that size fit in half of the available memory.
    """
    l2 = l2 or FALLBACK_L2
    llc = llc or FALLBACK_LLC
    sizes = [4 * KIB, max(8 * KIB, _pow2_floor(l2 // 4)), max(16 * KIB, _pow2_floor(llc // 4)), _pow2_ceil(4 * llc)]
    if mem_available:
        while sizes[-1] > 4 * MIB and 8 * sizes[-1] > mem_available // 2:
            sizes[-1] //= 2
    return sorted(set(sizes))


def default_threads(available: int, env: Mapping[str, str] | None = None) -> list[int]:
    """1, 2, 4 ... up to OMP_NUM_THREADS when set (first entry of its list), else `available`."""
    env = os.environ if env is None else env
    top = available
    raw = (env.get("OMP_NUM_THREADS") or "").split(",")[0].strip()
    if raw.isdigit() and int(raw) >= 1:
        top = int(raw)
    return thread_ladder(top)


def thread_ladder(top: int) -> list[int]:
    counts = [1]
    while counts[-1] * 2 < top:
        counts.append(counts[-1] * 2)
    if top > 1:
        counts.append(top)
    return counts


def auto_repeat(size_bytes: int, l2: int | None, llc: int | None, quick: bool) -> int:
    """Samples per measurement: many for fast in-cache sizes, few beyond the LLC."""
    if quick:
        return 2
    if size_bytes <= (l2 or FALLBACK_L2):
        return 41
    if size_bytes <= (llc or FALLBACK_LLC):
        return 31
    return 31


def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_ops(text: str) -> list[str]:
    ops = _split_list(text)
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        raise UsageError(f"unknown op {', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(OPS)}")
    return list(dict.fromkeys(ops))


def parse_threads(text: str) -> list[int]:
    out = []
    for token in _split_list(text) or [text]:
        if not re.fullmatch(r"-?\d+", token):
            raise UsageError(f"bad thread count {token!r}: use whole numbers, e.g. --threads 1,2,4")
        if int(token) < 1:
            raise UsageError(f"thread count {token}: thread counts must be at least 1")
        out.append(int(token))
    return sorted(set(out))


def check_writable(path: str, what: str) -> Path:
    """Fail early (UsageError) if `path` cannot be written; leaves no file behind."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} path {path!r} is a directory")
    if not p.parent.is_dir():
        raise UsageError(f"cannot write {what} to {path!r}: directory {str(p.parent)!r} does not exist")
    existed = p.exists()
    try:
        with open(p, "a"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write {what} to {path!r}: {e.strerror or e}") from None
    if not existed:
        p.unlink()
    return p


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One implementation of one (op, variant) at one size and thread count."""

    op: str
    variant: str
    impl: str
    fn: Callable[[], object]
    bytes_per_call: int
    threads: int
    inner: int = 1
    times: list[float] = field(default_factory=list)


def _sample(fn: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def measure_interleaved(cases: Sequence[Case], repeat: int, warmup: int, target_s: float) -> None:
    """Warm every case up, size its inner loop, then take `repeat` samples of each, taking turns."""
    for case in cases:
        best = math.inf
        for _ in range(max(1, warmup)):
            best = min(best, _sample(case.fn, 1))
        case.inner = int(min(MAX_INNER, max(1, math.ceil(target_s / max(best, 1e-9)))))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeat):
            k = r % len(cases)
            for case in [*cases[k:], *cases[:k]]:
                case.times.append(_sample(case.fn, case.inner))
    finally:
        if gc_was_enabled:
            gc.enable()


def spread(times: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method) and extremes of a list of times."""
    ts = sorted(times)
    if len(ts) >= 2:
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    else:
        q1 = q3 = ts[0]
    return {"median_s": statistics.median(ts), "q1_s": q1, "q3_s": q3, "min_s": ts[0], "max_s": ts[-1]}


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


OTHER_CPUS_MIN_WALL_S = 0.25  # /proc/stat counts in clock ticks (10 ms): shorter windows say nothing
DISTURBED_CPUS = 0.25  # other processes using this much CPU during a measurement: mark it


def cpu_clock() -> tuple[float, float, float] | None:
    """(wall time, CPU seconds all CPUs were busy incl. steal, this process' CPU seconds), or None."""
    line = (_read("/proc/stat") or "").partition("\n")[0].split()
    if not line or line[0] != "cpu" or len(line) < 9:
        return None
    ticks = [int(v) for v in line[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def other_cpus(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None) -> float | None:
    """CPUs that other processes kept busy on average between two cpu_clock() readings."""
    if before is None or after is None or after[0] - before[0] < OTHER_CPUS_MIN_WALL_S:
        return None
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, others) / (after[0] - before[0])


# ---------------------------------------------------------------------------------------------
# Decomposition arithmetic (pure; unit-tested on synthetic timings)
# ---------------------------------------------------------------------------------------------


def decompose(fresh_s: float, compute_s: float, first_touch_s: float | None = None) -> dict[str, Any]:
    """Split a fresh-output time into compute (the warm ``out=`` time) and allocation.

    allocation = fresh - compute, clamped at 0 (noise can make a fresh call look faster);
    allocation_share = allocation / fresh.
    """
    if not (fresh_s >= 0 and compute_s >= 0):
        raise ValueError(f"times must be >= 0, got fresh={fresh_s!r}, compute={compute_s!r}")
    allocation = max(fresh_s - compute_s, 0.0)
    return {
        "fresh_s": float(fresh_s),
        "compute_s": float(compute_s),
        "allocation_s": float(allocation),
        "allocation_share": float(allocation / fresh_s) if fresh_s > 0 else 0.0,
        "first_touch_s": None if first_touch_s is None else float(first_touch_s),
    }


def decompositions(measurements: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Decompose every (op, impl, size, threads) that has both a fresh and an out= median."""
    median = {(m["op"], m["variant"], m["impl"], m["size"], m["threads"]): m for m in measurements}
    touch = {(m["size"], m["threads"]): m["median_s"] for m in measurements if m["op"] == "first_touch"}
    out = []
    for (op, variant, impl, size, threads), fresh in median.items():
        if op not in ALLOC_OPS or variant != "fresh":
            continue
        warm = median.get((op, "out", impl, size, threads))
        if warm is None:
            continue
        row = {"op": op, "impl": impl, "size": size, "size_bytes": fresh["size_bytes"], "threads": threads}
        row.update(decompose(fresh["median_s"], warm["median_s"], touch.get((size, threads))))
        out.append(row)
    return sorted(out, key=lambda d: (OPS.index(d["op"]), IMPLS.index(d["impl"]), d["size"], d["threads"]))


def attach_limits(measurements: list[dict[str, Any]]) -> None:
    """Set gbps, limit_gbps and pct_of_limit (the STREAM kernel of the op's shape, same size and threads)."""
    for m in measurements:
        m["gbps"] = gbps(m["bytes_per_call"], m["median_s"])
    stream = {(m["variant"], m["size_bytes"], m["threads"]): m["gbps"] for m in measurements if m["op"] == "stream"}
    for m in measurements:
        limit = stream.get((STREAM_KIND[m["op"]], m["size_bytes"], m["threads"])) if m["op"] in STREAM_KIND else None
        m["limit_gbps"] = limit
        m["pct_of_limit"] = 100.0 * m["gbps"] / limit if limit else None


def story(decomps: Sequence[Mapping[str, Any]], measurements: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """One line per op with an output: at the largest size, how compute and allocation move with threads."""
    lines = []
    for op in ALLOC_OPS:
        rows = [d for d in decomps if d["op"] == op and d["impl"] == "memory_ops"]
        if not rows:
            continue
        size = max(d["size"] for d in rows)
        rows = sorted((d for d in rows if d["size"] == size), key=lambda d: d["threads"])
        lo, hi = rows[0], rows[-1]
        text = f"{op} @ {human_bytes(lo['size_bytes'])}: "
        if hi is lo:
            text += (
                f"{lo['threads']} thr: compute {fmt_time(lo['compute_s'])}, allocation {fmt_time(lo['allocation_s'])}"
                f" ({lo['allocation_share']:.0%} of a fresh-output call)"
            )
        else:
            speedup = lo["compute_s"] / hi["compute_s"] if hi["compute_s"] > 0 else math.inf
            text += (
                f"{lo['threads']}→{hi['threads']} threads: compute {fmt_time(lo['compute_s'])} → {fmt_time(hi['compute_s'])}"
                f" ({speedup:.1f}×), allocation {fmt_time(lo['allocation_s'])} → {fmt_time(hi['allocation_s'])};"
                f" allocation share {lo['allocation_share']:.0%} → {hi['allocation_share']:.0%}"
            )
        if hi["first_touch_s"] is not None:
            touch = fmt_time(hi["first_touch_s"])
            if hi is not lo and lo["first_touch_s"] is not None:
                touch = f"{fmt_time(lo['first_touch_s'])} → {touch}"
            text += f"; first touch of a fresh buffer alone: {touch}"
        numpy = [
            m
            for m in measurements
            if m["op"] == op and m["impl"] == "numpy" and m["variant"] == "fresh" and m["size"] == size
        ]
        if numpy and hi["compute_s"] > 0:
            text += (
                f". NumPy's fresh {'a*f' if op == 'scale_copy' else 'a+b'}: {fmt_time(numpy[0]['median_s'])}"
                f" = {numpy[0]['median_s'] / hi['compute_s']:.1f}× memory_ops out= at {hi['threads']} thr"
            )
        lines.append(text)
    return lines


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Config:
    ops: list[str]
    size_bytes: list[int]
    dtype: np.dtype
    threads: list[int]
    repeat: int | None
    quick: bool
    warmup: int
    target_sample_s: float
    json_path: Path | None = None
    plot_path: Path | None = None

    @property
    def sizes(self) -> list[int]:
        return [max(1, b // self.dtype.itemsize) for b in self.size_bytes]


class _Arrays:
    """The inputs and warm outputs of one size (touched, so no page faults while timing)."""

    def __init__(self, n: int, dtype: np.dtype, need_stream_copies: bool):
        rng = np.random.default_rng(12345)
        self.n = n
        self.a = rng.random(n, dtype=np.float64).astype(dtype)
        self.b = rng.random(n, dtype=np.float64).astype(dtype)
        self.out = np.empty(n, dtype)
        self.out.fill(0)
        self.work = self.a.copy()
        nbytes = n * dtype.itemsize
        self.n64 = max(1, -(-nbytes // 8))
        if need_stream_copies:  # the STREAM hooks take float64; same bytes per array
            self.sa = np.full(self.n64, 1.0)
            self.sb = np.full(self.n64, 2.0)
            self.sout = np.zeros(self.n64)
            self.sout.fill(0)
        else:
            self.sa, self.sb, self.sout = self.a, self.b, self.out


def _op_cases(op: str, arr: _Arrays, threads: int, with_numpy: bool, ne: Any) -> list[Case]:
    """Cases of one op: memory_ops (every variant), NumPy (when asked), numexpr (when installed)."""
    a, b, out, work = arr.a, arr.b, arr.out, arr.work
    f, one = 2.0, 1.0
    fd, oned = a.dtype.type(f), a.dtype.type(one)  # numexpr would promote float32 by a Python float
    nbytes = OP_ARRAYS[op] * a.nbytes
    mo = memory_ops
    table: dict[tuple[str, str], Callable[[], object]] = {}
    if op == "scale_copy":
        table[("fresh", "memory_ops")] = lambda: mo.scale_copy(a, f)
        table[("out", "memory_ops")] = lambda: mo.scale_copy(a, f, out=out)
        table[("fresh", "numpy")] = lambda: a * f
        table[("out", "numpy")] = lambda: np.multiply(a, f, out=out)
        if ne is not None:
            d = {"a": a, "f": fd}
            table[("fresh", "numexpr")] = lambda: ne.evaluate("a*f", local_dict=d)
            table[("out", "numexpr")] = lambda: ne.evaluate("a*f", local_dict=d, out=out)
    elif op == "scale_inplace":
        table[("inplace", "memory_ops")] = lambda: mo.scale_inplace(work, one)
        table[("inplace", "numpy")] = lambda: np.multiply(work, one, out=work)
        if ne is not None:
            d = {"w": work, "f": oned}
            table[("inplace", "numexpr")] = lambda: ne.evaluate("w*f", local_dict=d, out=work)
    elif op == "add_arrays":
        table[("fresh", "memory_ops")] = lambda: mo.add_arrays(a, b)
        table[("out", "memory_ops")] = lambda: mo.add_arrays(a, b, out=out)
        table[("fresh", "numpy")] = lambda: a + b
        table[("out", "numpy")] = lambda: np.add(a, b, out=out)
        if ne is not None:
            d = {"a": a, "b": b}
            table[("fresh", "numexpr")] = lambda: ne.evaluate("a+b", local_dict=d)
            table[("out", "numexpr")] = lambda: ne.evaluate("a+b", local_dict=d, out=out)
    elif op == "safe_sum":
        table[("reduce", "memory_ops")] = lambda: mo.safe_sum(a)
        table[("reduce", "numpy")] = lambda: a.sum()
        if ne is not None:
            d = {"a": a}
            table[("reduce", "numexpr")] = lambda: ne.evaluate("sum(a)", local_dict=d)
    cases = []
    for (variant, impl), fn in table.items():
        if impl == "numpy" and not with_numpy:
            continue
        cases.append(Case(op, variant, impl, fn, nbytes, 1 if impl == "numpy" else threads))
    return cases


def _limit_cases(ops: Sequence[str], arr: _Arrays, threads: int) -> list[Case]:
    """STREAM kernels the ops need (copy always) and the first touch of a fresh buffer."""
    hook = _stream_hook()
    nbytes = arr.n64 * 8
    sa, sb, sout, n64 = arr.sa, arr.sb, arr.sout, arr.n64
    cases = []
    if hook is not None:
        kinds = ["copy", *dict.fromkeys(STREAM_KIND[o] for o in ops)]
        calls = {
            "copy": lambda: hook("copy", sout, sa, None, 0.0),
            "scale": lambda: hook("scale", sout, sa, None, 2.0),
            "add": lambda: hook("add", sout, sa, sb, 0.0),
            "sum": lambda: hook("sum", None, sa, None, 0.0),
        }
        for kind in dict.fromkeys(kinds):
            cases.append(Case("stream", kind, "memory_ops", calls[kind], STREAM_ARRAYS[kind] * nbytes, threads))
    if any(o in ALLOC_OPS for o in ops):
        if hook is not None:
            touch = lambda: hook("touch", np.empty(n64), None, None, 0.0)  # noqa: E731
            cases.append(Case("first_touch", "touch", "memory_ops", touch, nbytes, threads))
        elif threads == 1:  # no hook: NumPy writes one byte per page, single-threaded

            def touch_numpy(page=4096, nbytes=nbytes):
                buf = np.empty(nbytes, np.uint8)
                buf[::page] = 1

            cases.append(Case("first_touch", "touch", "numpy", touch_numpy, nbytes, 1))
    return cases


def _sanity_check(ops: Sequence[str], arr: _Arrays, notes: list[str]) -> None:
    """memory_ops and the STREAM hooks give NumPy's answers at this size (else a note; timings stand)."""
    a, b = arr.a, arr.b
    tol = 1e-5 if a.dtype == np.float32 else 1e-10
    checks = {
        "scale_copy": lambda: np.array_equal(memory_ops.scale_copy(a, 2.0), a * 2.0),
        "add_arrays": lambda: np.array_equal(memory_ops.add_arrays(a, b), a + b),
        "safe_sum": lambda: math.isclose(memory_ops.safe_sum(a), float(a.sum(dtype=np.float64)), rel_tol=tol, abs_tol=tol),
        "scale_inplace": lambda: True,
    }
    for op in ops:
        if not checks[op]():
            notes.append(f"{op} disagrees with NumPy at {arr.n} elements")
    hook = _stream_hook()
    if hook is not None:
        s = hook("sum", None, arr.sa, None, 0.0)
        if not math.isclose(s, float(arr.sa.sum()), rel_tol=1e-9, abs_tol=1e-9):
            notes.append(f"_stream('sum') returned {s!r}, NumPy says {float(arr.sa.sum())!r} ({arr.n64} elements)")


def _set_threads(n: int, ne: Any, notes: list[str]) -> None:
    memory_ops.set_num_threads(n)
    if ne is not None:
        try:
            ne.set_num_threads(n)
        except (ValueError, RuntimeError) as e:
            notes.append(f"numexpr.set_num_threads({n}) failed: {e}")
    # Start (or resize) the OpenMP team before anything is timed.
    warm = np.ones(1 << 16)
    for _ in range(3):
        memory_ops.scale_inplace(warm, 1.0)


def _measurement_record(case: Case, n: int, dtype: np.dtype, busy: float | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "op": case.op,
        "variant": case.variant,
        "impl": case.impl,
        "size": n,
        "size_bytes": n * dtype.itemsize,
        "dtype": dtype.name,
        "threads": case.threads,
        "bytes_per_call": case.bytes_per_call,
        "inner": case.inner,
        "times_s": case.times,
    }
    rec.update(spread(case.times))
    rec["other_cpus"] = busy
    return rec


def run(cfg: Config, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure everything `cfg` asks for; return the JSON document (see the module docstring)."""
    started = time.perf_counter()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    notes: list[str] = []
    try:
        import numexpr as ne
    except ImportError:
        ne = None
        notes.append("numexpr is not installed (pip install numexpr): no numexpr column")
    if _stream_hook() is None:
        notes.append(
            "memory_ops._core has no _stream hook: no STREAM bandwidth limit; first touch measured"
            " with NumPy (one thread)"
        )
    if max(cfg.threads) > machine["available_cpus"]:
        notes.append(f"thread counts above the {machine['available_cpus']} available CPUs oversubscribe them")

    measurements: list[dict[str, Any]] = []
    run_clock = cpu_clock()
    previous_threads = memory_ops.get_num_threads()
    previous_ne = ne.get_num_threads() if ne is not None and hasattr(ne, "get_num_threads") else None
    try:
        for n, size_bytes in zip(cfg.sizes, cfg.size_bytes):
            repeat = cfg.repeat or auto_repeat(size_bytes, machine["l2_bytes"], machine["llc_bytes"], cfg.quick)
            arr = _Arrays(n, cfg.dtype, need_stream_copies=cfg.dtype != np.float64)
            _sanity_check(cfg.ops, arr, notes)
            for ti, threads in enumerate(cfg.threads):
                _set_threads(threads, ne, notes)
                groups = [("limits", _limit_cases(cfg.ops, arr, threads))]
                groups += [(op, _op_cases(op, arr, threads, with_numpy=ti == 0, ne=ne)) for op in cfg.ops]
                for name, cases in groups:
                    if progress:
                        progress(f"{name:<13} {human_bytes(size_bytes):>8}  {threads} thr")
                    if cases:
                        before = cpu_clock()
                        measure_interleaved(cases, repeat, cfg.warmup, cfg.target_sample_s)
                        busy = other_cpus(before, cpu_clock())
                        measurements += [_measurement_record(c, n, cfg.dtype, busy) for c in cases]
            del arr
            gc.collect()
    finally:
        memory_ops.set_num_threads(previous_threads)
        if previous_ne is not None:
            ne.set_num_threads(previous_ne)

    overall = other_cpus(run_clock, cpu_clock())
    notes += interference_notes(measurements, overall)
    attach_limits(measurements)
    return {
        "schema": SCHEMA,
        "created_utc": created,
        "duration_s": time.perf_counter() - started,
        "command": [Path(sys.executable).name, "-m", "memory_ops.bench", *sys.argv[1:]],
        "config": {
            "ops": cfg.ops,
            "sizes": cfg.sizes,
            "size_bytes": cfg.size_bytes,
            "dtype": cfg.dtype.name,
            "itemsize": cfg.dtype.itemsize,
            "threads": cfg.threads,
            "repeat": cfg.repeat,
            "quick": cfg.quick,
            "warmup": cfg.warmup,
            "target_sample_s": cfg.target_sample_s,
        },
        "machine": machine,
        "other_cpus": overall,
        "notes": list(dict.fromkeys(notes)),
        "measurements": measurements,
        "decomposition": decompositions(measurements),
    }


def disturbed(m: Mapping[str, Any] | None) -> bool:
    return m is not None and (m.get("other_cpus") or 0.0) >= DISTURBED_CPUS


def interference_notes(measurements: Sequence[Mapping[str, Any]], overall: float | None) -> list[str]:
    """A note when other processes competed for the CPUs during the run, naming where."""
    cells = sorted({(m["size_bytes"], m["threads"]) for m in measurements if disturbed(m)})
    if not cells and (overall is None or overall < 0.1):
        return []
    text = f"other processes kept {overall or 0:.2f} CPUs busy on average during the run"
    if cells:
        where = ", ".join(f"{human_bytes(b)} × {t} thr" for b, t in cells)
        text += f"; ≥ {DISTURBED_CPUS} CPUs at {where} (marked *): timings there, above all with several threads, are unreliable"
    return [text]


def total_steps(cfg: Config) -> int:
    return len(cfg.size_bytes) * len(cfg.threads) * (len(cfg.ops) + 1)


# ---------------------------------------------------------------------------------------------
# Presentation: tables (rich, plain text or Markdown) and the plot
# ---------------------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} B"


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _fmt_spread(m: Mapping[str, Any] | None) -> str:
    if m is None:
        return "—"
    half_iqr = (m["q3_s"] - m["q1_s"]) / 2
    pct = 100 * half_iqr / m["median_s"] if m["median_s"] > 0 else 0.0
    return f"{fmt_time(m['median_s'])} ±{pct:.0f}%"


def _fmt_gbps(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _fmt_pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}%"


def _share_bar(share: float, width: int = 6) -> str:
    filled = int(round(max(0.0, min(1.0, share)) * width))
    return "█" * filled + "·" * (width - filled)


@dataclass
class TableSpec:
    title: str
    columns: list[tuple[str, str]]  # (header, "left" | "right")
    groups: list[list[list[str]]]  # rows, in groups separated by a rule
    caption: str = ""
    no_wrap: tuple[str, ...] = ()  # headers of columns a narrow terminal must not fold


_VARIANT_LABEL = {
    ("scale_copy", "fresh"): "scale_copy (fresh)",
    ("scale_copy", "out"): "scale_copy out=",
    ("scale_inplace", "inplace"): "scale_inplace",
    ("add_arrays", "fresh"): "add_arrays (fresh)",
    ("add_arrays", "out"): "add_arrays out=",
    ("safe_sum", "reduce"): "safe_sum",
}


def _index(doc: Mapping[str, Any]) -> dict[tuple, dict[str, Any]]:
    return {(m["op"], m["variant"], m["impl"], m["size"], m["threads"]): m for m in doc["measurements"]}


def _numpy_row(idx: Mapping[tuple, Any], op: str, variant: str, size: int) -> dict[str, Any] | None:
    return next((m for k, m in idx.items() if k[:4] == (op, variant, "numpy", size)), None)


_DISTURBED_CAPTION = f"; *: other processes kept ≥ {DISTURBED_CPUS} CPUs busy during this measurement"


def decomposition_table(doc: Mapping[str, Any]) -> TableSpec | None:
    decomps = [d for d in doc["decomposition"] if d["impl"] == "memory_ops"]
    if not decomps:
        return None
    numpy = {(d["op"], d["size"]): d for d in doc["decomposition"] if d["impl"] == "numpy"}
    idx = _index(doc)
    groups = []
    for op in ALLOC_OPS:
        for size in doc["config"]["sizes"]:
            rows = [d for d in decomps if d["op"] == op and d["size"] == size]
            if not rows:
                continue
            group = []
            for d in sorted(rows, key=lambda d: d["threads"]):
                npd = numpy.get((op, size))
                busy = any(disturbed(idx.get((op, v, "memory_ops", size, d["threads"]))) for v in ("fresh", "out"))
                group.append(
                    [
                        op,
                        human_bytes(d["size_bytes"]),
                        f"{d['threads']}{'*' if busy else ''}",
                        fmt_time(d["fresh_s"]),
                        fmt_time(d["compute_s"]),
                        fmt_time(d["allocation_s"]),
                        f"{d['allocation_share']:>4.0%} {_share_bar(d['allocation_share'])}",
                        fmt_time(d["first_touch_s"]),
                        "—" if npd is None else f"{npd['allocation_share']:.0%}",
                    ]
                )
            groups.append(group)
    return TableSpec(
        title="Fresh output = compute + allocation (memory_ops; medians)",
        columns=[
            ("op", "left"),
            ("size", "right"),
            ("thr", "right"),
            ("fresh", "right"),
            ("compute", "right"),
            ("allocation", "right"),
            ("alloc share", "left"),
            ("first touch", "right"),
            ("numpy", "right"),
        ],
        groups=groups,
        caption=(
            "size: bytes per array; compute: the warm out= call; allocation = fresh − compute; first touch ="
            " np.empty + one write per page + free, on its own; numpy: allocation share of a*f or a+b"
            " against np.multiply/np.add(out=), 1 thread"
            + _DISTURBED_CAPTION * any("*" in row[2] for group in groups for row in group)
        ),
        no_wrap=("alloc share",),
    )


def throughput_table(doc: Mapping[str, Any]) -> TableSpec:
    idx = _index(doc)
    cfg = doc["config"]
    groups = []
    for op in cfg["ops"]:
        for variant in VARIANTS[op]:
            for size in cfg["sizes"]:
                group = []
                npm = _numpy_row(idx, op, variant, size)
                for threads in cfg["threads"]:
                    m = idx.get((op, variant, "memory_ops", size, threads))
                    if m is None:
                        continue
                    nem = idx.get((op, variant, "numexpr", size, threads))
                    group.append(
                        [
                            _VARIANT_LABEL[(op, variant)],
                            human_bytes(m["size_bytes"]),
                            f"{threads}{'*' if disturbed(m) else ''}",
                            _fmt_spread(m),
                            _fmt_gbps(m["gbps"]),
                            _fmt_pct(m["pct_of_limit"]),
                            _fmt_gbps(m["limit_gbps"]),
                            "—" if npm is None else f"{_fmt_gbps(npm['gbps'])} ({npm['median_s'] / m['median_s']:.1f}×)",
                            "—" if nem is None else f"{_fmt_gbps(nem['gbps'])} ({nem['median_s'] / m['median_s']:.1f}×)",
                        ]
                    )
                if group:
                    groups.append(group)
    return TableSpec(
        title="Throughput against NumPy, numexpr and the STREAM limit (GB/s, STREAM byte counting)",
        columns=[
            ("op", "left"),
            ("size", "right"),
            ("thr", "right"),
            ("memory_ops ±½IQR", "right"),
            ("GB/s", "right"),
            ("% STREAM", "right"),
            ("STREAM", "right"),
            ("numpy (1 thr)", "right"),
            ("numexpr", "right"),
        ],
        groups=groups,
        caption=(
            "size: bytes per array; STREAM: the extension's plain scale/add/sum kernel of the same shape, same size and threads (in cache"
            " it is a reference, not a ceiling; scale_inplace has no write-allocate traffic and can pass it);"
            " (n×): that implementation's time over memory_ops'"
            + _DISTURBED_CAPTION * any("*" in row[2] for group in groups for row in group)
        ),
    )


def machine_summary(doc: Mapping[str, Any]) -> str:
    m = doc["machine"]
    cache_text = ", ".join(
        f"L{c['level']}{'d' if c['type'] == 'Data' else ''} {human_bytes(c['size_bytes'])}"
        for c in m["caches"]
        if c["type"] != "Instruction"
    )
    cpus = f"{m['available_cpus']} CPUs available (affinity {m['affinity_cpus']}"
    cpus += f", cgroup quota {m['cgroup_cpu_limit']:g})" if m["cgroup_cpu_limit"] else ", no cgroup quota)"
    v = m["versions"]
    return (
        f"{m['cpu_model']}; {cpus}; {m['physical_cores'] or '?'} cores; {cache_text or 'caches unknown'};"
        f" THP {m['thp_enabled'] or '?'}; SIMD {m['simd']}; memory_ops {v['memory_ops']}, numpy {v['numpy']},"
        f" numexpr {v['numexpr'] or 'not installed'}; {doc['config']['dtype']}"
    )


def markdown_table(spec: TableSpec) -> str:
    lines = [f"**{spec.title}**", ""]
    lines.append("| " + " | ".join(h for h, _ in spec.columns) + " |")
    lines.append("|" + "|".join("---:" if j == "right" else "---" for _, j in spec.columns) + "|")
    for group in spec.groups:
        for row in group:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    if spec.caption:
        lines += ["", spec.caption]
    return "\n".join(lines)


def plain_table(spec: TableSpec) -> str:
    rows = [r for g in spec.groups for r in g]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, (h, _) in enumerate(spec.columns)]

    def line(cells):
        return "  ".join(c.rjust(w) if j == "right" else c.ljust(w) for c, w, (_, j) in zip(cells, widths, spec.columns))

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [spec.title, line([h for h, _ in spec.columns]), rule]
    for i, group in enumerate(spec.groups):
        if i:
            out.append("")
        out += [line(r) for r in group]
    if spec.caption:
        out.append(spec.caption)
    return "\n".join(out)


def _rich_table(spec: TableSpec) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=spec.title, caption=spec.caption, box=box.SIMPLE_HEAD, title_style="bold",
                  caption_justify="left", pad_edge=False)
    for header, justify in spec.columns:
        table.add_column(header, justify=justify, overflow="fold", no_wrap=header in spec.no_wrap)
    for i, group in enumerate(spec.groups):
        if i:
            table.add_section()
        for row in group:
            table.add_row(*row)
    return table


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


def print_report(doc: Mapping[str, Any], use_rich: bool) -> None:
    specs = [s for s in (decomposition_table(doc), throughput_table(doc)) if s is not None]
    header = machine_summary(doc)
    lines = story(doc["decomposition"], doc["measurements"])
    if use_rich:
        console = _console()
        console.print(f"[bold]memory_ops.bench[/bold] — {header}", highlight=False)
        for spec in specs:
            console.print(_rich_table(spec))
        for text in lines:
            console.print(f"• {text}", highlight=False)
        for note in doc["notes"]:
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    else:
        print(f"memory_ops.bench — {header}\n")
        for spec in specs:
            print(plain_table(spec) + "\n")
        for text in lines:
            print(f"* {text}")
        for note in doc["notes"]:
            print(f"note: {note}")


_THREAD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_COMPUTE_COLOR, _ALLOC_COLOR = "#4c72b0", "#dd8452"


def _bars_panel(ax: Any, title: str, bars: Sequence[tuple[str, Mapping[str, Any], str]]) -> None:
    """Stacked compute + allocation bars, one per (label, decomposition, hatch); first touch as a tick."""
    top_s = max(d["fresh_s"] for _, d, _ in bars)
    unit, scale = ("ms", 1e3) if top_s >= 1e-3 else ("µs", 1e6)
    x = list(range(len(bars)))
    compute = [d["compute_s"] * scale for _, d, _ in bars]
    alloc = [d["allocation_s"] * scale for _, d, _ in bars]
    hatch = [h for _, _, h in bars]
    ax.bar(x, compute, color=_COMPUTE_COLOR, hatch=hatch, edgecolor="white", linewidth=0)
    ax.bar(x, alloc, bottom=compute, color=_ALLOC_COLOR, hatch=hatch, edgecolor="white", linewidth=0)
    touch = [(i, d["first_touch_s"] * scale) for i, (label, d, _) in enumerate(bars)
             if label != "numpy" and d["first_touch_s"] is not None]  # fmt: skip
    if touch:
        ax.scatter(*zip(*touch), marker="_", s=500, linewidths=2, color="black", zorder=3)
    for i, (_, d, _) in enumerate(bars):
        height = (d["compute_s"] + d["allocation_s"]) * scale
        ax.annotate(f"{d['allocation_share']:.0%}", (i, height), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [label for label, _, _ in bars], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(f"{unit} per fresh-output call", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.margins(y=0.15)


def _bars_legend(fig: Any) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=_COMPUTE_COLOR, label="compute (warm out=)"),
        Patch(color=_ALLOC_COLOR, label="allocation (fresh − compute); % = allocation share"),
        Patch(facecolor="#999999", hatch="//", edgecolor="white", label="NumPy, 1 thread (a*f, a+b)"),
        Line2D([], [], marker="_", markersize=14, markeredgewidth=2, color="black", linestyle="none",
               label="first touch of a fresh buffer alone"),  # fmt: skip
    ]
    fig.legend(handles=handles, loc="outside upper center", ncols=4, fontsize=7, frameon=False)


def _gbps_panel(ax: Any, doc: Mapping[str, Any], op: str) -> None:
    """GB/s against bytes per array: memory_ops per thread count, fresh, NumPy, numexpr, STREAM."""
    idx = _index(doc)
    sizes, threads = doc["config"]["sizes"], doc["config"]["threads"]
    xs = doc["config"]["size_bytes"]
    tmax, cv, kind = threads[-1], COMPUTE_VARIANT[op], STREAM_KIND[op]

    def line(rows: list[Any], fmt: str, **kw: Any) -> None:
        if any(rows):
            ax.plot(xs, [m["gbps"] if m else np.nan for m in rows], fmt, **kw)

    for i, t in enumerate(threads):
        line([idx.get((op, cv, "memory_ops", s, t)) for s in sizes], "o-", color=_THREAD_COLORS[i % 8],
             label=f"memory_ops {t} thr")  # fmt: skip
    if op in ALLOC_OPS:
        line([idx.get((op, "fresh", "memory_ops", s, tmax)) for s in sizes], "o--",
             color=_THREAD_COLORS[(len(threads) - 1) % 8], alpha=0.6, label=f"memory_ops fresh {tmax} thr")  # fmt: skip
    line([_numpy_row(idx, op, cv, s) for s in sizes], "s-", color="grey", label="numpy (1 thr)")
    line([idx.get((op, cv, "numexpr", s, tmax)) for s in sizes], "^-", color="#2ca02c", alpha=0.7,
         label=f"numexpr {tmax} thr")  # fmt: skip
    stream_lines = [(threads[0], ":"), (tmax, "--")] if tmax != threads[0] else [(tmax, "--")]
    for t, style in stream_lines:
        line([idx.get(("stream", kind, "memory_ops", s, t)) for s in sizes], style, color="black",
             label=f"STREAM {kind} {t} thr")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [human_bytes(b) for b in xs], fontsize=7)
    ax.minorticks_off()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{op} ({'out=' if cv == 'out' else cv})", fontsize=9)
    ax.set_xlabel("bytes per array", fontsize=8)
    ax.legend(fontsize=6)


def plot(doc: Mapping[str, Any], path: str | Path) -> None:
    """Top: stacked compute/allocation bars per thread count (NumPy for reference), one panel per op
    with an output and size. Bottom: GB/s against size per op, with NumPy, numexpr and STREAM."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    cfg = doc["config"]
    sizes, ops = cfg["sizes"], cfg["ops"]
    size_bytes = dict(zip(sizes, cfg["size_bytes"]))
    alloc_ops = [op for op in ALLOC_OPS if op in ops]
    decomp = {(d["op"], d["impl"], d["size"], d["threads"]): d for d in doc["decomposition"]}
    fig = Figure(figsize=(3.6 * max(len(sizes), len(ops)), 3.2 * (len(alloc_ops) + 1) + 0.8), layout="constrained")
    fig.suptitle(f"memory_ops.bench — {machine_summary(doc)}", fontsize=8)
    bottom = fig
    if alloc_ops:
        top, bottom = fig.subfigures(2, 1, height_ratios=[len(alloc_ops), 1])
        axes = top.subplots(len(alloc_ops), len(sizes), squeeze=False)
        for r, op in enumerate(alloc_ops):
            for c, size in enumerate(sizes):
                bars = [("numpy", decomp[(op, "numpy", size, 1)], "//")] if (op, "numpy", size, 1) in decomp else []
                bars += [(f"{t} thr", decomp[(op, "memory_ops", size, t)], "") for t in cfg["threads"]
                         if (op, "memory_ops", size, t) in decomp]  # fmt: skip
                if bars:
                    _bars_panel(axes[r][c], f"{op} · {human_bytes(size_bytes[size])}", bars)
                else:
                    axes[r][c].set_axis_off()
        _bars_legend(top)
    axes = bottom.subplots(1, len(ops), squeeze=False)[0]
    for ax, op in zip(axes, ops):
        _gbps_panel(ax, doc, op)
    axes[0].set_ylabel("GB/s (STREAM counting)", fontsize=8)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit status 2, as argparse does, without usage noise
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m memory_ops.bench",
        description="Allocation cost against compute cost as threads increase: memory_ops against "
        "NumPy, numexpr and a STREAM bandwidth limit.",
    )
    p.add_argument("--ops", help=f"comma-separated, from {','.join(OPS)} (default: all)")
    p.add_argument("--sizes", help="comma-separated; bytes per array with a unit (4KiB,8MiB) or elements (1000)")
    p.add_argument("--threads", help="comma-separated thread counts (default: 1,2,4... up to OMP_NUM_THREADS or the CPUs)")
    p.add_argument("--repeat", type=int, help="timed samples per measurement (default: by size)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats (a few seconds)")
    p.add_argument("--json", metavar="PATH", help="write all raw timings and machine facts as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="write the plot (needs matplotlib)")
    p.add_argument("--no-rich", action="store_true", help="plain-text table even when rich is installed")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """Validate the arguments (UsageError on the first bad one) and fill in the machine's defaults."""
    dtype = np.dtype(args.dtype)
    ops = parse_ops(args.ops) if args.ops is not None else list(OPS)
    if args.repeat is not None and args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat}: must be at least 1")
    threads = parse_threads(args.threads) if args.threads is not None else None
    json_path = check_writable(args.json, "JSON") if args.json else None
    plot_path = None
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None
        plot_path = check_writable(args.plot, "plot")
        from matplotlib.figure import Figure

        fmt = plot_path.suffix.lstrip(".").lower()
        if fmt not in Figure().canvas.get_supported_filetypes():
            raise UsageError(f"--plot {args.plot!r}: unknown image format {fmt!r} (use .png)")

    cache_list = caches()
    if args.sizes is not None:
        elements = [parse_size(t, dtype.itemsize) for t in _split_list(args.sizes) or [args.sizes]]
        size_bytes = sorted(set(n * dtype.itemsize for n in elements))
        mem = _meminfo().get("MemAvailable")
        if mem and 6 * size_bytes[-1] > mem:
            raise UsageError(f"size {human_bytes(size_bytes[-1])} per array needs ~6 arrays; only {human_bytes(mem)} of memory is available")
    elif args.quick:
        size_bytes = list(QUICK_SIZE_BYTES)
    else:
        size_bytes = default_size_bytes(cache_size(cache_list, 2), cache_size(cache_list), _meminfo().get("MemAvailable"))
    if threads is None:
        threads = default_threads(available_cpus(affinity_cpus(), cgroup_cpu_limit()))
    return Config(
        ops=ops,
        size_bytes=size_bytes,
        dtype=dtype,
        threads=threads,
        repeat=args.repeat,
        quick=args.quick,
        warmup=1 if args.quick else 2,
        target_sample_s=QUICK_TARGET_SAMPLE_S if args.quick else TARGET_SAMPLE_S,
        json_path=json_path,
        plot_path=plot_path,
    )


def _run_with_progress(cfg: Config, use_rich: bool) -> dict[str, Any]:
    total = total_steps(cfg)
    if use_rich:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = _console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("starting", total=total)
            started = [0]

            def step(text: str) -> None:  # called as each step starts: the previous one is done
                bar.update(task, description=text, completed=started[0])
                started[0] += 1

            doc = run(cfg, step)
            bar.update(task, completed=total)
            return doc
    done = [0]
    tty = sys.stderr.isatty()

    def step_plain(text: str) -> None:
        done[0] += 1
        if tty:
            print(f"\r[{done[0]}/{total}] {text}   ", end="", file=sys.stderr, flush=True)

    doc = run(cfg, step_plain)
    if tty:
        print(file=sys.stderr)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except UsageError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    use_rich = not args.no_rich
    if use_rich:
        try:
            import rich  # noqa: F401
        except ImportError:
            use_rich = False
    try:
        doc = _run_with_progress(cfg, use_rich)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    print_report(doc, use_rich)
    if cfg.json_path is not None:
        import json

        cfg.json_path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {cfg.json_path}")
    if cfg.plot_path is not None:
        plot(doc, cfg.plot_path)
        print(f"wrote {cfg.plot_path}")
    print(f"{sum(len(m['times_s']) for m in doc['measurements'])} samples in {doc['duration_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
