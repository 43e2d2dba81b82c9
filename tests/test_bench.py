"""memory_ops.bench: the CLI end to end (--quick), its JSON and plot, argument errors, and the
decomposition arithmetic and machine-fact parsers on synthetic input. No timing assertions."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memory_ops
from memory_ops import bench

ROOT = Path(__file__).resolve().parents[1]

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False


def run_cli(*args, timeout=600):
    """python -W error -m memory_ops.bench ARGS from the repository root: any warning fails the run."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "memory_ops.bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- JSON validation against the documented fields ------------------------------------------


def _type_ok(value, expected):
    types = expected if isinstance(expected, tuple) else (expected,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True  # JSON does not keep 1.0 apart from 1
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def validate(doc, fields, where="$"):
    """Errors (list of str) for `doc` against a RESULT_FIELDS-style {name: type | {nested}} table."""
    errors = []
    for name, expected in fields.items():
        path = f"{where}.{name}"
        if name not in doc:
            errors.append(f"{path}: missing")
        elif isinstance(expected, dict):
            if not isinstance(doc[name], dict):
                errors.append(f"{path}: not an object")
            else:
                errors += validate(doc[name], expected, path)
        elif not _type_ok(doc[name], expected):
            errors.append(f"{path}: {type(doc[name]).__name__} is not {expected}")
    return errors


def validate_result(doc):
    errors = validate(doc, bench.RESULT_FIELDS)
    if errors:
        return errors
    for i, cache in enumerate(doc["machine"]["caches"]):
        errors += validate(cache, bench.CACHE_FIELDS, f"$.machine.caches[{i}]")
    errors += [f"$.machine.versions.{k}: missing" for k in bench.VERSION_FIELDS if k not in doc["machine"]["versions"]]
    errors += [f"$.machine.env.{k}: missing" for k in bench.ENV_FIELDS if k not in doc["machine"]["env"]]
    for i, m in enumerate(doc["measurements"]):
        errors += validate(m, bench.MEASUREMENT_FIELDS, f"$.measurements[{i}]")
    for i, d in enumerate(doc["decomposition"]):
        errors += validate(d, bench.DECOMPOSITION_FIELDS, f"$.decomposition[{i}]")
    return errors


def _field_names(fields):
    for name, expected in fields.items():
        yield name
        if isinstance(expected, dict):
            yield from _field_names(expected)


def test_every_json_field_is_documented_in_the_module_docstring():
    tables = (bench.RESULT_FIELDS, bench.CACHE_FIELDS, bench.MEASUREMENT_FIELDS, bench.DECOMPOSITION_FIELDS)
    names = {n for t in tables for n in _field_names(t)} | set(bench.VERSION_FIELDS) | set(bench.ENV_FIELDS)
    undocumented = sorted(n for n in names if n not in bench.__doc__)
    assert not undocumented
    assert bench.SCHEMA in bench.__doc__


# --- the CLI end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["--quick", "--json", str(out / "result.json")]
    if HAVE_MATPLOTLIB:
        args += ["--plot", str(out / "result.png")]
    proc = run_cli(*args)
    return proc, out


def test_quick_run_succeeds_without_warnings(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Warning" not in proc.stderr
    assert "Fresh output = compute + allocation" in proc.stdout
    assert "Throughput against NumPy" in proc.stdout


def test_quick_json_validates_and_is_complete(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "result.json").read_text())
    assert validate_result(doc) == []
    assert doc["schema"] == bench.SCHEMA
    cfg = doc["config"]
    assert cfg["quick"] is True
    assert cfg["ops"] == list(bench.OPS)
    assert cfg["size_bytes"] == list(bench.QUICK_SIZE_BYTES)
    assert cfg["threads"][0] == 1 and cfg["threads"] == sorted(set(cfg["threads"]))
    assert doc["machine"]["caches"] == [] or doc["machine"]["llc_bytes"] is not None

    keys = {(m["op"], m["variant"], m["impl"], m["size"], m["threads"]) for m in doc["measurements"]}
    have_numexpr = doc["machine"]["versions"]["numexpr"] is not None
    for size in cfg["sizes"]:
        for threads in cfg["threads"]:
            for op in bench.OPS:
                for variant in bench.VARIANTS[op]:
                    assert (op, variant, "memory_ops", size, threads) in keys
                    assert (op, variant, "numexpr", size, threads) in keys or not have_numexpr
            if doc["machine"]["stream_hook"]:
                for kind in ("copy", "scale", "add", "sum"):
                    assert ("stream", kind, "memory_ops", size, threads) in keys
                assert ("first_touch", "touch", "memory_ops", size, threads) in keys
        for op in bench.OPS:  # NumPy is single-threaded: once per size
            for variant in bench.VARIANTS[op]:
                assert [k for k in keys if k[:4] == (op, variant, "numpy", size)] == [(op, variant, "numpy", size, 1)]

    for m in doc["measurements"]:
        assert len(m["times_s"]) == 2  # --quick: 2 repeats
        assert all(t > 0 for t in m["times_s"])
        assert m["min_s"] <= m["q1_s"] <= m["median_s"] <= m["q3_s"] <= m["max_s"]
        assert m["size_bytes"] == m["size"] * cfg["itemsize"]
        assert math.isclose(m["gbps"], m["bytes_per_call"] / m["median_s"] / 1e9)
        if m["op"] in bench.OP_ARRAYS:
            assert m["bytes_per_call"] == bench.OP_ARRAYS[m["op"]] * m["size_bytes"]
        if m["op"] == "stream":
            assert m["bytes_per_call"] == bench.STREAM_ARRAYS[m["variant"]] * m["size_bytes"]
        if m["limit_gbps"] is not None:
            assert math.isclose(m["pct_of_limit"], 100 * m["gbps"] / m["limit_gbps"])

    medians = {(m["op"], m["variant"], m["impl"], m["size"], m["threads"]): m["median_s"] for m in doc["measurements"]}
    decomp_keys = set()
    for d in doc["decomposition"]:
        fresh = medians[(d["op"], "fresh", d["impl"], d["size"], d["threads"])]
        warm = medians[(d["op"], "out", d["impl"], d["size"], d["threads"])]
        assert d["fresh_s"] == fresh and d["compute_s"] == warm
        assert math.isclose(d["allocation_s"], max(fresh - warm, 0.0))
        assert 0.0 <= d["allocation_share"] <= 1.0
        decomp_keys.add((d["op"], d["impl"], d["size"], d["threads"]))
    for op in bench.ALLOC_OPS:
        for size in cfg["sizes"]:
            for threads in cfg["threads"]:
                assert (op, "memory_ops", size, threads) in decomp_keys


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is an optional extra")
def test_quick_plot_is_a_png(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    data = (out / "result.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_report_renders_as_markdown_and_plain_text(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "result.json").read_text())
    for spec in (bench.decomposition_table(doc), bench.throughput_table(doc)):
        md = bench.markdown_table(spec)
        header = md.splitlines()[2]
        assert header.count("|") == len(spec.columns) + 1
        assert all(line.count("|") - line.count("\\|") == len(spec.columns) + 1 for line in md.splitlines() if line.startswith("|"))
        assert spec.title in bench.plain_table(spec)
    assert len(bench.story(doc["decomposition"], doc["measurements"])) == len(bench.ALLOC_OPS)


def test_disturbed_measurements_are_marked(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "result.json").read_text())
    target = next(m for m in doc["measurements"] if m["op"] == "scale_copy" and m["variant"] == "out"
                  and m["impl"] == "memory_ops" and m["threads"] == doc["config"]["threads"][-1])  # fmt: skip
    for m in doc["measurements"]:
        m["other_cpus"] = None
    target["other_cpus"] = 1.0
    for spec in (bench.decomposition_table(doc), bench.throughput_table(doc)):
        marked = [row for group in spec.groups for row in group if row[2].endswith("*")]
        assert marked and all(row[0].startswith("scale_copy") for row in marked)
        assert "other processes kept" in spec.caption
    notes = bench.interference_notes(doc["measurements"], 0.3)
    assert len(notes) == 1 and f"{bench.human_bytes(target['size_bytes'])} × {target['threads']} thr" in notes[0]


def test_other_cpus_from_cpu_clock_readings():
    # (wall s, all CPUs busy s, own CPU s): 1 s wall, 1.5 CPU-s busy, 1.0 of it ours -> others used 0.5 CPUs
    assert bench.other_cpus((10.0, 100.0, 5.0), (11.0, 101.5, 6.0)) == 0.5
    assert bench.other_cpus((10.0, 100.0, 5.0), (11.0, 100.9, 6.0)) == 0.0  # tick rounding: never negative
    assert bench.other_cpus((10.0, 100.0, 5.0), (10.1, 101.0, 5.0)) is None  # too short to tell
    assert bench.other_cpus(None, (11.0, 101.5, 6.0)) is None
    assert bench.interference_notes([], 0.01) == []
    assert bench.interference_notes([], None) == []
    assert "0.50 CPUs busy" in bench.interference_notes([], 0.5)[0]
    clock = bench.cpu_clock()
    assert clock is None or (len(clock) == 3 and all(v >= 0 for v in clock))


def test_plain_output_with_chosen_options(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("--no-rich", "--ops", "safe_sum,scale_copy", "--sizes", "1000,4KiB", "--threads", "1",
                   "--repeat", "1", "--dtype", "float32", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Fresh output = compute + allocation" in proc.stdout
    doc = json.loads(out.read_text())
    assert validate_result(doc) == []
    assert doc["config"]["ops"] == ["safe_sum", "scale_copy"]
    assert doc["config"]["sizes"] == [1000, 1024] and doc["config"]["dtype"] == "float32"
    assert {m["op"] for m in doc["measurements"]} <= {"safe_sum", "scale_copy", "stream", "first_touch"}
    assert {m["dtype"] for m in doc["measurements"]} == {"float32"}
    assert {m["threads"] for m in doc["measurements"]} == {1}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ops", "scale_copy,nope"], "unknown op 'nope'"),
        (["--ops", ","], "unknown op"),
        (["--sizes", "0"], "at least 1 element"),
        (["--sizes", "1000,0KiB"], "at least 1 element"),
        (["--sizes", "4 parsecs"], "bad size"),
        (["--threads", "0"], "at least 1"),
        (["--threads", "2,-1"], "at least 1"),
        (["--threads", "two"], "bad thread count"),
        (["--repeat", "0"], "at least 1"),
        (["--dtype", "int8"], "invalid choice"),
        (["--json", "/nonexistent-dir/r.json"], "does not exist"),
        (["--plot", "/nonexistent-dir/r.png"], "does not exist"),
        (["--json", "."], "is a directory"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    if args[0] == "--plot" and not HAVE_MATPLOTLIB:
        message = "needs matplotlib"
    proc = run_cli("--quick", *args, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_plot_without_matplotlib_exits_2(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert bench.main(["--quick", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err
    assert not (tmp_path / "p.png").exists()


def test_writability_check_leaves_no_file(tmp_path):
    target = tmp_path / "new.json"
    assert bench.check_writable(str(target), "JSON") == target
    assert not target.exists()


# --- the decomposition arithmetic on synthetic timings --------------------------------------


def test_decompose_splits_fresh_into_compute_and_allocation():
    d = bench.decompose(fresh_s=10e-3, compute_s=4e-3, first_touch_s=5e-3)
    assert d["compute_s"] == 4e-3
    assert math.isclose(d["allocation_s"], 6e-3)
    assert math.isclose(d["allocation_share"], 0.6)
    assert d["fresh_s"] == 10e-3 and d["first_touch_s"] == 5e-3


def test_decompose_clamps_noise_and_handles_zero():
    d = bench.decompose(fresh_s=3.9e-3, compute_s=4e-3)  # a fresh call that looked faster
    assert d["allocation_s"] == 0.0 and d["allocation_share"] == 0.0
    assert d["first_touch_s"] is None
    assert bench.decompose(0.0, 0.0)["allocation_share"] == 0.0
    with pytest.raises(ValueError):
        bench.decompose(-1.0, 1.0)
    with pytest.raises(ValueError):
        bench.decompose(1.0, float("nan"))


def _m(op, variant, impl, size, threads, median_s, itemsize=8):
    nbytes = (bench.OP_ARRAYS.get(op) or bench.STREAM_ARRAYS.get(variant, 1)) * size * itemsize
    return {"op": op, "variant": variant, "impl": impl, "size": size, "size_bytes": size * itemsize,
            "threads": threads, "bytes_per_call": nbytes, "median_s": median_s}  # fmt: skip


def synthetic_measurements():
    """Compute halves per thread doubling; allocation (10 ms) and first touch (8 ms) do not shrink."""
    ms = []
    for threads in (1, 2, 4):
        compute = 40e-3 / threads
        for op in bench.ALLOC_OPS:
            ms.append(_m(op, "out", "memory_ops", 1 << 24, threads, compute))
            ms.append(_m(op, "fresh", "memory_ops", 1 << 24, threads, compute + 10e-3))
        ms.append(_m("first_touch", "touch", "memory_ops", 1 << 24, threads, 8e-3))
        ms.append(_m("stream", "scale", "memory_ops", 1 << 24, threads, compute / 2))
    ms.append(_m("scale_copy", "out", "numpy", 1 << 24, 1, 50e-3))
    ms.append(_m("scale_copy", "fresh", "numpy", 1 << 24, 1, 60e-3))
    ms.append(_m("add_arrays", "fresh", "numexpr", 1 << 24, 2, 60e-3))  # no out= partner: not decomposed
    return ms


def test_decompositions_show_the_allocation_share_growing_with_threads():
    decomps = bench.decompositions(synthetic_measurements())
    mine = [d for d in decomps if d["impl"] == "memory_ops" and d["op"] == "scale_copy"]
    assert [d["threads"] for d in mine] == [1, 2, 4]
    assert all(math.isclose(d["allocation_s"], 10e-3) for d in mine)
    assert [d["compute_s"] for d in mine] == [40e-3, 20e-3, 10e-3]
    shares = [d["allocation_share"] for d in mine]
    assert [round(s, 4) for s in shares] == [0.2, round(1 / 3, 4), 0.5]
    assert all(d["first_touch_s"] == 8e-3 for d in mine)
    numpy = [d for d in decomps if d["impl"] == "numpy"]
    assert len(numpy) == 1 and math.isclose(numpy[0]["allocation_share"], 10 / 60)
    assert numpy[0]["first_touch_s"] == 8e-3  # first touch at 1 thread
    assert not [d for d in decomps if d["impl"] == "numexpr"]
    assert {d["op"] for d in decomps} == set(bench.ALLOC_OPS)


def test_story_reports_the_trend():
    ms = synthetic_measurements()
    lines = bench.story(bench.decompositions(ms), ms)
    assert len(lines) == 2
    assert lines[0].startswith("scale_copy @ 128 MiB: 1→4 threads")
    assert "allocation share 20% → 50%" in lines[0]
    assert "(4.0×)" in lines[0]
    assert "NumPy's fresh a*f" in lines[0]


def test_attach_limits_compares_with_the_stream_kernel_of_the_same_shape():
    ms = synthetic_measurements()
    bench.attach_limits(ms)
    by_key = {(m["op"], m["variant"], m["impl"], m["threads"]): m for m in ms}
    out2 = by_key[("scale_copy", "out", "memory_ops", 2)]
    assert math.isclose(out2["gbps"], 2 * 8 * (1 << 24) / 20e-3 / 1e9)
    assert math.isclose(out2["pct_of_limit"], 50.0)  # the synthetic STREAM scale is twice as fast
    assert by_key[("add_arrays", "out", "memory_ops", 2)]["limit_gbps"] is None  # no STREAM add measured
    assert by_key[("first_touch", "touch", "memory_ops", 1)]["pct_of_limit"] is None


def test_spread_statistics():
    s = bench.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"median_s": 3.0, "q1_s": 2.0, "q3_s": 4.0, "min_s": 1.0, "max_s": 5.0}
    assert bench.spread([2.5]) == {"median_s": 2.5, "q1_s": 2.5, "q3_s": 2.5, "min_s": 2.5, "max_s": 2.5}


# --- configuration and machine facts --------------------------------------------------------


@pytest.mark.parametrize(
    "token, itemsize, elements",
    [("1000", 8, 1000), ("4KiB", 8, 512), ("4k", 4, 1024), ("8MiB", 8, 1 << 20), ("1.5K", 8, 192), ("1G", 8, 1 << 27)],
)
def test_parse_size(token, itemsize, elements):
    assert bench.parse_size(token, itemsize) == elements


@pytest.mark.parametrize("token", ["0", "0KiB", "4B", "-5", "1.5", "12 furlongs", ""])
def test_parse_size_rejects(token):
    with pytest.raises(bench.UsageError):
        bench.parse_size(token, 8)


def test_default_sizes_span_cache_to_beyond_four_llc():
    sizes = bench.default_size_bytes(l2=1 << 20, llc=32 << 20)
    assert sizes == [4 << 10, 256 << 10, 8 << 20, 128 << 20]
    odd = bench.default_size_bytes(l2=1280 << 10, llc=96 << 20)
    assert odd[-1] >= 4 * (96 << 20) and odd[0] == 4 << 10
    assert bench.default_size_bytes(None, None) == sizes  # no sysfs: 1 MiB L2 / 32 MiB LLC assumed
    small_machine = bench.default_size_bytes(1 << 20, 32 << 20, mem_available=2 << 30)
    assert 8 * small_machine[-1] <= 1 << 30


def test_thread_ladder_and_omp_num_threads():
    assert bench.thread_ladder(1) == [1]
    assert bench.thread_ladder(2) == [1, 2]
    assert bench.thread_ladder(6) == [1, 2, 4, 6]
    assert bench.thread_ladder(8) == [1, 2, 4, 8]
    assert bench.default_threads(4, env={}) == [1, 2, 4]
    assert bench.default_threads(4, env={"OMP_NUM_THREADS": "3"}) == [1, 2, 3]
    assert bench.default_threads(4, env={"OMP_NUM_THREADS": "8,2"}) == [1, 2, 4, 8]
    assert bench.default_threads(4, env={"OMP_NUM_THREADS": "junk"}) == [1, 2, 4]


def test_parse_ops_and_threads():
    assert bench.parse_ops("safe_sum, scale_copy,safe_sum") == ["safe_sum", "scale_copy"]
    assert bench.parse_threads("4,1,2,2") == [1, 2, 4]
    with pytest.raises(bench.UsageError, match="choose from"):
        bench.parse_ops("scale")


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "proc").write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")
    assert bench.cgroup_cpu_limit(tmp_path, tmp_path / "proc") == 1.5
    (tmp_path / "job" / "cpu.max").write_text("max 100000\n")
    assert bench.cgroup_cpu_limit(tmp_path, tmp_path / "proc") is None
    (tmp_path / "cpu.max").write_text("300000 100000\n")  # a limit on an ancestor counts
    assert bench.cgroup_cpu_limit(tmp_path, tmp_path / "proc") == 3.0
    assert bench.available_cpus(affinity=8, cgroup_limit=1.5) == 2
    assert bench.available_cpus(affinity=2, cgroup_limit=None) == 2
    assert bench.available_cpus(affinity=2, cgroup_limit=0.2) == 1


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "proc").write_text("4:memory:/x\n3:cpu,cpuacct:/\n")
    d = tmp_path / "cpu,cpuacct"
    d.mkdir()
    (d / "cpu.cfs_quota_us").write_text("-1\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    assert bench.cgroup_cpu_limit(tmp_path, tmp_path / "proc") is None
    (d / "cpu.cfs_quota_us").write_text("200000\n")
    assert bench.cgroup_cpu_limit(tmp_path, tmp_path / "proc") == 2.0


def test_caches_from_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"), (3, "Unified", "96M")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    found = bench.caches(tmp_path)
    assert [(c["level"], c["type"], c["size_bytes"]) for c in found] == [
        (1, "Data", 48 << 10), (1, "Instruction", 32 << 10), (2, "Unified", 2 << 20), (3, "Unified", 96 << 20)
    ]  # fmt: skip
    assert bench.cache_size(found) == 96 << 20
    assert bench.cache_size(found, 2) == 2 << 20
    assert bench.cache_size(found, 1) == 48 << 10
    assert bench.caches(tmp_path / "missing") == []


def test_cpuinfo_parsing():
    text = (
        "processor\t: 0\nmodel name\t: Example CPU 9000\nphysical id\t: 0\ncore id\t\t: 0\n\n"
        "processor\t: 1\nmodel name\t: Example CPU 9000\nphysical id\t: 0\ncore id\t\t: 0\n\n"
        "processor\t: 2\nmodel name\t: Example CPU 9000\nphysical id\t: 0\ncore id\t\t: 1\n"
    )
    assert bench.cpu_model(text) == "Example CPU 9000"
    assert bench.physical_cores(text) == 2
    assert bench.physical_cores("processor\t: 0\n") is None


def test_machine_info_has_the_documented_fields():
    info = bench.machine_info()
    assert validate({"machine": info}, {"machine": bench.RESULT_FIELDS["machine"]}) == []
    assert info["available_cpus"] >= 1


def _tiny_config(**kw):
    cfg = dict(ops=list(bench.OPS), size_bytes=[4096], dtype=np.dtype(np.float64), threads=[1], repeat=1,
               quick=True, warmup=1, target_sample_s=1e-5)  # fmt: skip
    cfg.update(kw)
    return bench.Config(**cfg)


def test_run_without_numexpr_and_without_the_stream_hook(monkeypatch):
    monkeypatch.setitem(sys.modules, "numexpr", None)  # import numexpr -> ImportError
    monkeypatch.setattr(bench, "_stream_hook", lambda: None)
    doc = bench.run(_tiny_config())
    assert validate_result(doc) == []
    impls = {(m["op"], m["impl"]) for m in doc["measurements"]}
    assert not any(impl == "numexpr" for _, impl in impls)
    assert not any(op == "stream" for op, _ in impls)
    assert ("first_touch", "numpy") in impls  # the fallback first touch
    assert all(m["limit_gbps"] is None for m in doc["measurements"])
    assert any("numexpr is not installed" in n for n in doc["notes"])
    assert any("no _stream hook" in n for n in doc["notes"])
    assert all(d["first_touch_s"] is not None for d in doc["decomposition"])


def test_run_restores_the_thread_count():
    import memory_ops

    before = memory_ops.get_num_threads()
    doc = bench.run(_tiny_config(ops=["safe_sum"], threads=[1, 2], dtype=np.dtype(np.float32)))
    assert memory_ops.get_num_threads() == before
    assert validate_result(doc) == []
    assert {m["threads"] for m in doc["measurements"] if m["impl"] == "memory_ops"} == {1, 2}
    assert doc["decomposition"] == []  # safe_sum has no output to allocate


# ---- benchmarks/targets.py's verdicts ------------------------------------------------------------


def _benchmark_module(repo_root, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, repo_root / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _targets_module(repo_root):
    return _benchmark_module(repo_root, "targets")


@pytest.mark.parametrize(
    "ratio, target, ceiling, expected",
    [
        (1.5, 1.5, None, "PASS"),
        (1.6, 1.5, 1.2, "PASS"),  # met: a ceiling below it is only noise in the limit
        (1.19, 1.5, 1.16, "OUT"),  # above a ceiling that is below the target
        (1.05, 1.5, 1.16, "OUT"),  # within 10% of it
        (1.0, 1.5, 1.16, "FAIL"),  # more than 10% below the ceiling: ours is slow, not the machine
        (1.4, 1.5, 1.6, "FAIL"),  # the target was within reach
        (1.4, 1.5, None, "FAIL"),  # no strict ceiling: never OUT
    ],
)
def test_targets_verdict_reads_out_only_below_a_ceiling_under_the_target(repo_root, ratio, target, ceiling, expected):
    assert _targets_module(repo_root).verdict(ratio, target, ceiling) == expected


def test_targets_summary_counts_each_verdict(repo_root, capsys):
    targets = _targets_module(repo_root)
    rep = targets.Report()
    rep.check("met", 2.0, 1.5)
    rep.check("out", 1.19, 1.5, ceiling=1.16)
    rep.check("failed", 0.5, 1.5, ceiling=1.16)
    rep.summary()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["PASS", "OUT", "FAIL"]
    assert lines[-1].startswith("1 of 3 targets met; 1 out of reach in this run")
    assert lines[-1].endswith("; 1 failed")


# ---- benchmarks/targets.py's yardstick for safe_sum: its arithmetic alone --------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [0, 1, 15, 8192, 5 * 8192 + 17, 37 * 8192, 37 * 8192 + 100])
def test_sum_arithmetic_takes_every_element_once(simd, nthreads, dtype, n):
    # Integers sum exactly along both paths (float64 TwoSum, float32 widened), so a block or element
    # skipped, on any target and thread count, changes the result. 37 blocks: float32's groups of 4
    # whole blocks end short inside the threads' ranges.
    values = np.random.default_rng(n).integers(-1000, 1000, n)
    a = values.astype(dtype)
    assert memory_ops._core._sum_arithmetic(a) == float(values.sum())


def test_sum_arithmetic_keeps_the_float64_compensations(simd, nthreads):
    # In lane 0 of the first block, 2^53 absorbs the 510 ones after it (2^53 + 1 rounds back to 2^53)
    # until -2^53 cancels it: only TwoSum's compensation holds them.
    n = 37 * 8192
    a = np.ones(n)
    a[0], a[8192 - 16] = 2.0**53, -(2.0**53)
    assert memory_ops._core._sum_arithmetic(a) == n - 2


@pytest.mark.parametrize(
    "a",
    [
        np.ones(10, dtype=np.int64),
        np.ones(10, dtype=np.float16),
        np.ones(20)[::2],
        np.frombuffer(bytearray(8 * 10 + 1), dtype=np.float64, offset=1, count=10),
    ],
    ids=["int64", "float16", "strided", "misaligned"],
)
def test_sum_arithmetic_refuses_arrays_it_cannot_read(a):
    # (one message names every requirement, as _stream's does: a benchmark's private hook)
    with pytest.raises(TypeError, match="_sum_arithmetic: a must be an aligned, C-contiguous float32 or float64 array"):
        memory_ops._core._sum_arithmetic(a)
    with pytest.raises(TypeError, match="_sum_arithmetic: a must be an ndarray"):
        memory_ops._core._sum_arithmetic(list(a))


# ---- benchmarks/sum_ceiling.py's bare loops (benchmarks/bare_sum.cpp) ----------------------------


@pytest.fixture(scope="module")
def sum_ceiling(repo_root):
    return _benchmark_module(repo_root, "sum_ceiling")


@pytest.fixture(scope="module")
def bare_sum(sum_ceiling, tmp_path_factory):
    if sum_ceiling.compiler() is None:
        pytest.skip("no C++ compiler to build benchmarks/bare_sum.cpp")
    return sum_ceiling.build(tmp_path_factory.mktemp("bare_sum"))


@pytest.mark.parametrize("n", [0, 1, 63, 64, 1000, 100_003])
def test_sum_ceiling_bare_loops_take_every_element_once(sum_ceiling, bare_sum, nthreads, n):
    # Integers sum exactly in every loop, so an element skipped or taken twice (a thread's part, a
    # tail) changes the result.
    import ctypes

    values = np.random.default_rng(n).integers(-1000, 1000, n)
    expected = float(values.sum())
    x64, x32 = values.astype(np.float64), values.astype(np.float32)
    p64, p32 = sum_ceiling.pointer(x64, ctypes.c_double), sum_ceiling.pointer(x32, ctypes.c_float)
    assert bare_sum.bare_read(p64, n) == expected
    assert bare_sum.bare_two_sum(p64, n) == expected
    assert bare_sum.bare_widen(p32, n) == expected


def test_sum_ceiling_bare_two_sum_keeps_the_compensations(sum_ceiling, bare_sum, nthreads):
    # 2^53 absorbs the ones after it in its lane until -2^53 cancels it: only the kept errors hold
    # them (where the loops are AVX-512 ones; the scalar fallback is a plain sum).
    import ctypes

    if not bare_sum.bare_avx512():
        pytest.skip("bare_sum.cpp's loops are plain scalar sums without AVX-512")
    n = 1 << 16
    a = np.ones(n)
    a[0], a[8 * 1024] = 2.0**53, -(2.0**53)
    assert bare_sum.bare_two_sum(sum_ceiling.pointer(a, ctypes.c_double), n) == n - 2
