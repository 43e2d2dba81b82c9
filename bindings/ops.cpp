// One binding per op: validate and convert with the GIL held, then release it around the kernel.
// No arithmetic on elements happens here.
#include "op_bindings.hpp"

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "dispatch.hpp"
#include "parallel.hpp"

namespace memory_ops::bind {

namespace {

bool is_float(native t) { return t == native::f32 || t == native::f64; }

// The GIL, released around a kernel over more than 500 elements, as NumPy releases it around a loop
// (NPY_BEGIN_THREADS_THRESHOLDED): below that, dropping and retaking it costs more than the loop.
class release_gil_above_threshold {
    std::optional<py::gil_scoped_release> released_;

public:
    explicit release_gil_above_threshold(py::ssize_t elements)
    {
        if (elements > 500) released_.emplace();
    }
};

// Whether `factor` is a Python float that NumPy would turn into a float32/float64 t silently (weak
// scalar, NEP 50), so the shortcut static_cast gives NumPy's value without skipping its overflow
// warning: a finite double that overflows float32 takes NumPy's own conversion instead.
bool plain_float_factor(native t, const py::handle& factor)
{
    if (!PyFloat_CheckExact(factor.ptr())) return false;
    const double d = PyFloat_AS_DOUBLE(factor.ptr());
    return t == native::f64 || !(std::isfinite(d) && std::isinf(static_cast<float>(d)));
}

// A Python int/float/bool keeps its NEP 50 "weak" status in promotion; anything else is promoted as
// the array it became.
const py::handle& promotion_operand(const py::handle& original, const py::array& converted)
{
    const bool python_scalar = PyFloat_CheckExact(original.ptr()) || PyLong_Check(original.ptr());
    return python_scalar ? original : static_cast<const py::handle&>(converted);
}

// The NumPy ufunc an element-wise op's work is: its floating-point exceptions are reported as
// NumPy's ufunc reports them.
enum class ufunc { multiply, add };

// Reports the IEEE exceptions an element-wise kernel raised (its result: fp_exception bits) as
// NumPy reports them for the same work by `u` (a * f, a + b): np.errstate and np.seterr decide what
// happens (ignore, warn, raise FloatingPointError, call, print, log), and the message is NumPy's own
// ("overflow encountered in multiply"). To that end it replays them: one call of that NumPy ufunc on
// float64 operands chosen to raise exactly those exceptions, under the calling thread's control the
// kernel ran under. (A multiply or an add never divides by zero. An add underflows only when
// flush-to-zero flushes a subnormal sum: its replay adds two normal numbers whose exact sum is
// 2^-1074, flushed, and flagged, under FTZ whether or not DAZ is set too.)
[[gnu::cold, gnu::noinline]] void report_fp_exceptions(ufunc u, unsigned raised)
{
    const bool add = u == ufunc::add;
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<double> x, y;
    if (raised & fp_overflow) {
        x.push_back(add ? 1.5e308 : 1e308);
        y.push_back(add ? 1.5e308 : 10.0);
    }
    if (raised & fp_underflow) {
        x.push_back(add ? 0x1.0000000000001p-1022 : 1e-300);
        y.push_back(add ? -0x1p-1022 : 1e-300);
    }
    if (raised & fp_invalid) {
        x.push_back(inf);
        y.push_back(add ? -inf : 0.0);
    }
    if (!x.empty())
        numpy().attr(add ? "add" : "multiply")(py::array_t<double>(static_cast<py::ssize_t>(x.size()), x.data()),
                                                py::array_t<double>(static_cast<py::ssize_t>(y.size()), y.data()));
}

// Reports a non-finite floating sum `total` as NumPy reports a.sum() (np.add.reduce), judged by the
// result and by which non-finite values the input held (`held`: nonfinite bits), not by the order of
// the additions: an infinite or NaN sum of finite values overflowed ("overflow encountered in
// reduce"); infinities of both signs, a signalling NaN, or a NaN sum of values none of them NaN
// make it invalid ("invalid value encountered in reduce"; a NaN sum of finite values is both:
// overflowed partial sums of both signs met). Quiet NaNs and infinities of one sign are summed
// quietly, as NumPy sums them. Replayed like report_fp_exceptions: np.add.reduce over float64
// values that raise exactly that exception, one call per exception, overflow first (NumPy's order).
[[gnu::cold, gnu::noinline]] void report_sum_exceptions(double total, unsigned held)
{
    const double inf = std::numeric_limits<double>::infinity();
    const bool overflow = held == 0;
    const bool invalid = (std::isnan(total) && (held & holds_nan) == 0) || (held & holds_signalling_nan) ||
                         ((held & holds_plus_inf) && (held & holds_minus_inf));
    const py::object reduce = numpy().attr("add").attr("reduce");
    if (overflow) reduce(py::array_t<double>(2, std::array<double, 2>{1.5e308, 1.5e308}.data()));
    if (invalid) reduce(py::array_t<double>(2, std::array<double, 2>{inf, -inf}.data()));
}

// deliver() for a result the kernel computed in another dtype (float16 in float32): the cast's
// floating-point exceptions (overflow to inf, an inexact subnormal) are added to `raised` instead of
// being reported as NumPy's "... encountered in cast". NumPy's float16 loops compute in float32
// and convert inside the ufunc, so it reports them as the ufunc's own ("in multiply"). During the
// cast NumPy logs its errors to a StringIO (np.errstate(all="log")), whatever the caller's errstate.
template <class Deliver>
py::object deliver_cast(Deliver&& deliver, unsigned& raised)
{
    static py::module_* io = new py::module_(py::module_::import("io"));  // leaked, as numpy()
    const py::object log = io->attr("StringIO")();
    py::object state = numpy().attr("errstate")(py::arg("all") = "log", py::arg("call") = log);
    state.attr("__enter__")();
    py::object delivered;
    try {
        delivered = deliver();
    } catch (...) {
        state.attr("__exit__")(py::none(), py::none(), py::none());
        throw;
    }
    state.attr("__exit__")(py::none(), py::none(), py::none());
    const std::string text = log.attr("getvalue")().cast<std::string>();  // "Warning: overflow encountered in cast\n"...
    const auto saw = [&text](const char* what) { return text.find(what) != std::string::npos; };
    raised |= (saw("overflow encountered") ? fp_overflow : 0u) | (saw("underflow encountered") ? fp_underflow : 0u) |
              (saw("invalid value encountered") ? fp_invalid : 0u) | (saw("divide by zero encountered") ? fp_divide_by_zero : 0u);
    return delivered;
}

// The shared tail of the element-wise ops: pick where the kernel writes, make inputs that partially
// overlap it private (NumPy does the same), run `kernel(view)` without the GIL, and deliver the
// result in NumPy's dtype `result`, into `out` when given (and return that very object).
template <int N, class Kernel>
py::object elementwise(const char* op, ufunc u, std::array<py::array, N - 1> inputs,
                       const py::dtype& result, native compute, const py::object& out, Kernel&& kernel)
{
    native r;
    const bool has_out = !out.is_none();
    if (has_out) check_out(op, out, result, inputs[0], "NumPy's result dtype for these arguments");
    // The kernel writes `out` directly unless the result needs a cast, or `out` has elements that
    // share memory (threads would race on them): then a fresh array, copied into `out` at the end.
    const bool cast = !(native_of(result, r) && r == compute);
    const bool direct = !cast && !(has_out && may_self_overlap(py::reinterpret_borrow<py::array>(out)));
    py::array target = (has_out && direct) ? py::reinterpret_borrow<py::array>(out) : empty_like_shape(inputs[0], compute);

    if (has_out && direct) {  // a fresh target overlaps nothing
        for (auto& in : inputs)
            if (overlaps_partially(target, in)) in = in.attr("copy")();
    }

    std::array<const py::array*, N> operands{&target};
    for (int k = 1; k < N; ++k) operands[k] = &inputs[k - 1];
    const nd_view<N> view = make_view<N>(operands);
    unsigned raised;
    {
        // Safe without the GIL: the kernel touches only the raw buffers, which `target` and `inputs`
        // keep alive until this scope ends; no Python object is used inside.
        release_gil_above_threshold nogil(target.size());
        raised = kernel(view);
    }

    auto deliver = [&]() -> py::object {
        if (direct) return has_out ? out : py::object(target);
        if (has_out) {
            numpy().attr("copyto")(out, target, py::arg("casting") = "unsafe");
            return out;
        }
        return target.attr("astype")(result);
    };
    // (The result is delivered first: NumPy, too, checks for floating-point errors after its loop.)
    py::object delivered = cast && result.kind() == 'f' ? deliver_cast(deliver, raised) : deliver();
    if (raised != 0) report_fp_exceptions(u, raised);
    return delivered;
}

}  // namespace

py::object scale_copy(const py::object& input, const py::object& factor, const py::object& out)
{
    constexpr const char* op = "scale_copy";
    check_factor(op, factor);
    py::array in = input_array(op, "input", input);

    native t;
    const bool fast = native_of(in.dtype(), t) && is_float(t) && plain_float_factor(t, factor);
    const py::dtype result = fast ? in.dtype() : result_dtype(op, promotion_operand(input, in), factor);
    const native compute = fast ? t : compute_type(op, result);
    in = as_native(in, compute);

    return visit(compute, [&](auto tag) {
        using C = typename decltype(tag)::type;
        const C f = fast ? static_cast<C>(PyFloat_AS_DOUBLE(factor.ptr())) : factor_value<C>(factor, result, compute);
        return elementwise<2>(op, ufunc::multiply, {in}, result, compute, out, [&](const nd_view<2>& v) {
            return run_kernel<scale_kernel>(tag, v, f);
        });
    });
}

void scale_inplace(const py::object& arr, const py::object& factor)
{
    constexpr const char* op = "scale_inplace";
    if (!py::isinstance<py::array>(arr))
        throw py::type_error(std::string(op) + ": arr must be a NumPy ndarray to modify in place; got " +
                             py::str(py::type::of(arr).attr("__name__")).cast<std::string>() +
                             " (a converted copy would be scaled and thrown away)");
    reject_masked(op, "arr", arr, true);
    const auto a = py::reinterpret_borrow<py::array>(arr);
    native t;
    if (!native_of(a.dtype(), t) || !is_float(t))
        throw py::type_error(std::string(op) + ": arr has dtype " + dtype_str(a.dtype()) +
                             "; expected float32 or float64 in native byte order (in-place work never converts)");
    check_factor(op, factor);
    check_writable(op, "arr", a);

    // NumPy's `arr *= factor`: compute in the promoted dtype, store back into arr's dtype. The only
    // promoted dtype that differs and can be stored back is float64 for a float32 array.
    native compute = t;
    py::dtype result = a.dtype();
    const bool fast = plain_float_factor(t, factor);
    if (!fast) {
        result = result_dtype(op, a, factor);
        native r;
        const bool native_result = native_of(result, r);
        if (t == native::f32 && native_result && r == native::f64)
            compute = native::f64;
        else if (!native_result || r != t)
            throw py::type_error(std::string(op) + ": a factor of type " +
                                 py::str(py::type::of(factor).attr("__name__")).cast<std::string>() +
                                 " promotes the result to " + dtype_str(result) + ", which cannot be stored in a " +
                                 dtype_str(a.dtype()) + " array in place");
    }

    // An arr whose elements share memory (a writable as_strided view) is read from a private copy,
    // so every memory element is scaled once, as NumPy does; otherwise there is no copy at all.
    const py::array source = may_self_overlap(a) ? py::array(a.attr("copy")()) : a;
    const nd_view<2> view = make_view<2>({&a, &source});
    auto run = [&](auto tag, auto f) {
        // Safe without the GIL: the kernel touches only a's and source's buffers, kept alive here.
        release_gil_above_threshold nogil(a.size());
        return run_kernel<scale_kernel>(tag, view, f);
    };
    const double d = fast ? PyFloat_AS_DOUBLE(factor.ptr()) : 0.0;
    unsigned raised;
    if (t == native::f64)
        raised = run(type_tag<double>{}, fast ? d : factor_value<double>(factor, result, compute));
    else if (compute == native::f64)  // float32 storage, float64 arithmetic
        raised = run(type_tag<float>{}, factor_value<double>(factor, result, compute));
    else
        raised = run(type_tag<float>{}, fast ? static_cast<float>(d) : factor_value<float>(factor, result, compute));
    if (raised != 0) report_fp_exceptions(ufunc::multiply, raised);
}

py::object add_arrays(const py::object& a, const py::object& b, const py::object& out)
{
    constexpr const char* op = "add_arrays";
    py::array x = input_array(op, "a", a);
    py::array y = input_array(op, "b", b);
    bool same_shape = x.ndim() == y.ndim();
    for (py::ssize_t d = 0; same_shape && d < x.ndim(); ++d) same_shape = x.shape(d) == y.shape(d);
    if (!same_shape)
        throw py::value_error(std::string(op) + ": shapes " + shape_str(x) + " and " + shape_str(y) +
                              " differ; add_arrays adds arrays of equal shape and does not broadcast");

    native tx, ty;
    const bool fast = native_of(x.dtype(), tx) && native_of(y.dtype(), ty) && tx == ty;
    const py::dtype result = fast ? x.dtype() : result_dtype(op, promotion_operand(a, x), promotion_operand(b, y));
    const native compute = fast ? tx : compute_type(op, result);
    x = as_native(x, compute);
    y = as_native(y, compute);

    return visit(compute, [&](auto tag) {
        return elementwise<3>(op, ufunc::add, {x, y}, result, compute, out, [&](const nd_view<3>& v) {
            return run_kernel<add_kernel>(tag, v);
        });
    });
}

py::object safe_sum(const py::object& arr)
{
    constexpr const char* op = "safe_sum";
    py::array a = input_array(op, "arr", arr);
    const py::dtype dt = a.dtype();
    const char kind = dt.kind();
    native t;
    if (!native_of(dt, t)) {
        if (kind == 'f' && dt.itemsize() > 8)
            throw py::type_error(std::string(op) + ": dtype " + dtype_str(dt) +
                                 " is not supported (it would lose precision in float64)");
        // The accumulator decides: float64 for floats (float16 widens exactly to float32), int64
        // (wrapping like NumPy's) for bool and integers.
        t = kind == 'f' ? (dt.itemsize() <= 4 ? native::f32 : native::f64)
                        : (dt.itemsize() <= 2 || (kind == 'i' && dt.itemsize() == 4) || kind == 'b') ? native::i32
                                                                                                 : native::i64;
        a = as_native(a, t);
    }

    const nd_view<1> view = make_view<1>({&a});
    return visit(t, [&](auto tag) -> py::object {
        using T = typename decltype(tag)::type;
        sum_result_t<T> total;
        {
            // Safe without the GIL: the kernel reads only a's buffer, kept alive by `a`.
            release_gil_above_threshold nogil(a.size());
            total = run_kernel<sum_kernel>(tag, view);
        }
        if constexpr (std::is_floating_point<T>::value) {
            if (!std::isfinite(total)) {
                unsigned held;
                {
                    release_gil_above_threshold nogil(a.size());
                    held = run_kernel<nonfinite_kernel>(tag, view);
                }
                report_sum_exceptions(total, held);
            }
            return py::float_(total);
        }
        else if (kind == 'u')  // NumPy sums unsigned integers in uint64
            return py::reinterpret_steal<py::object>(PyLong_FromUnsignedLongLong(total));
        else
            return py::reinterpret_steal<py::object>(PyLong_FromLongLong(static_cast<long long>(total)));
    });
}

}  // namespace memory_ops::bind
