// Fresh output arrays: large ones mapped on huge-page boundaries (see alloc.cpp). GIL held.
#pragma once

#include <vector>

#include <pybind11/numpy.h>

namespace memory_ops::bind {

namespace py = pybind11;

// Finds NumPy's handler API; at module import (without it, new_array uses NumPy's handler only).
void init_allocator();

// A C-ordered, uninitialised array of `dtype` and `shape`: from memory_ops' huge-page handler when
// it spans 32 MiB or more and NumPy advises huge pages (Linux), else from NumPy's current handler.
py::array new_array(const py::dtype& dtype, const std::vector<py::ssize_t>& shape);

}  // namespace memory_ops::bind
