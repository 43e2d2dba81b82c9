// The four operations as Python sees them (argument objects in, Python objects out).
#pragma once

#include <string>

#include <pybind11/pybind11.h>

namespace memory_ops::bind {

pybind11::object scale_copy(const pybind11::object& input, const pybind11::object& factor,
                            const pybind11::object& out);
void scale_inplace(const pybind11::object& arr, const pybind11::object& factor);
pybind11::object add_arrays(const pybind11::object& a, const pybind11::object& b, const pybind11::object& out);
pybind11::object safe_sum(const pybind11::object& arr);

// STREAM-style bandwidth reference for the benchmark (see stream_kernel in kernels/ops.hpp).
double stream(const std::string& op, const pybind11::object& dst, const pybind11::object& a,
              const pybind11::object& b, double s);

// The floating sum's arithmetic alone, the benchmark's yardstick for safe_sum (see
// sum_arithmetic_kernel in kernels/ops.hpp).
double sum_arithmetic(const pybind11::object& a);

}  // namespace memory_ops::bind
