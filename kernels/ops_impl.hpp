// Definitions of the kernels declared in ops.hpp. Included only by the per-target translation units
// (kernels/arch.cpp.in), each compiled with its own target's flags.
//
// Every helper here is in an unnamed namespace or templated on the architecture: an inline function
// shared by name between translation units compiled with different -m flags could be merged by the
// linker into the copy built for the widest target and then run on a CPU without it.
#pragma once

#include <cmath>
#include <cstring>
#include <new>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "cache.hpp"
#include "ops.hpp"
#include "parallel.hpp"

namespace memory_ops {
namespace {

// Loads and stores through memcpy: the element may sit at any byte address (NumPy allows unaligned
// arrays), and a plain dereference would be undefined there. Compiles to one move.
template <class T>
inline T load1(const char* p) noexcept
{
    T x;
    std::memcpy(&x, p, sizeof x);
    return x;
}

template <class T>
inline void store1(char* p, T x) noexcept
{
    std::memcpy(p, &x, sizeof x);
}

// Integer arithmetic wraps modulo 2^bits like NumPy's; done in unsigned types, where it is defined.
template <class T>
inline T mul1(T a, T b) noexcept
{
    if constexpr (std::is_integral<T>::value) {
        using U = std::make_unsigned_t<T>;
        return static_cast<T>(static_cast<U>(static_cast<U>(a) * static_cast<U>(b)));
    } else {
        return a * b;
    }
}

template <class T>
inline T add1(T a, T b) noexcept
{
    if constexpr (std::is_integral<T>::value) {
        using U = std::make_unsigned_t<T>;
        return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b)));
    } else {
        return a + b;
    }
}

// Knuth's TwoSum: s + x = s' + err exactly, for any magnitudes, without branches. The error goes to
// the compensation c. Works on scalars and on xsimd batches alike.
template <class V>
inline void two_sum(V& s, V x, V& c) noexcept
{
    const V t = s + x;
    const V bp = t - s;
    const V err = (s - (t - bp)) + (x - bp);
    s = t;
    c = c + err;
}

// ---- element-wise maps ------------------------------------------------------------------------

// Whether an element-wise op whose operands (inputs and output together) span this many bytes stores
// its output with non-temporal (streaming) stores: see stream_threshold() in cache.hpp.
inline bool stream_output(index_t footprint_bytes) noexcept
{
    return footprint_bytes >= stream_threshold().load(std::memory_order_relaxed);
}

// Non-temporal store of one batch to a batch-aligned address.
template <class A, class U>
inline void store_stream(U* p, const xsimd::batch<U, A>& x) noexcept
{
#if defined(__AVX512F__)
    if constexpr (std::is_base_of<xsimd::avx512f, A>::value) {
        if constexpr (std::is_same<U, double>::value) _mm512_stream_pd(p, x);
        else if constexpr (std::is_same<U, float>::value) _mm512_stream_ps(p, x);
        else _mm512_stream_si512(reinterpret_cast<__m512i*>(p), x);
        return;
    }
#endif
#if defined(__AVX__)
    if constexpr (std::is_base_of<xsimd::avx, A>::value) {
        if constexpr (std::is_same<U, double>::value) _mm256_stream_pd(p, x);
        else if constexpr (std::is_same<U, float>::value) _mm256_stream_ps(p, x);
        else _mm256_stream_si256(reinterpret_cast<__m256i*>(p), x);
        return;
    }
#endif
#if defined(__SSE2__)
    if constexpr (std::is_base_of<xsimd::sse2, A>::value) {
        if constexpr (std::is_same<U, double>::value) _mm_stream_pd(p, x);
        else if constexpr (std::is_same<U, float>::value) _mm_stream_ps(p, x);
        else _mm_stream_si128(reinterpret_cast<__m128i*>(p), x);
        return;
    }
#endif
    x.store_aligned(p);  // no streaming store on this target
}

// Streaming stores are weakly ordered: fence them before the thread's work counts as done.
inline void fence_streams() noexcept
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

