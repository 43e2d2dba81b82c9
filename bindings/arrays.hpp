// Where Python objects become pointers, shapes and strides: argument checking, NumPy's dtype
// promotion, conversion of inputs that cannot run natively, output validation and overlap.
// Everything here runs with the GIL held.
#pragma once

#include <array>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "layout.hpp"
#include "ops.hpp"

namespace memory_ops::bind {

namespace py = pybind11;

// The element types the kernels run natively.
enum class native { f32, f64, i32, i64 };

py::dtype dtype_of(native t);

// Whether dt is one of the native types, in native byte order; if so, stores which in t.
bool native_of(const py::dtype& dt, native& t);

// Whether two dtypes are the same type in the same byte order (cheaply for the native types).
bool same_dtype(const py::dtype& a, const py::dtype& b);

// The NumPy module, imported once.
py::module_& numpy();

// A read-only argument as an ndarray, never copied when it already is one. Lists, tuples and
// Python or NumPy scalars go through numpy.asarray; anything that does not become a real numeric
// array (strings, objects, complex, None, a masked array) raises TypeError naming `op` and `name`.
py::array input_array(const char* op, const char* name, const py::handle& obj);

// Raises TypeError for a numpy.ma.MaskedArray: the kernels read and write every element, so its
// mask would be ignored (masked values summed or scaled, or written over when `written`) where
// NumPy honours it. Free for a plain ndarray.
void reject_masked(const char* op, const char* name, const py::handle& obj, bool written = false);

// Raises TypeError unless `factor` is a Python int/float/bool or a NumPy real scalar.
void check_factor(const char* op, const py::handle& factor);

// NumPy's result dtype (NEP 50: Python scalars are weak) of the given arguments, in native byte
// order. Promotion errors become TypeError naming `op`.
py::dtype result_dtype(const char* op, const py::handle& a, const py::handle& b);

// The native type an element-wise op computes a result dtype in; its answer cast to `result` equals
// NumPy's (integers wrap the same way, float16 is computed in float32 by NumPy too). TypeError for
// dtypes with no exact native route (complex, longdouble, ...).
native compute_type(const char* op, const py::dtype& result);

// `obj` converted to the native type t (one copy), or itself when it already is.
py::array as_native(const py::array& a, native t);

// The value of a real scalar, cast as NumPy casts it to `result`, then to the C type of `compute`.
template <class C>
C factor_value(const py::handle& factor, const py::dtype& result, native compute);

// Validates a user-supplied out= (TypeError: not an ndarray or wrong dtype; ValueError: shape or
// read-only) against the expected dtype and shape.
void check_out(const char* op, const py::handle& out, const py::dtype& dtype, const py::array& like,
                    const std::string& dtype_reason);

// Raises ValueError naming `op` unless `a` is writable.
void check_writable(const char* op, const char* name, const py::array& a);

// Whether out and in share memory in a way that element-wise in-place evaluation would get wrong:
// true for partial overlap, false for no overlap or for the identical view (same data and strides).
bool overlaps_partially(const py::array& out, const py::array& in);

// Whether two elements of `a` may share memory (a writable as_strided view, say). False is certain;
// true may be conservative. Writing such an array element by element needs private inputs.
bool may_self_overlap(const py::array& a);

// A C-ordered, uninitialised array of dtype t with a's shape.
py::array empty_like_shape(const py::array& a, native t);

std::string shape_str(const py::array& a);
std::string dtype_str(const py::handle& dt);

// The kernels' view of N arrays of the same shape; operand 0 is written.
template <int N>
nd_view<N> make_view(const std::array<const py::array*, N>& arrays)
{
    nd_view<N> v;
    const py::array& first = *arrays[0];
    v.ndim = static_cast<int>(first.ndim());
    for (int d = 0; d < v.ndim; ++d) v.shape[d] = first.shape(d);
    for (int k = 0; k < N; ++k) {
        // Writability of operand 0 was checked by the caller; pybind11 only hands out const data.
        v.data[k] = static_cast<char*>(const_cast<void*>(arrays[k]->data()));
        for (int d = 0; d < v.ndim; ++d) v.strides[k][d] = arrays[k]->strides(d);
    }
    simplify(v);
    return v;
}

// Calls f(type_tag<T>{}) with the C++ type of native type t.
template <class F>
decltype(auto) visit(native t, F&& f)
{
    switch (t) {
    case native::f32: return f(type_tag<float>{});
    case native::f64: return f(type_tag<double>{});
    case native::i32: return f(type_tag<std::int32_t>{});
    case native::i64: break;
    }
    return f(type_tag<std::int64_t>{});
}

}  // namespace memory_ops::bind
