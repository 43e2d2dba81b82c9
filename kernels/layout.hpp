// Strided N-d views and their traversal: the one place where a shape and per-operand byte strides
// become runs of elements. Pure C++; knows nothing of Python.
//
// An nd_view<N> is N operands (operand 0 is the written one, if any) sharing one shape, each with its
// own byte strides. Strides are in bytes and may be negative, zero or not a multiple of the element
// size; pointers may be unaligned. Nothing here dereferences a pointer.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace memory_ops {

using index_t = std::ptrdiff_t;  // element counts and byte strides: never a 32-bit index

inline constexpr int max_dims = 64;  // NumPy 2's NPY_MAXDIMS

template <int N>
struct nd_view {
    int ndim = 0;
    index_t shape[max_dims];
    char* data[N];
    index_t strides[N][max_dims];
};

// Rewrites v into the fewest axes that visit the same elements, in an order that keeps operand 0's
// memory walk forward and innermost-fastest: drops length-1 axes; flips an axis whose stride is
// negative in every operand; sorts axes by decreasing |stride| of operand 0 (stable, so C order
// stays); merges an axis into the next when every operand steps through both as one. The visiting
// order is free because every op here treats elements independently or (safe_sum) fixes its order
// from the simplified view alone. Afterwards ndim >= 1; a 0-d view becomes one element, an empty one
// has shape[0] == 0.
template <int N>
void simplify(nd_view<N>& v) noexcept
{
    int nd = 0;
    for (int d = 0; d < v.ndim; ++d) {
        if (v.shape[d] == 0) {
            v.ndim = 1;
            v.shape[0] = 0;
            for (int k = 0; k < N; ++k) v.strides[k][0] = 0;
            return;
        }
        if (v.shape[d] == 1) continue;
        v.shape[nd] = v.shape[d];
        for (int k = 0; k < N; ++k) v.strides[k][nd] = v.strides[k][d];
        ++nd;
    }
    if (nd == 0) {
        v.ndim = 1;
        v.shape[0] = 1;
        for (int k = 0; k < N; ++k) v.strides[k][0] = 0;
        return;
    }
    v.ndim = nd;

    for (int d = 0; d < nd; ++d) {
        bool all_negative = true;
        for (int k = 0; k < N; ++k) all_negative = all_negative && v.strides[k][d] < 0;
        if (!all_negative) continue;
        for (int k = 0; k < N; ++k) {
            v.data[k] += (v.shape[d] - 1) * v.strides[k][d];
            v.strides[k][d] = -v.strides[k][d];
        }
    }
    for (int d = 1; d < nd; ++d) {
        for (int e = d; e > 0 && std::abs(v.strides[0][e - 1]) < std::abs(v.strides[0][e]); --e) {
            std::swap(v.shape[e - 1], v.shape[e]);
            for (int k = 0; k < N; ++k) std::swap(v.strides[k][e - 1], v.strides[k][e]);
        }
    }

    int out = 0;  // index of the last kept axis
    for (int d = 1; d < nd; ++d) {
        bool mergeable = true;
        for (int k = 0; k < N; ++k)
            mergeable = mergeable && v.strides[k][out] == v.strides[k][d] * v.shape[d];
        if (mergeable) {
            v.shape[out] *= v.shape[d];
            for (int k = 0; k < N; ++k) v.strides[k][out] = v.strides[k][d];
        } else {
            ++out;
            v.shape[out] = v.shape[d];
            for (int k = 0; k < N; ++k) v.strides[k][out] = v.strides[k][d];
        }
    }
    v.ndim = out + 1;
}

// Visits the flat range [begin, end) of v's elements, in C order of v's axes, as runs along the
// innermost axis: f(char* const* ptr, index_t count, const index_t* stride), one pointer and one
// byte stride per operand. A run never crosses a row of the innermost axis.
template <int N, class F>
void for_each_run(const nd_view<N>& v, index_t begin, index_t end, F&& f)
{
    if (begin >= end) return;
    const int inner = v.ndim - 1;
    const index_t row = v.shape[inner];

    index_t idx[max_dims];
    char* base[N];
    index_t step[N];
    for (int k = 0; k < N; ++k) {
        base[k] = v.data[k];
        step[k] = v.strides[k][inner];
    }
    index_t outer = begin / row;
    index_t pos = begin % row;
    for (int d = inner - 1; d >= 0; --d) {
        idx[d] = outer % v.shape[d];
        outer /= v.shape[d];
        for (int k = 0; k < N; ++k) base[k] += idx[d] * v.strides[k][d];
    }

    index_t todo = end - begin;
    for (;;) {
        const index_t count = std::min(row - pos, todo);
        char* run[N];
        for (int k = 0; k < N; ++k) run[k] = base[k] + pos * step[k];
        f(static_cast<char* const*>(run), count, static_cast<const index_t*>(step));
        todo -= count;
        if (todo == 0) return;
        pos = 0;
        for (int d = inner - 1; d >= 0; --d) {  // odometer over the outer axes
            for (int k = 0; k < N; ++k) base[k] += v.strides[k][d];
            if (++idx[d] < v.shape[d]) break;
            for (int k = 0; k < N; ++k) base[k] -= v.strides[k][d] * v.shape[d];
            idx[d] = 0;
        }
    }
}

}  // namespace memory_ops