// out[i] = vec(i) for whole batches of W elements, scal(i) for the rest, over i in [0, n); out is
// aligned to its element size. Reads by vec/scal may alias out element for element (in place).
// A scalar head first brings out to the batch alignment (NumPy's buffers are 16-byte aligned, and
// a misaligned 64-byte store splits two cache lines). With `stream`, batch stores are non-temporal.
template <class A, class U, class Vec, class Scal>
inline void map_contiguous(U* out, index_t n, bool stream, Vec vec, Scal scal) noexcept
{
    constexpr index_t W = xsimd::batch<U, A>::size;
    constexpr std::uintptr_t align = A::alignment();
    const auto misalign = reinterpret_cast<std::uintptr_t>(out) % align;
    const index_t head = n < 2 * W ? 0 : static_cast<index_t>((align - misalign) % align / sizeof(U));
    index_t i = 0;
    for (; i < head; ++i) out[i] = scal(i);
    if (stream && (reinterpret_cast<std::uintptr_t>(out + i) % align) == 0) {
        for (; i + W <= n; i += W) store_stream<A>(out + i, vec(i));
        fence_streams();
    } else {
        // (also a short run of a streamed output: too short to align, it takes ordinary stores)
        for (; i + 4 * W <= n; i += 4 * W) {
            vec(i).store_unaligned(out + i);
            vec(i + W).store_unaligned(out + i + W);
            vec(i + 2 * W).store_unaligned(out + i + 2 * W);
            vec(i + 3 * W).store_unaligned(out + i + 3 * W);
        }
        for (; i + W <= n; i += W) vec(i).store_unaligned(out + i);
    }
    for (; i < n; ++i) out[i] = scal(i);
}

// Integers are computed as their unsigned counterparts: xsimd's fallback for int32/int64 products
// (sse2, avx2) is a plain C++ multiply, undefined on signed overflow; unsigned arithmetic wraps as
// NumPy does, to the same bits.
template <class T>
using arith_t = typename std::conditional_t<std::is_integral<T>::value, std::make_unsigned<T>, std::common_type<T>>::type;

// ---- scale ------------------------------------------------------------------------------------

// One run of n elements, contiguous in both operands; in == out allowed (then never streamed).
template <class A, class T>
void scale_contiguous(T* out_t, const T* in_t, index_t n, T factor_t, bool stream) noexcept
{
    using U = arith_t<T>;
    using B = xsimd::batch<U, A>;
    U* out = reinterpret_cast<U*>(out_t);
    const U* in = reinterpret_cast<const U*>(in_t);
    const U factor = static_cast<U>(factor_t);
    const B f(factor);
    map_contiguous<A>(out, n, stream, [&](index_t i) { return B::load_unaligned(in + i) * f; },
                      [&](index_t i) { return mul1(in[i], factor); });
}

template <class A, class T, class C>
void scale_run(char* out, const char* in, index_t n, index_t out_step, index_t in_step, C factor,
               bool stream) noexcept
{
    constexpr index_t size = sizeof(T);
    const bool aligned = reinterpret_cast<std::uintptr_t>(out) % alignof(T) == 0 &&
                         reinterpret_cast<std::uintptr_t>(in) % alignof(T) == 0;
    if constexpr (std::is_same<T, C>::value) {
        if (out_step == size && in_step == size && aligned) {
            scale_contiguous<A>(reinterpret_cast<T*>(out), reinterpret_cast<const T*>(in), n, factor, stream);
            return;
        }
    }
    // Strided, unaligned, or float32 storage computed in float64 (rare: a NumPy float64 scalar
    // factor on a float32 array in place); the compiler vectorizes what it can.
    for (index_t i = 0; i < n; ++i)
        store1<T>(out + i * out_step, static_cast<T>(mul1(static_cast<C>(load1<T>(in + i * in_step)), factor)));
}

// ---- add --------------------------------------------------------------------------------------

// One run of n elements, contiguous in all three operands. out may equal a and/or b (then never
// streamed).
template <class A, class T>
void add_contiguous(T* out_t, const T* a_t, const T* b_t, index_t n, bool stream) noexcept
{
    using U = arith_t<T>;
    using B = xsimd::batch<U, A>;
    U* out = reinterpret_cast<U*>(out_t);
    const U* a = reinterpret_cast<const U*>(a_t);
    const U* b = reinterpret_cast<const U*>(b_t);
    map_contiguous<A>(out, n, stream, [&](index_t i) { return B::load_unaligned(a + i) + B::load_unaligned(b + i); },
                      [&](index_t i) { return add1(a[i], b[i]); });
}

