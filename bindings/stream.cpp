// The benchmark's yardsticks (memory_ops._core._stream, _sum_arithmetic): validation and GIL release only.
#include "op_bindings.hpp"

#include <string>

#include "arrays.hpp"
#include "dispatch.hpp"

namespace memory_ops::bind {

namespace {

// obj as an aligned, C-contiguous array of float64 (or float32 too, if `float32_too`), its dtype in t;
// TypeError "<op>: <name> must be ..." otherwise.
py::array contiguous_floats(const py::object& obj, const char* op, const char* name, bool float32_too, native& t)
{
    const std::string who = std::string(op) + ": " + name;
    if (!py::isinstance<py::array>(obj)) throw py::type_error(who + " must be an ndarray");
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!native_of(a.dtype(), t) || !(t == native::f64 || (float32_too && t == native::f32)) ||
        !(a.flags() & py::array::c_style) || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw py::type_error(who + " must be an aligned, C-contiguous " + (float32_too ? "float32 or float64" : "float64") +
                             " array");
    return a;
}

double* contiguous_f64(const py::object& obj, const char* name, bool writable, py::ssize_t& n)
{
    native t;
    const py::array a = contiguous_floats(obj, "_stream", name, false, t);
    if (writable) check_writable("_stream", name, a);
    if (n >= 0 && a.size() != n) throw py::value_error("_stream: arrays differ in size");
    n = a.size();
    return static_cast<double*>(const_cast<void*>(a.data()));
}

}  // namespace

double stream(const std::string& op, const py::object& dst, const py::object& a, const py::object& b, double s)
{
    static const std::pair<const char*, stream_op> ops[] = {{"copy", stream_op::copy}, {"scale", stream_op::scale},
                                                           {"add", stream_op::add},   {"sum", stream_op::sum},
                                                           {"touch", stream_op::touch}};
    stream_op which{};
    bool found = false;
    for (const auto& [name, value] : ops)
        if (op == name) which = value, found = true;
    if (!found) throw py::value_error("_stream: unknown op '" + op + "' (copy, scale, add, sum, touch)");

    py::ssize_t n = -1;
    const bool needs_dst = which != stream_op::sum, needs_a = which != stream_op::touch, needs_b = which == stream_op::add;
    double* d = needs_dst ? contiguous_f64(dst, "dst", true, n) : nullptr;
    const double* x = needs_a ? contiguous_f64(a, "a", false, n) : nullptr;
    const double* y = needs_b ? contiguous_f64(b, "b", false, n) : nullptr;
    // Safe without the GIL: only raw buffers of arrays the caller's arguments keep alive.
    py::gil_scoped_release nogil;
    return run_kernel<stream_kernel>(which, d, x, y, s, static_cast<index_t>(n));
}

double sum_arithmetic(const py::object& obj)
{
    native t;
    const py::array a = contiguous_floats(obj, "_sum_arithmetic", "a", true, t);
    const auto n = static_cast<index_t>(a.size());
    const void* data = a.data();
    // Safe without the GIL: only the buffer of an array the caller's argument keeps alive.
    py::gil_scoped_release nogil;
    if (t == native::f32)
        return run_kernel<sum_arithmetic_kernel>(type_tag<float>{}, static_cast<const float*>(data), n);
    return run_kernel<sum_arithmetic_kernel>(type_tag<double>{}, static_cast<const double*>(data), n);
}

}  // namespace memory_ops::bind
