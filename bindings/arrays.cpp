#include "arrays.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <sstream>

#include "alloc.hpp"

namespace memory_ops::bind {

py::dtype dtype_of(native t)
{
    return visit(t, [](auto tag) { return py::dtype::of<typename decltype(tag)::type>(); });
}

bool native_of(const py::dtype& dt, native& t)
{
    // Read straight from the descriptor: PyArray_EquivTypes goes through NumPy 2's casting machinery
    // and costs more than a small kernel. Native byte order is '=' (or '|', or the explicit native
    // character); the builtin float/int kinds have no other flavours of these sizes.
    const char order = dt.byteorder();
    constexpr char native_char = PY_LITTLE_ENDIAN ? '<' : '>';
    if (order != '=' && order != '|' && order != native_char) return false;
    const char kind = dt.kind();
    const auto size = dt.itemsize();
    if (kind == 'f' && size == 8) t = native::f64;
    else if (kind == 'f' && size == 4) t = native::f32;
    else if (kind == 'i' && size == 8) t = native::i64;
    else if (kind == 'i' && size == 4) t = native::i32;
    else return false;
    return true;
}

bool same_dtype(const py::dtype& a, const py::dtype& b)
{
    native ta, tb;
    if (native_of(a, ta)) return native_of(b, tb) && ta == tb;
    return a.equal(b) && a.byteorder() == b.byteorder();
}

py::module_& numpy()
{
    // Leaked on purpose: a static py::object would be destroyed after the interpreter.
    static py::module_* np = new py::module_(py::module_::import("numpy"));
    return *np;
}

std::string dtype_str(const py::handle& dt) { return py::str(dt).cast<std::string>(); }

std::string shape_str(const py::array& a)
{
    std::ostringstream s;
    s << '(';
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s << a.shape(d) << (a.ndim() == 1 ? "," : d + 1 < a.ndim() ? ", " : "");
    s << ')';
    return s.str();
}

static std::string type_name(const py::handle& obj) { return py::str(py::type::of(obj).attr("__name__")).cast<std::string>(); }

static bool is_real_kind(char kind) { return kind == 'b' || kind == 'i' || kind == 'u' || kind == 'f'; }

void reject_masked(const char* op, const char* name, const py::handle& obj, bool written)
{
    if (Py_TYPE(obj.ptr()) == py::detail::npy_api::get().PyArray_Type_ || !py::isinstance<py::array>(obj)) return;
    // A MaskedArray exists only once numpy.ma is imported; this does not import it.
    PyObject* ma = PyImport_GetModule(py::str("numpy.ma").ptr());
    if (ma == nullptr) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return;
    }
    const auto module = py::reinterpret_steal<py::object>(ma);
    if (!py::isinstance(obj, module.attr("MaskedArray"))) return;
    const std::string n = name;
    throw py::type_error(std::string(op) + ": argument '" + n + "' is a numpy.ma.MaskedArray; memory_ops ignores masks, so " +
                         (written ? "its masked values would be written over. Pass " + n +
                                        ".data to write every value, or use NumPy, which honours the mask"
                                  : "its masked values would be used. Pass " + n + ".filled(value) or " + n +
                                        ".compressed(), or " + n + ".data to use every value"));
}

py::array input_array(const char* op, const char* name, const py::handle& obj)
{
    reject_masked(op, name, obj);
    if (py::isinstance<py::array>(obj)) {
        auto a = py::reinterpret_borrow<py::array>(obj);
        if (!is_real_kind(a.dtype().kind()))
            throw py::type_error(std::string(op) + ": argument '" + name + "' has dtype " +
                                 dtype_str(a.dtype()) + "; expected a real numeric array (bool, int, uint or float)");
        return a;
    }
    if (obj.is_none())
        throw py::type_error(std::string(op) + ": argument '" + name + "' is None; expected an array of real numbers");
    py::array a;
    try {
        a = numpy().attr("asarray")(obj);
    } catch (py::error_already_set& e) {
        throw py::type_error(std::string(op) + ": argument '" + name + "' of type " + type_name(obj) +
                             " is not array-like (" + e.what() + ")");
    }
    if (!is_real_kind(a.dtype().kind()))
        throw py::type_error(std::string(op) + ": argument '" + name + "' of type " + type_name(obj) +
                             " converts to dtype " + dtype_str(a.dtype()) +
                             "; expected an array of real numbers (bool, int, uint or float)");
    return a;
}

void check_factor(const char* op, const py::handle& factor)
{
    // bool and int are Python ints; np.float64 is a Python float subclass; other NumPy scalars are
    // np.generic with a dtype.
    if (PyFloat_Check(factor.ptr()) || PyLong_Check(factor.ptr())) return;
    if (py::isinstance(factor, numpy().attr("generic")) &&
        is_real_kind(py::dtype::from_args(factor.attr("dtype")).kind()))
        return;
    throw py::type_error(std::string(op) + ": factor must be a real number (Python int or float, or a NumPy "
                         "integer/floating scalar); got " + type_name(factor));
}

py::dtype result_dtype(const char* op, const py::handle& a, const py::handle& b)
{
    py::object dt;
    try {
        dt = numpy().attr("result_type")(a, b);
    } catch (py::error_already_set& e) {
        if (!e.matches(PyExc_TypeError)) throw;
        throw py::type_error(std::string(op) + ": NumPy cannot combine these arguments (" + e.what() + ")");
    }
    return py::dtype::from_args(dt.attr("newbyteorder")("="));
}