// ---- sum --------------------------------------------------------------------------------------

// The state of one block's sum_lanes accumulators. Element j of a run goes to lane j % sum_lanes,
// whatever the SIMD width, so every target performs the same operations in the same order.
template <class T>
struct sum_state;

template <class T>
struct sum_partial;

struct float_partial {
    double hi = 0.0;
    double lo = 0.0;  // accumulated rounding errors (and the lanes' compensations)
};

template <>
struct sum_state<double> {
    double s[sum_lanes] = {};
    double c[sum_lanes] = {};
};

template <>
struct sum_state<std::uint64_t> {
    std::uint64_t s[sum_lanes] = {};
};

inline void add_partial(float_partial& acc, double s, double c) noexcept
{
    double err = 0.0;
    two_sum(acc.hi, s, err);
    acc.lo += err + c;
}

inline float_partial finish(const sum_state<double>& st) noexcept
{
    float_partial p;
    for (index_t j = 0; j < sum_lanes; ++j) add_partial(p, st.s[j], st.c[j]);
    return p;
}

inline std::uint64_t finish(const sum_state<std::uint64_t>& st) noexcept
{
    std::uint64_t total = 0;
    for (index_t j = 0; j < sum_lanes; ++j) total += st.s[j];
    return total;
}

inline void combine(float_partial& acc, const float_partial& p) noexcept { add_partial(acc, p.hi, p.lo); }
inline void combine(std::uint64_t& acc, std::uint64_t p) noexcept { acc += p; }

// The element count of a view, defined here (unnamed namespace) so that no out-of-line inline function
// is shared with (and possibly taken from) a translation unit built for another target.
template <int N>
inline index_t elements(const nd_view<N>& v) noexcept
{
    index_t n = 1;
    for (int d = 0; d < v.ndim; ++d) n *= v.shape[d];
    return n;
}

inline double result(const float_partial& p) noexcept
{
    // A non-finite running sum (inf, NaN) is the answer as plain summation gives it; the
    // compensation is meaningless (inf - inf) there.
    return __builtin_isfinite(p.hi) ? p.hi + p.lo : p.hi;
}
inline std::uint64_t result(std::uint64_t p) noexcept { return p; }

// One batch B loaded from B::size elements of type V, converted exactly (float -> double, int32 ->
// int64). xsimd's own converting load goes through a stack buffer element by element; the vector
// conversion compiles to one widening instruction (vcvtps2pd, vpmovsxdq) on every x86 target.
template <class B, class V>
inline B load_widened(const V* p) noexcept
{
    using T = typename B::value_type;
    if constexpr (std::is_same<T, V>::value) {
        return B::load_unaligned(p);
    } else {
        constexpr std::size_t W = B::size;
        typedef V narrow __attribute__((vector_size(W * sizeof(V))));
        typedef T wide __attribute__((vector_size(W * sizeof(T))));
        narrow v;
        std::memcpy(&v, p, sizeof v);
        const wide w = __builtin_convertvector(v, wide);
        T lanes[W];
        std::memcpy(lanes, &w, sizeof w);
        return B::load_unaligned(lanes);
    }
}

// Adds one run of n elements (byte step `step`) into st, element j into lane j % sum_lanes.
template <class A, class T>
void accumulate(sum_state<double>& st, const char* p, index_t n, index_t step) noexcept
{
    index_t i = 0;
    if (step == index_t{sizeof(T)} && reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0) {
        using B = xsimd::batch<double, A>;
        constexpr index_t W = B::size;
        constexpr index_t NB = sum_lanes / W;
        static_assert(sum_lanes % W == 0, "sum_lanes must be a multiple of the batch width");
        const T* x = reinterpret_cast<const T*>(p);
        B s[NB], c[NB];
        for (index_t k = 0; k < NB; ++k) {
            s[k] = B::load_unaligned(st.s + k * W);
            c[k] = B::load_unaligned(st.c + k * W);
        }
        for (; i + sum_lanes <= n; i += sum_lanes)
            for (index_t k = 0; k < NB; ++k) two_sum(s[k], load_widened<B>(x + i + k * W), c[k]);
        for (index_t k = 0; k < NB; ++k) {
            s[k].store_unaligned(st.s + k * W);
            c[k].store_unaligned(st.c + k * W);
        }
    }
    for (; i < n; ++i) {
        const index_t j = i % sum_lanes;
        two_sum(st.s[j], static_cast<double>(load1<T>(p + i * step)), st.c[j]);
    }
}

