// Registration only: names, signatures and docstrings of memory_ops._core.
#include <pthread.h>

#include <string>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "alloc.hpp"
#include "cache.hpp"
#include "dispatch.hpp"
#include "fastcall.hpp"
#include "parallel.hpp"
#include "op_bindings.hpp"
#include "ops.hpp"

namespace py = pybind11;
using namespace memory_ops;

namespace {

int get_num_threads()
{
#ifdef _OPENMP
    if (fork_guard().serial_only.load()) return 1;  // a fork child runs every kernel serially (fork_state)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void set_num_threads(int n)
{
    if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}

std::vector<std::string> names(bool only_supported)
{
    std::vector<std::string> out;
    for (int i = 0; i < target_count; ++i)
        if (!only_supported || target_supported(i)) out.emplace_back(compiled_target_names[i]);
    return out;
}

void set_simd(const py::object& name)
{
    if (name.is_none()) {
        simd_cap().store(0);
        return;
    }
    const std::string s = py::str(name);
    const int i = find_target(s.c_str());
    if (i < 0 || !target_supported(i)) {
        std::string have;
        for (const auto& n : names(true)) have += (have.empty() ? "" : ", ") + n;
        throw py::value_error("SIMD target '" + s + "' is " + (i < 0 ? "not compiled into memory_ops" : "not supported by this CPU") +
                              "; available here: " + have);
    }
    simd_cap().store(i);
}

py::dict build_info()
{
    py::dict d;
    d["simd"] = compiled_target_names[active_target()];
    d["simd_compiled"] = names(false);
    d["simd_supported"] = names(true);
    d["num_threads"] = get_num_threads();
    d["serial_threshold"] = serial_threshold().load();
    d["stream_threshold"] = stream_threshold().load();
    d["llc_bytes"] = last_level_cache_bytes();
    d["fork_child_serial"] = fork_guard().serial_only.load();
#ifdef _OPENMP
    d["openmp"] = _OPENMP;
#else
    d["openmp"] = py::none();
#endif
    d["xsimd"] = std::to_string(XSIMD_VERSION_MAJOR) + "." + std::to_string(XSIMD_VERSION_MINOR) + "." +
                 std::to_string(XSIMD_VERSION_PATCH);
    d["compiler"] = MEMORY_OPS_CXX_COMPILER;
    d["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
                    std::to_string(PYBIND11_VERSION_PATCH);
    return d;
}

// ---- the four ops: vectorcall entry points (see fastcall.hpp) ----------------------------------
// Docstrings open with the signature line CPython turns into __text_signature__ (inspect.signature).

constexpr const char* scale_copy_doc = R"doc(scale_copy(input, factor, *, out=None)
--

Return ``input * factor`` as a new array (or in ``out``).

The result dtype is NumPy's (NEP 50): a Python float keeps float32 as float32; a NumPy float64
scalar makes it float64; integer input with a float factor gives float64. float32/float64/int32/int64
run natively without converting; other real dtypes are converted once as NumPy promotes them.
The input may have any shape and strides and is never copied to make it contiguous; the new array
is C-ordered with the input's shape. ``out`` must be a writable ndarray of the result dtype and
shape (any strides); ``out`` may be ``input`` itself (in place) or overlap it (the answer is still
NumPy's). Returns the result (``out`` itself when given).

Every thread computes in the calling thread's rounding mode (and, on x86, its flush-to-zero and
denormals-are-zero), and floating-point overflow, invalid operations (0 * inf) and underflow are
reported as NumPy reports them for ``input * factor``, after the result is written: np.errstate and
np.seterr decide (by default a RuntimeWarning for overflow and invalid, FloatingPointError under
"raise").

Raises TypeError for a non-real factor, a non-numeric input or a wrong ``out`` type/dtype;
ValueError for a wrong ``out`` shape or a read-only ``out``.)doc";

constexpr const char* scale_inplace_doc = R"doc(scale_inplace(arr, factor)
--

Multiply ``arr`` by ``factor`` in place (``arr *= factor``); returns None.

``arr`` must be a writable float32 or float64 ndarray in native byte order, with any shape and
strides; it is never copied. Anything else raises before a byte is written: TypeError for a
non-ndarray (a list would be converted and the copy lost), another dtype or a non-real factor,
ValueError for a read-only array. A NumPy float64 scalar factor on a float32 array is applied in
float64 and rounded back, as NumPy does. Floating-point exceptions are those of scale_copy: under
np.errstate(over="raise") the array is already scaled when FloatingPointError is raised, as with
NumPy's ``arr *= factor``.)doc";

constexpr const char* add_arrays_doc = R"doc(add_arrays(a, b, *, out=None)
--

Return ``a + b`` for arrays of equal shape, as a new array (or in ``out``).

No broadcasting: different shapes raise ValueError naming both, even when the sizes agree.
The result dtype is NumPy's; float32/float64/int32/int64 pairs run natively (integers wrap like
NumPy's), other real dtypes are converted once as NumPy promotes them. Inputs of any strides are
read in place. ``out`` rules, rounding and floating-point exceptions are those of scale_copy (the
exceptions reported as NumPy's ``a + b`` reports them).)doc";

constexpr const char* safe_sum_doc = R"doc(safe_sum(arr)
--

Return the sum of all elements of ``arr`` as a Python number.

Floating input gives a float, accumulated in float64 with compensated summation (float32 widened
exactly): more accurate than NumPy's pairwise ``arr.sum()``, and bit-identical for any thread count
and any SIMD target. It is computed in round-to-nearest whatever rounding mode the calling thread
has set, and leaves that thread's floating-point state as it was. A non-finite float result is
reported as NumPy reports ``arr.sum()``, under ``np.errstate``: "overflow encountered in reduce"
when finite values sum to an infinity, "invalid value encountered in reduce" when infinities of
both signs meet, a signalling NaN is summed, or non-NaN values sum to NaN; quiet NaNs and
infinities of one sign sum silently. Integer and bool input gives an exact int computed modulo
2**64 like NumPy's int64 (uint64 for unsigned) accumulator. Any shape and strides; the input is
never copied unless its dtype needs converting (float16, small integers, non-native byte
order).)doc";

PyObject* scale_copy_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames)
{
    static const bind::signature<3> sig{"scale_copy", {"input", "factor", "out"}, 2, 2};
    std::array<PyObject*, 3> a;
    if (!sig.parse(args, nargs, kwnames, a)) return nullptr;
    return bind::translate([&] {
        return bind::scale_copy(bind::arg_or_none(a[0]), bind::arg_or_none(a[1]), bind::arg_or_none(a[2])).release().ptr();
    });
}

PyObject* scale_inplace_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames)
{
    static const bind::signature<2> sig{"scale_inplace", {"arr", "factor"}, 2, 2};
    std::array<PyObject*, 2> a;
    if (!sig.parse(args, nargs, kwnames, a)) return nullptr;
    return bind::translate([&] {
        bind::scale_inplace(bind::arg_or_none(a[0]), bind::arg_or_none(a[1]));
        return py::none().release().ptr();
    });
}