native compute_type(const char* op, const py::dtype& result)
{
    const char kind = result.kind();
    const auto size = result.itemsize();
    if (kind == 'f' && size <= 4) return native::f32;  // float16: NumPy computes it in float32 too
    if (kind == 'f' && size == 8) return native::f64;
    if ((kind == 'i' && size <= 4) || (kind == 'u' && size <= 2) || kind == 'b') return native::i32;
    if (kind == 'i' || kind == 'u') return native::i64;  // wraps modulo 2^64 like NumPy's uint64
    throw py::type_error(std::string(op) + ": result dtype " + dtype_str(result) +
                         " is not supported (float16/32/64 and integer/bool results are)");
}

py::array as_native(const py::array& a, native t)
{
    native have;
    if (native_of(a.dtype(), have) && have == t) return a;
    // Same-size integers differ only in how the bits read: reinterpret, don't copy.
    const py::dtype want = dtype_of(t);
    if (a.dtype().kind() == 'u' && a.dtype().itemsize() == want.itemsize() && a.dtype().attr("isnative").cast<bool>() &&
        want.kind() == 'i')
        return a.attr("view")(want);
    return a.attr("astype")(want);
}

template <class C>
C factor_value(const py::handle& factor, const py::dtype& result, native compute)
{
    // NumPy's own conversion of the scalar to the result dtype (OverflowError for an int that does
    // not fit, float32 rounding, ...), then the exact widening to the compute type.
    py::array value = numpy().attr("asarray")(factor, result);
    value = as_native(value, compute);
    C c;
    std::memcpy(&c, value.data(), sizeof c);
    return c;
}

template float factor_value<float>(const py::handle&, const py::dtype&, native);
template double factor_value<double>(const py::handle&, const py::dtype&, native);
template std::int32_t factor_value<std::int32_t>(const py::handle&, const py::dtype&, native);
template std::int64_t factor_value<std::int64_t>(const py::handle&, const py::dtype&, native);

void check_writable(const char* op, const char* name, const py::array& a)
{
    if (!a.writeable())
        throw py::value_error(std::string(op) + ": '" + name + "' is read-only (writeable=False); nothing was written");
}

void check_out(const char* op, const py::handle& out, const py::dtype& dtype, const py::array& like,
                    const std::string& dtype_reason)
{
    if (!py::isinstance<py::array>(out))
        throw py::type_error(std::string(op) + ": out must be a NumPy ndarray; got " + type_name(out));
    reject_masked(op, "out", out, true);
    auto o = py::reinterpret_borrow<py::array>(out);
    if (!same_dtype(o.dtype(), dtype))
        throw py::type_error(std::string(op) + ": out has dtype " + dtype_str(o.dtype()) + ", expected " +
                             dtype_str(dtype) + " (" + dtype_reason + ")");
    bool same_shape = o.ndim() == like.ndim();
    for (py::ssize_t d = 0; same_shape && d < o.ndim(); ++d) same_shape = o.shape(d) == like.shape(d);
    if (!same_shape)
        throw py::value_error(std::string(op) + ": out has shape " + shape_str(o) + ", expected " + shape_str(like));
    check_writable(op, "out", o);
}

bool overlaps_partially(const py::array& out, const py::array& in)
{
    if (out.size() == 0 || in.size() == 0) return false;
    if (out.data() == in.data()) {
        bool same = out.ndim() == in.ndim();
        for (py::ssize_t d = 0; same && d < out.ndim(); ++d)
            same = out.shape(d) == in.shape(d) && (out.shape(d) == 1 || out.strides(d) == in.strides(d));
        if (same) return false;
    }
    auto extent = [](const py::array& a, const char*& lo, const char*& hi) {
        lo = hi = static_cast<const char*>(a.data());
        for (py::ssize_t d = 0; d < a.ndim(); ++d) {
            const py::ssize_t span = (a.shape(d) - 1) * a.strides(d);
            (span < 0 ? lo : hi) += span;
        }
        hi += a.itemsize();
    };
    const char *lo1, *hi1, *lo2, *hi2;
    extent(out, lo1, hi1);
    extent(in, lo2, hi2);
    if (hi1 <= lo2 || hi2 <= lo1) return false;
    // Bounds overlap: ask NumPy's exact solver, within a budget; past it, assume overlap.
    return numpy().attr("may_share_memory")(out, in, py::arg("max_work") = 1 << 16).cast<bool>();
}

bool may_self_overlap(const py::array& a)
{
    // Sufficient test for no overlap: with axes sorted by |stride|, each stride steps past the whole
    // extent spanned by the smaller ones.
    if (a.flags() & (py::array::c_style | py::array::f_style)) return false;
    std::vector<std::pair<py::ssize_t, py::ssize_t>> axes;  // (|stride|, shape)
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (a.shape(d) == 0) return false;
        if (a.shape(d) > 1) axes.emplace_back(a.strides(d) < 0 ? -a.strides(d) : a.strides(d), a.shape(d));
    }
    std::sort(axes.begin(), axes.end());
    py::ssize_t extent = a.itemsize();
    for (const auto& [stride, n] : axes) {
        if (stride < extent) return true;
        extent += stride * (n - 1);
    }
    return false;
}

py::array empty_like_shape(const py::array& a, native t)
{
    std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
    return new_array(dtype_of(t), shape);
}

}  // namespace memory_ops::bind