template <class A, class T>
void accumulate(sum_state<std::uint64_t>& st, const char* p, index_t n, index_t step) noexcept
{
    // Lanes hold int64 two's complement bits; SIMD integer adds wrap like the unsigned scalar ones.
    index_t i = 0;
    if (step == index_t{sizeof(T)} && reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0) {
        using B = xsimd::batch<std::int64_t, A>;
        constexpr index_t W = B::size;
        constexpr index_t NB = sum_lanes / W;
        static_assert(sum_lanes % W == 0, "sum_lanes must be a multiple of the batch width");
        const T* x = reinterpret_cast<const T*>(p);
        auto* lanes = reinterpret_cast<std::int64_t*>(st.s);  // signed/unsigned may alias
        B s[NB];
        for (index_t k = 0; k < NB; ++k) s[k] = B::load_unaligned(lanes + k * W);
        for (; i + sum_lanes <= n; i += sum_lanes)
            for (index_t k = 0; k < NB; ++k) s[k] = s[k] + load_widened<B>(x + i + k * W);
        for (index_t k = 0; k < NB; ++k) s[k].store_unaligned(lanes + k * W);
    }
    for (; i < n; ++i)
        st.s[i % sum_lanes] += static_cast<std::uint64_t>(static_cast<std::int64_t>(load1<T>(p + i * step)));
}

}  // namespace

// ---- the functors -----------------------------------------------------------------------------

template <class Arch, class T, class C>
void scale_kernel::operator()(Arch, type_tag<T>, const nd_view<2>& v, C factor) const noexcept
{
    const bool stream = v.data[0] != v.data[1] && stream_output(2 * elements(v) * index_t{sizeof(T)});
    parallel_for(elements(v), element_grain, 1, [&](index_t begin, index_t end) {
        for_each_run(v, begin, end, [&](char* const* p, index_t n, const index_t* step) {
            scale_run<Arch, T, C>(p[0], p[1], n, step[0], step[1], factor, stream);
        });
    });
}

template <class Arch, class T>
void add_kernel::operator()(Arch, type_tag<T>, const nd_view<3>& v) const noexcept
{
    const bool stream = v.data[0] != v.data[1] && v.data[0] != v.data[2] && stream_output(3 * elements(v) * index_t{sizeof(T)});
    parallel_for(elements(v), element_grain, 1, [&](index_t begin, index_t end) {
        for_each_run(v, begin, end, [&](char* const* p, index_t n, const index_t* step) {
            constexpr index_t size = sizeof(T);
            bool aligned = true;
            for (int k = 0; k < 3; ++k) aligned = aligned && reinterpret_cast<std::uintptr_t>(p[k]) % alignof(T) == 0;
            if (step[0] == size && step[1] == size && step[2] == size && aligned) {
                add_contiguous<Arch>(reinterpret_cast<T*>(p[0]), reinterpret_cast<const T*>(p[1]),
                                     reinterpret_cast<const T*>(p[2]), n, stream);
                return;
            }
            for (index_t i = 0; i < n; ++i)
                store1<T>(p[0] + i * step[0], add1(load1<T>(p[1] + i * step[1]), load1<T>(p[2] + i * step[2])));
        });
    });
}