PyObject* add_arrays_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames)
{
    static const bind::signature<3> sig{"add_arrays", {"a", "b", "out"}, 2, 2};
    std::array<PyObject*, 3> a;
    if (!sig.parse(args, nargs, kwnames, a)) return nullptr;
    return bind::translate([&] {
        return bind::add_arrays(bind::arg_or_none(a[0]), bind::arg_or_none(a[1]), bind::arg_or_none(a[2])).release().ptr();
    });
}

PyObject* safe_sum_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames)
{
    static const bind::signature<1> sig{"safe_sum", {"arr"}, 1, 1};
    std::array<PyObject*, 1> a;
    if (!sig.parse(args, nargs, kwnames, a)) return nullptr;
    return bind::translate([&] { return bind::safe_sum(bind::arg_or_none(a[0])).release().ptr(); });
}

PyMethodDef op_methods[] = {
    {"scale_copy", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&scale_copy_fast)),
     METH_FASTCALL | METH_KEYWORDS, scale_copy_doc},
    {"scale_inplace", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&scale_inplace_fast)),
     METH_FASTCALL | METH_KEYWORDS, scale_inplace_doc},
    {"add_arrays", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&add_arrays_fast)),
     METH_FASTCALL | METH_KEYWORDS, add_arrays_doc},
    {"safe_sum", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&safe_sum_fast)),
     METH_FASTCALL | METH_KEYWORDS, safe_sum_doc},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PYBIND11_MODULE(_core, m)
{
    // See fork_guard in kernels/parallel.hpp: a fork child must not enter libgomp's dead pool.
    pthread_atfork(nullptr, nullptr, [] { on_fork_child(); });
    stream_threshold();  // reads sysfs now rather than inside the first kernel call
    bind::init_allocator();

    m.doc() = "memory_ops compiled core: copy-free xsimd + OpenMP kernels. Use the memory_ops package.";

    if (PyModule_AddFunctions(m.ptr(), op_methods) != 0) throw py::error_already_set();

    m.def("get_num_threads", &get_num_threads,
          "Number of OpenMP threads a kernel started from this Python thread may use (1 in a fork child of "
          "a process that ran a parallel kernel: such a child runs kernels serially).");
    m.def("set_num_threads", &set_num_threads, py::arg("n"),
          "Set the number of OpenMP threads for kernels started from this Python thread (n >= 1).");
    m.def("simd_arch", [] { return std::string(compiled_target_names[active_target()]); },
          "Name of the SIMD target the kernels run on (e.g. 'avx512bw', 'avx2', 'sse2', 'neon64').");
    m.def("_set_simd", &set_simd, py::arg("name"),
          "Cap the SIMD target at `name` (None: the best this CPU has). For tests and MEMORY_OPS_SIMD.");
    m.def("_stream", &bind::stream, py::arg("op"), py::arg("dst"), py::arg("a"), py::arg("b"),
          py::arg("scalar") = 0.0,
          "STREAM-style bandwidth reference on contiguous float64 arrays, for memory_ops.bench: op is "
          "copy (dst=a), scale (dst=scalar*a), add (dst=a+b), sum (returns sum(a)) or touch (one write per "
          "4 KiB page of dst). Uses get_num_threads() threads, without the GIL.");
    m.def("_sum_arithmetic", &bind::sum_arithmetic, py::arg("a"),
          "safe_sum's arithmetic alone on a contiguous float32 or float64 array (its inner loop over each "
          "block, blocks shared between threads as safe_sum shares them, none of its other work), for "
          "benchmarks/targets.py; returns a plain sum of the blocks' lanes, close to sum(a). Uses "
          "get_num_threads() threads, without the GIL.");
    m.def("_new_float64",
          [](py::ssize_t n) {
              if (n < 0) throw py::value_error("_new_float64: n must be >= 0");
              return bind::new_array(py::dtype::of<double>(), {n});
          },
          py::arg("n"),
          "A new, uninitialised float64 array of n elements, from the allocator the ops take fresh "
          "outputs from (huge-page mappings from 32 MiB). For benchmarks/targets.py.");
    m.def("_set_serial_threshold",
          [](index_t n) {
              if (n < 0) throw py::value_error("_set_serial_threshold: n must be >= 0");
              return serial_threshold().exchange(n);
          },
          py::arg("n"),
          "Set the number of elements below which kernels run serially; returns the previous value. "
          "For benchmarks/threshold.py.");
    m.def("_set_stream_threshold",
          [](index_t bytes) {
              if (bytes < 0) throw py::value_error("_set_stream_threshold: bytes must be >= 0");
              return stream_threshold().exchange(bytes);
          },
          py::arg("bytes"),
          "Set the operand bytes (inputs plus output) from which scale and add store their output with "
          "streaming (non-temporal) stores; returns the previous value (default: the last-level cache "
          "size). For tests and benchmarks.");
    m.def("_sum_planned_blocks",
          [](bool reset) { return reset ? sum_planned_blocks().exchange(0) : sum_planned_blocks().load(); },
          py::arg("reset") = false,
          "How many float32 blocks of 8192 elements safe_sum has summed on their plan because their "
          "plain sum rounded, in this process (reset: return the count and start again from 0). For "
          "tests and diagnostics.");
    m.def("_info", &build_info, "Build and run-time facts (see memory_ops.info()).");
}
