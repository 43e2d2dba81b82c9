// CPython vectorcall entry points for the four ops. pybind11's generic dispatcher costs about as
// much as a whole NumPy ufunc call on a small array (measured with callgrind: ~2100 instructions per
// call with a keyword argument), so the hot functions take (args, nargs, kwnames) directly: fixed
// signatures, parsed here, then the same bind:: functions. C++ exceptions become Python ones
// exactly as pybind11 would translate them.
#pragma once

#include <array>
#include <cstring>
#include <new>
#include <string>

#include <pybind11/pybind11.h>

namespace memory_ops::bind {

// A fixed signature: `names` in order; the first `positional` may be given positionally, the rest
// only by keyword; those from `required` on are optional and left null when absent.
template <std::size_t N>
struct signature {
    const char* function;
    std::array<const char*, N> names;
    std::size_t positional;
    std::size_t required;

    // Fills `slots` (borrowed references) or sets a Python TypeError and returns false.
    bool parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, std::array<PyObject*, N>& slots) const
    {
        slots.fill(nullptr);
        const auto given = static_cast<std::size_t>(nargs);
        if (given > positional) {
            PyErr_Format(PyExc_TypeError, "%s() takes %zu positional arguments but %zu were given", function,
                         positional, given);
            return false;
        }
        for (std::size_t i = 0; i < given; ++i) slots[i] = args[i];
        const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        for (Py_ssize_t k = 0; k < nkw; ++k) {
            const char* key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
            if (key == nullptr) return false;
            std::size_t i = 0;
            while (i < N && std::strcmp(names[i], key) != 0) ++i;
            if (i == N) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%s'", function, key);
                return false;
            }
            if (slots[i] != nullptr) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", function, key);
                return false;
            }
            slots[i] = args[nargs + k];
        }
        for (std::size_t i = 0; i < required; ++i) {
            if (slots[i] == nullptr) {
                PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", function, names[i]);
                return false;
            }
        }
        return true;
    }
};

inline pybind11::object arg_or_none(PyObject* p)
{
    return p ? pybind11::reinterpret_borrow<pybind11::object>(p) : pybind11::none();
}

// Runs f() and returns its new reference, or translates the C++ exception it threw.
template <class F>
PyObject* translate(F&& f) noexcept
{
    try {
        return f();
    } catch (pybind11::error_already_set& e) {
        e.restore();
    } catch (const pybind11::builtin_exception& e) {
        e.set_error();
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return nullptr;
}

}  // namespace memory_ops::bind