template <class Arch, class T>
sum_result_t<T> sum_kernel::operator()(Arch, type_tag<T>, const nd_view<1>& v) const noexcept
{
    using R = sum_result_t<T>;
    using partial = std::conditional_t<std::is_floating_point<T>::value, float_partial, std::uint64_t>;
    const index_t n = elements(v);
    const index_t blocks = (n + sum_block - 1) / sum_block;
    auto block = [&](index_t b) {
        sum_state<R> st;
        for_each_run(v, b * sum_block, std::min(n, (b + 1) * sum_block),
                     [&](char* const* p, index_t count, const index_t* step) {
                         accumulate<Arch, T>(st, p[0], count, step[0]);
                     });
        return finish(st);
    };

    // Block partials are combined in index order whether they were computed by one thread or many,
    // so the result does not depend on the thread count. Partials take 1/512 of the input's size.
    partial total{};
    partial* partials = blocks > 1 ? new (std::nothrow) partial[static_cast<std::size_t>(blocks)] : nullptr;
    if (partials == nullptr) {
        for (index_t b = 0; b < blocks; ++b) combine(total, block(b));
        return result(total);
    }
    parallel_for(blocks, 1, sum_block, [&](index_t b0, index_t b1) {
        for (index_t b = b0; b < b1; ++b) partials[b] = block(b);
    });
    for (index_t b = 0; b < blocks; ++b) combine(total, partials[b]);
    delete[] partials;
    return result(total);
}

template <class Arch>
double stream_kernel::operator()(Arch, stream_op op, double* dst, const double* a, const double* b, double s,
                                 index_t n) const noexcept
{
    using B = xsimd::batch<double, Arch>;
    constexpr index_t W = B::size;
    switch (op) {
    case stream_op::copy:
    case stream_op::scale:
    case stream_op::add: {
        // The same loop, alignment and streaming-store policy as the kernels: the best a plain
        // loop does on this machine (in place, dst == a, never streams).
        const bool stream = dst != a && dst != b && stream_output((b ? 3 : 2) * n * index_t{sizeof(double)});
        const B f(s);
        parallel_for(n, element_grain, 1, [&](index_t begin, index_t end) {
            double* d = dst + begin;
            const double* x = a + begin;
            const double* y = b ? b + begin : nullptr;
            const index_t m = end - begin;
            if (op == stream_op::copy)
                map_contiguous<Arch>(d, m, stream, [&](index_t i) { return B::load_unaligned(x + i); },
                                     [&](index_t i) { return x[i]; });
            else if (op == stream_op::scale)
                map_contiguous<Arch>(d, m, stream, [&](index_t i) { return f * B::load_unaligned(x + i); },
                                     [&](index_t i) { return s * x[i]; });
            else
                map_contiguous<Arch>(d, m, stream, [&](index_t i) { return B::load_unaligned(x + i) + B::load_unaligned(y + i); },
                                     [&](index_t i) { return x[i] + y[i]; });
        });
        return 0.0;
    }
    case stream_op::touch: {
        constexpr index_t page = 4096 / sizeof(double);
        parallel_for(n, page, 1, [&](index_t begin, index_t end) {
            for (index_t i = begin; i < end; i += page) dst[i] = 0.0;
        });
        return 0.0;
    }
    case stream_op::sum:
        break;
    }
    // Plain SIMD sum with four independent accumulators per block; block sums added in order.
    constexpr index_t block = index_t{1} << 16;
    const index_t blocks = (n + block - 1) / block;
    auto block_sum = [&](index_t k) {
        const index_t begin = k * block, end = std::min(n, begin + block);
        B acc0(0.0), acc1(0.0), acc2(0.0), acc3(0.0);
        index_t i = begin;
        for (; i + 4 * W <= end; i += 4 * W) {
            acc0 += B::load_unaligned(a + i);
            acc1 += B::load_unaligned(a + i + W);
            acc2 += B::load_unaligned(a + i + 2 * W);
            acc3 += B::load_unaligned(a + i + 3 * W);
        }
        double lanes[W];
        ((acc0 + acc1) + (acc2 + acc3)).store_unaligned(lanes);
        double total = 0.0;
        for (index_t j = 0; j < W; ++j) total += lanes[j];
        for (; i < end; ++i) total += a[i];
        return total;
    };
    double* partial = new (std::nothrow) double[static_cast<std::size_t>(blocks > 0 ? blocks : 1)];
    if (partial == nullptr) return 0.0;
    parallel_for(blocks, 1, block, [&](index_t k0, index_t k1) {
        for (index_t k = k0; k < k1; ++k) partial[k] = block_sum(k);
    });
    double total = 0.0;
    for (index_t k = 0; k < blocks; ++k) total += partial[k];
    delete[] partial;
    return total;
}

}  // namespace memory_ops
