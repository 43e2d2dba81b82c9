// Definitions of the kernels declared in ops.hpp. Included only by the per-target translation units
// (kernels/arch.cpp.in), each compiled with its own target's flags.
//
// Every helper here is in an unnamed namespace or templated on the architecture: an inline function
// shared by name between translation units compiled with different -m flags could be merged by the
// linker into the copy built for the widest target and then run on a CPU without it.
#pragma once

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <new>
#include <utility>

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

// Additions and subtractions as written; fma_adder (below) gives the same values on other pipes.
struct plain_adder {
    template <class V>
    V operator()(V a, V b) const noexcept { return a + b; }
    template <class V>
    V minus(V a, V b) const noexcept { return a - b; }
};

// The operands of an addition ordered by magnitude: {big, small} = {a, b} with |big| >= |small|.
inline void magnitude_order(double a, double b, double& big, double& small) noexcept
{
    const bool a_big = std::fabs(a) >= std::fabs(b);
    big = a_big ? a : b;
    small = a_big ? b : a;
}
#if defined(__AVX512DQ__)
inline void magnitude_order(__m512d a, __m512d b, __m512d& big, __m512d& small) noexcept
{
    big = _mm512_range_pd(a, b, 0x7);    // the larger |.|, with its own sign (a when equal)
    small = _mm512_range_pd(a, b, 0x6);  // the smaller, with its own sign (b when equal)
}
#endif

// magnitude_order() on a batch of registers it takes.
template <class B, class R = typename B::register_type>
inline void magnitude_order(const B& a, const B& b, B& big, B& small) noexcept
{
    R hi, lo;
    magnitude_order(static_cast<R>(a), static_cast<R>(b), hi, lo);
    big = B(hi);
    small = B(lo);
}

// Whether magnitude_order() takes V: doubles, and registers it has an instruction for (vrangepd). (The
// register type is not a template argument here, as in has_fmadd below.)
template <class V>
constexpr auto has_magnitude_order(int)
    -> decltype(magnitude_order(*static_cast<typename V::register_type*>(nullptr),
                                *static_cast<typename V::register_type*>(nullptr),
                                *static_cast<typename V::register_type*>(nullptr),
                                *static_cast<typename V::register_type*>(nullptr)),
                true)
{
    return true;
}
template <class V>
constexpr bool has_magnitude_order(long)
{
    return std::is_same<V, double>::value;
}

// s + x = s' + err exactly, for any magnitudes, without branches; the error goes to the compensation
// c. Works on scalars and on batches alike; `plus` may move some operations to other pipes.
//
// Where magnitude_order() takes V: Dekker's Fast2Sum on the operands ordered by magnitude, t = s + x;
// err = small - (t - big), both subtractions exact. Otherwise Knuth's TwoSum: 7 operations to Fast2Sum's
// 4 and the ordering's 2 (vrangepd; ordering with AVX2 compares and blends made the float64 sum 12-19%
// slower on Zen 4). Both give the exact error, so the same values bit for bit, except where TwoSum's
// t - s overflows: x near +-DBL_MAX and s small of the other sign. Its compensation is then not
// finite while s is, and sum_kernel takes the block again with scalars (float64_scalar_pass).
// Fast2Sum never overflows where s + x does not. With vrangepd the float64 sum ran 1.10-1.13x as fast
// in L2 and L3 (Zen 4, one core or two; at 5M elements, from L3 and memory, 1.00-1.02x). This split
// between the pipes was the fastest of the 16 in a bare loop.
template <class V, class Add = plain_adder>
inline void two_sum(V& s, V x, V& c, const Add& plus = {}) noexcept
{
    if constexpr (has_magnitude_order<V>(0)) {
        V big, small;
        magnitude_order(s, x, big, small);
        const V t = plus(s, x);
        c = plus(c, small - plus.minus(t, big));
        s = t;
    } else {
        const V t = s + x;
        const V bp = plus.minus(t, s);
        const V err = plus(s - (t - bp), plus.minus(x, bp));
        s = t;
        c = plus(c, err);
    }
}

// Error-free extraction (Rump, Ogita and Oishi): s + x = s' + err exactly like TwoSum, with 3
// additions instead of 6, but only while s and s + x lie in one binade [2^q, 2^(q+1)]: then t - s is
// exact (Sterbenz) and x - (t - s) is the exact rounding error of s + x. The anchored sum (see
// sum_state) guarantees that. Scalars and batches alike.
template <class V>
inline void extract(V& s, V x, V& c) noexcept
{
    const V t = s + x;
    c = c + (x - (t - s));
    s = t;
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
//
// A float32 block is first summed plainly (sum_path::plain): each element widened exactly and added
// to its lane, from 0. If none of these additions rounded (float_env reads the floating-point flags)
// and the lane sums are finite, they are the lanes' exact sums and the block's value. Most data takes
// only this: float32 values widened to float64 have 29 bits to spare, so a block whose nonzero
// magnitudes span less than 2^20 sums exactly (a lane adds at most 512 of them, in rows of 16 or more
// elements: lanes restart with each run, see for_each_run). Otherwise the block
// is summed against an anchor, chosen from a first pass over it (float64 blocks take TwoSum; see
// float32_block):
//
// Pass 1 (magnitudes) sums |x| per lane, in the input type, in a fixed order: the same on every
// target.
//
// The plan (make_plan). If every lane's sum m is finite and at most 2^1000, all lanes start at the
// anchor a = 1.5 * 2^q, q the least with m (1 + 2^-10) < 2^(q-1) for every lane's m (and q >= -1000).
// The factor covers the rounding of m (at most (n - 1) eps relative, n <= sum_block, eps = 2^-24 for
// float32). Then no partial sum of a lane's elements, nor its drift by the rounding errors taken out
// below (at most sum_block half-ulps of a), leaves [-2^(q-1), 2^(q-1)): s = a + partial stays within
// the binade [2^q, 2^(q+1)] for the whole block, and pass 2 adds each element with extract():
// t = s + x; c += x - (t - s); s = t. t - s is exact (Sterbenz) and x - (t - s) is the exact rounding
// error of s + x: 4 additions per element where two_sum() takes 7. A lane's value is (s - a) + c,
// s - a exact. Otherwise (NaN, infinities or sums near overflow in the block) the block takes the
// TwoSum path with anchors 0, exactly as before anchors existed, so non-finite results are those of
// TwoSum.
//
// Pass 2 runs in the same loop as pass 1, on the plan of the thread's last planned block; if the
// plan that pass 1 finds differs (compatible()), pass 2 alone runs again on it, from cache. The
// result is thus that of the block's own plan whatever the guess, the same for any split of the
// blocks between threads. A thread's first planned block takes the passes one after the other.
//
// Whether a block sums plainly without rounding depends only on its data and the (simplified) layout
// of the input: the plain additions are grouped the same way on every target, for batches and for
// single elements alike (floating_run). So does its plan. (A block whose every nonzero |x| is a
// multiple of ulp(a) never rounds plainly: its partial sums are multiples of ulp(a) below
// 2^51 ulp(a). The plan therefore has no such path of its own.)
//
// Accuracy. A plainly summed block has no error. On the extract path each element's rounding error
// is exact; only their sum c rounds. The errors lie on the grid of ulp(a) <= 2^-50 max m rather than
// TwoSum's ulp(partial sum), so on heavily cancelling data (partial sums far below sum |x|) c rounds
// more coarsely than TwoSum's compensation: a second-order term, ~ (n eps)^2 sum |x| like TwoSum's
// bound but with a larger constant. Measured against math.fsum on float64 data: within an ulp up to
// condition numbers ~1e15, beyond ~1e16 10 to 100 times TwoSum's error, which is why float64 keeps
// TwoSum.
enum class sum_path { two_sum, extract, plain };

template <sum_path path, class V>
inline void sum_step(V& s, V x, V& c) noexcept
{
    if constexpr (path == sum_path::plain) s = s + x;
    else if constexpr (path == sum_path::extract) extract(s, x, c);
    else two_sum(s, x, c);
}

// How a floating block's pass 2 runs: its path, and the anchor 1.5 * 2^q of every lane.
struct sum_plan {
    sum_path path = sum_path::two_sum;
    int q = 0;
};

// Whether pass 2 run on `guess` gives the values of the block's own plan `truth`: the same path and
// anchors.
inline bool compatible(const sum_plan& guess, const sum_plan& truth) noexcept
{
    return guess.path == truth.path && (truth.path == sum_path::two_sum || guess.q == truth.q);
}

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
    double anchor = 0.0;  // 0 on the TwoSum path

    sum_state() = default;
    explicit sum_state(const sum_plan& plan) noexcept
    {
        if (plan.path != sum_path::two_sum) {
            const std::uint64_t bits = (static_cast<std::uint64_t>(plan.q + 1023) << 52) | (std::uint64_t{1} << 51);
            std::memcpy(&anchor, &bits, sizeof bits);  // 1.5 * 2^q
            for (double& s_j : s) s_j = anchor;
        }
    }
};

template <>
struct sum_state<std::uint64_t> {
    std::uint64_t s[sum_lanes] = {};
};

// Pass 1's per-lane results for input type T. Element i of a run adds |x| to sum[(i / sum_lanes) %
// 2][i % sum_lanes] (two accumulators per lane: two dependency chains).
template <class T>
struct magnitudes {
    T sum[2][sum_lanes] = {};
};

// The plan of a block from its pass 1 (see sum_state).
template <class T>
inline sum_plan make_plan(const magnitudes<T>& mag) noexcept
{
    double m = 0.0;
    for (index_t j = 0; j < sum_lanes; ++j) {
        const double m_j = static_cast<double>(mag.sum[0][j] + mag.sum[1][j]);
        if (!(m_j <= 0x1p1000)) return {};  // NaN, an infinity, or near overflow: TwoSum
        m = m_j > m ? m_j : m;
    }
    const double bound = m + m * 0x1p-10;
    std::uint64_t bits;
    std::memcpy(&bits, &bound, sizeof bits);
    const int e = static_cast<int>(bits >> 52) - 1023;  // bound < 2^(e+1); 0 and subnormals: e = -1023
    return {sum_path::extract, e + 2 > -1000 ? e + 2 : -1000};
}

inline void add_partial(float_partial& acc, double s, double c) noexcept
{
    double err = 0.0;
    two_sum(acc.hi, s, err);
    acc.lo += err + c;
}

// A block's lanes, each the pair (s - anchor, c), combined pairwise (lane j with lane j + w, w = 8, 4,
// 2, 1): TwoSum of the two values, their errors added into the compensations. A pairwise tree and not
// one lane after another: the chain of dependent additions is 4 TwoSums long instead of 16, and the
// levels vectorize. Added lane after lane, the chain held every block's end up by long enough that
// an exact 5M float32 sum ran 10-20% slower (L3-resident, one core or two).
inline float_partial finish(const sum_state<double>& st) noexcept
{
    double hi[sum_lanes], lo[sum_lanes];
    for (index_t j = 0; j < sum_lanes; ++j) hi[j] = st.s[j] - st.anchor, lo[j] = st.c[j];
    for (index_t w = sum_lanes / 2; w >= 1; w /= 2)
        for (index_t j = 0; j < w; ++j) {
            double err = 0.0;
            two_sum(hi[j], hi[j + w], err);
            lo[j] = (lo[j] + lo[j + w]) + err;
        }
    return {hi[0], lo[0]};
}

// finish()'s hi for a plain-path state (anchor 0, compensations 0): the lanes' pairwise tree, the
// additions that finish()'s TwoSums make. When none of them rounds, every TwoSum error is 0, the
// compensations stay +0, and finish(st) is {lane_tree(st), +0}: float32_block and float32_blocks
// read the flags once more to know it, and take finish() only when the tree rounded (an exact 5M
// float32 sum ran 1-5% faster than with finish() on every block, L3-resident, one core or two).
inline double lane_tree(const sum_state<double>& st) noexcept
{
    double hi[sum_lanes];
    for (index_t j = 0; j < sum_lanes; ++j) hi[j] = st.s[j];
    for (index_t w = sum_lanes / 2; w >= 1; w /= 2)
        for (index_t j = 0; j < w; ++j) hi[j] = hi[j] + hi[j + w];
    return hi[0];
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
// int64) into one register, on x86 with one widening instruction (vcvtps2pd, vpmovsxdq; sse2 has no
// pmovsxdq: an unpack with the sign). GCC 12 compiles the generic vector conversion, kept for other
// targets, into halves and a merge (avx2, avx512) or element by element (sse2); xsimd's own
// converting load goes element by element through a stack buffer.
template <class B, class V>
inline B load_widened(const V* p) noexcept
{
    using T = typename B::value_type;
    if constexpr (std::is_same<T, V>::value) {
        return B::load_unaligned(p);
    } else {
        constexpr bool f32 = std::is_same<V, float>::value;  // else int32
        constexpr std::size_t bytes = sizeof(typename B::register_type);
#if defined(__AVX512F__)
        if constexpr (bytes == 64) {
            // (the maskz forms: GCC 12 warns of an uninitialized variable in _mm512_cvtps_pd)
            if constexpr (f32) return B(_mm512_maskz_cvtps_pd(0xff, _mm256_loadu_ps(p)));
            else return B(_mm512_maskz_cvtepi32_epi64(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
        } else
#endif
#if defined(__AVX2__)
        if constexpr (bytes == 32) {
            if constexpr (f32) return B(_mm256_cvtps_pd(_mm_loadu_ps(p)));
            else return B(_mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
        } else
#endif
#if defined(__SSE2__)
        if constexpr (bytes == 16) {
            const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
            if constexpr (f32) return B(_mm_cvtps_pd(_mm_castsi128_ps(v)));
            else return B(_mm_unpacklo_epi32(v, _mm_srai_epi32(v, 31)));
        } else
#endif
        {
            constexpr std::size_t W = B::size;
            typedef V narrow __attribute__((vector_size(W * sizeof(V))));
            typedef T wide __attribute__((vector_size(W * sizeof(T))));
            using reg = typename B::register_type;
            static_assert(sizeof(reg) == sizeof(wide), "one batch is one register");
            narrow v;
            std::memcpy(&v, p, sizeof v);
            return B((reg)__builtin_convertvector(v, wide));
        }
    }
}

// Whether a run of element type T is read with batches: contiguous and aligned to the element.
template <class T>
inline bool batch_readable(const char* p, index_t step) noexcept
{
    return step == index_t{sizeof(T)} && reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0;
}

// Pass 1 of element i of a run, scalar.
template <class T>
inline void measure1(magnitudes<T>& mag, index_t i, const char* p) noexcept
{
    mag.sum[(i / sum_lanes) % 2][i % sum_lanes] += std::fabs(load1<T>(p));
}

// Additions that may issue on the multiply-add units: acc + x as fma(x, 1, acc) and a - b as
// fnmadd(b, 1, a), the same values (b * 1 is exact, so the fma rounds once, like the addition). Zen 4
// runs additions on two pipes and multiply-adds on two others; the sum kernel's additions of widened
// elements and of |x| otherwise share the addition pipes with the widening conversions, and TwoSum's
// seven additions would all queue on two pipes (four of them go to the multiply-add pipes: the
// float64 sum ran 1.65x as fast on one core in L2). Only for registers the target has an FMA
// instruction for (avx2, avx512; elsewhere a plain addition): intrinsics, as xsimd 8 has no avx512
// fma. The 1 passes through an empty asm: GCC folds fma(x, 1, acc) back into an addition.
#if defined(__FMA__)
inline __m128 fmadd(__m128 a, __m128 b, __m128 c) noexcept { return _mm_fmadd_ps(a, b, c); }
inline __m128d fmadd(__m128d a, __m128d b, __m128d c) noexcept { return _mm_fmadd_pd(a, b, c); }
inline __m256 fmadd(__m256 a, __m256 b, __m256 c) noexcept { return _mm256_fmadd_ps(a, b, c); }
inline __m256d fmadd(__m256d a, __m256d b, __m256d c) noexcept { return _mm256_fmadd_pd(a, b, c); }
#endif
#if defined(__AVX512F__)
inline __m512 fmadd(__m512 a, __m512 b, __m512 c) noexcept { return _mm512_fmadd_ps(a, b, c); }
inline __m512d fmadd(__m512d a, __m512d b, __m512d c) noexcept { return _mm512_fmadd_pd(a, b, c); }
#endif
#if defined(__FMA__)
inline __m128 fnmadd(__m128 a, __m128 b, __m128 c) noexcept { return _mm_fnmadd_ps(a, b, c); }
inline __m128d fnmadd(__m128d a, __m128d b, __m128d c) noexcept { return _mm_fnmadd_pd(a, b, c); }
inline __m256 fnmadd(__m256 a, __m256 b, __m256 c) noexcept { return _mm256_fnmadd_ps(a, b, c); }
inline __m256d fnmadd(__m256d a, __m256d b, __m256d c) noexcept { return _mm256_fnmadd_pd(a, b, c); }
#endif
#if defined(__AVX512F__)
inline __m512 fnmadd(__m512 a, __m512 b, __m512 c) noexcept { return _mm512_fnmadd_ps(a, b, c); }
inline __m512d fnmadd(__m512d a, __m512d b, __m512d c) noexcept { return _mm512_fnmadd_pd(a, b, c); }
#endif

// Whether fmadd() takes B's registers. (The register type is not a template argument here: GCC warns
// that its vector attributes are ignored there.)
template <class B>
constexpr auto has_fmadd(int) -> decltype(fmadd(*static_cast<typename B::register_type*>(nullptr),
                                                *static_cast<typename B::register_type*>(nullptr),
                                                *static_cast<typename B::register_type*>(nullptr)),
                                          true)
{
    return true;
}
template <class B>
constexpr bool has_fmadd(long)
{
    return false;
}

template <class B, bool = has_fmadd<B>(0)>
struct fma_adder : plain_adder {};

#if defined(__FMA__) || defined(__AVX512F__)
template <class B>
struct fma_adder<B, true> {
    using R = typename B::register_type;
    R one;
    fma_adder() noexcept : one(B(typename B::value_type(1))) { asm("" : "+v"(one)); }
    B operator()(B acc, B x) const noexcept { return B(fmadd(static_cast<R>(x), one, static_cast<R>(acc))); }
    B minus(B a, B b) const noexcept { return B(fnmadd(static_cast<R>(b), one, static_cast<R>(a))); }
};
#endif

// Pass 1 in registers, for contiguous stretches: add<h>(x) takes x[0, sum_lanes) into the lanes'
// accumulator set h.
template <class A, class T>
struct magnitude_batches {
    using B = xsimd::batch<T, A>;
    static constexpr index_t W = B::size;
    static constexpr index_t NB = sum_lanes / W;
    static_assert(sum_lanes % W == 0, "sum_lanes must be a multiple of the batch width");

    B sum[2][NB];
    fma_adder<B> plus;

    explicit magnitude_batches(const magnitudes<T>& m) noexcept
    {
        for (index_t k = 0; k < NB; ++k) {
            sum[0][k] = B::load_unaligned(m.sum[0] + k * W);
            sum[1][k] = B::load_unaligned(m.sum[1] + k * W);
        }
    }
    template <int h>
    void add(const T* x) noexcept
    {
        for (index_t k = 0; k < NB; ++k) sum[h][k] = plus(sum[h][k], xsimd::abs(B::load_unaligned(x + k * W)));
    }
    void store(magnitudes<T>& m) const noexcept
    {
        for (index_t k = 0; k < NB; ++k) {
            sum[0][k].store_unaligned(m.sum[0] + k * W);
            sum[1][k].store_unaligned(m.sum[1] + k * W);
        }
    }
};

// The float64 batch pass 2 widens float32 into: on avx512 targets a 256-bit one. On Zen 4 (512-bit
// operations double-pumped) the 512-bit vcvtps2pd costs more than two 256-bit ones: the float32 sum
// ran 1.3x as fast in L2 this way. The lanes are per element index, so the width changes no result.
// The 256-bit batch is this translation unit's own type (its functions are internal), not xsimd's
// fma3<avx2> batch: the avx2 translation unit instantiates that one too, and the linker would keep a
// single copy of any out-of-line function of it, possibly this one, built with -mavx512f.
#if defined(__AVX512F__) && defined(__FMA__)
struct ymm_double {
    using value_type = double;
    using register_type = __m256d;
    static constexpr std::size_t size = 4;
    __m256d v;

    ymm_double() = default;
    ymm_double(double x) noexcept : v(_mm256_set1_pd(x)) {}
    ymm_double(__m256d x) noexcept : v(x) {}
    operator __m256d() const noexcept { return v; }
    static ymm_double load_unaligned(const double* p) noexcept { return _mm256_loadu_pd(p); }
    void store_unaligned(double* p) const noexcept { _mm256_storeu_pd(p, v); }
    friend ymm_double operator+(ymm_double a, ymm_double b) noexcept { return _mm256_add_pd(a.v, b.v); }
    friend ymm_double operator-(ymm_double a, ymm_double b) noexcept { return _mm256_sub_pd(a.v, b.v); }
};
#endif

template <class A, class T>
struct widened_batch {
    using type = xsimd::batch<double, A>;
};
#if defined(__AVX512F__) && defined(__FMA__)
template <class A>
struct widened_batch<A, float> {
    using type = std::conditional_t<A::alignment() == 64, ymm_double, xsimd::batch<double, A>>;
};
#endif

// x, kept in a register: on x86 the asm keeps GCC from folding x's load into each of the operations
// that read x. For TwoSum's two reads of each element one load ran 5-11% faster at 5M float64 (from
// L3 and memory), and as fast on L2-resident data; for the ordered Fast2Sum's three, 1.4x as fast in
// L2 and L3.
template <class B>
inline B loaded_once(B x) noexcept
{
#if defined(__SSE2__)
    auto r = static_cast<typename B::register_type>(x);
    asm("" : "+v"(r));
    return B(r);
#else
    return x;
#endif
}

// Pass 2 in registers, for contiguous stretches of T widened to float64: add<h>(x) takes x[0,
// sum_lanes) into the lanes. On the plain path the odd groups of sum_lanes go to a second
// accumulator (h = 1), merged into s by store(): two dependency chains run faster than one, and
// additions that do not round give the same sums in any grouping. (Whether they round depends on the
// grouping: floating_run's single-element loop keeps this one.)
template <sum_path path, class A, class T>
struct sum_batches {
    using B = typename widened_batch<A, T>::type;
    static constexpr index_t W = B::size;
    static constexpr index_t NB = sum_lanes / W;
    static_assert(sum_lanes % W == 0, "sum_lanes must be a multiple of the batch width");

    B s[NB], c[NB], s1[NB];
    fma_adder<B> plus;

    explicit sum_batches(const sum_state<double>& st) noexcept
    {
        for (index_t k = 0; k < NB; ++k) {
            s[k] = B::load_unaligned(st.s + k * W);
            c[k] = B::load_unaligned(st.c + k * W);
            s1[k] = B(0.0);
        }
    }
    template <int h>
    void add(const T* x) noexcept
    {
        for (index_t k = 0; k < NB; ++k) {
            if constexpr (path == sum_path::plain && h == 1) s1[k] = plus(s1[k], load_widened<B>(x + k * W));
            else if constexpr (path == sum_path::plain) s[k] = plus(s[k], load_widened<B>(x + k * W));
            else if constexpr (path == sum_path::extract) {
                const B e = load_widened<B>(x + k * W);
                const B t = plus(s[k], e);
                c[k] = plus(c[k], e - (t - s[k]));
                s[k] = t;
            }
            else two_sum(s[k], loaded_once(load_widened<B>(x + k * W)), c[k], plus);
        }
    }
    // The plain path's second accumulator into the first, as store() and a new sum_batches do.
    void merge() noexcept
    {
        for (index_t k = 0; k < NB; ++k) {
            s[k] = s[k] + s1[k];
            s1[k] = B(0.0);
        }
    }
    void store(sum_state<double>& st) noexcept
    {
        for (index_t k = 0; k < NB; ++k) {
            if constexpr (path == sum_path::plain) s[k] = s[k] + s1[k];
            s[k].store_unaligned(st.s + k * W);
            c[k].store_unaligned(st.c + k * W);
        }
    }
};

// floating_run's stand-in for pass 1's batches when it does not measure. (An unused
// magnitude_batches in scope costs time: with one, GCC 12 kept the TwoSum lanes' sums on the stack
// across iterations, and the float64 sum ran at 44 GB/s on one core in L2 instead of 53.)
template <class T>
struct no_batches {
    explicit no_batches(const magnitudes<T>&) noexcept {}
    template <int>
    void add(const T*) noexcept {}
    void store(magnitudes<T>&) const noexcept {}
};

// floating_run's TwoSum pass on batches whose two_sum orders by magnitude (AVX-512's float64): whole
// groups of sum_lanes contiguous elements from x, n of them, into st, one group an iteration; returns
// the elements taken. The same additions as floating_run's loop (the TwoSum path adds both groups of
// a pair into s), out of line: so GCC 12 keeps every value of the loop in registers, where inside
// floating_run it made register copies and stored two lane sums to the stack every iteration; the
// float64 sum ran 1.07-1.12x as fast in L2 and L3 on one core, 1.04x at 5M. (On AVX2, with
// Knuth's TwoSum, floating_run's loop of pairs of groups is the faster: 8% slower this way.)
template <class A, class T>
[[gnu::noinline]] index_t ordered_two_sum_groups(sum_state<double>& st, const T* x, index_t n) noexcept
{
    sum_batches<sum_path::two_sum, A, T> r(st);
    index_t i = 0;
    for (; i + sum_lanes <= n; i += sum_lanes) r.template add<0>(x + i);
    r.store(st);
    return i;
}

// Passes over one run of n elements (byte step `step`), element i into lane i % sum_lanes: pass 1
// into mag if `measure`, pass 2 along `path` into st if `sum`. Batches of 2 * sum_lanes elements,
// then one of sum_lanes, then scalar elements: the same operations in the same order on every target.
template <bool measure, bool sum, sum_path path, class A, class T>
void floating_run(sum_state<double>& st, magnitudes<T>& mag, const char* p, index_t n, index_t step) noexcept
{
    index_t i = 0;
    constexpr bool ordered_groups = sum && !measure && path == sum_path::two_sum &&
                                    has_magnitude_order<typename widened_batch<A, T>::type>(0);
    if (ordered_groups && batch_readable<T>(p, step)) {
        i = ordered_two_sum_groups<A>(st, reinterpret_cast<const T*>(p), n);
    } else if (batch_readable<T>(p, step)) {
        const T* x = reinterpret_cast<const T*>(p);
        sum_batches<path, A, T> r2(st);
        std::conditional_t<measure, magnitude_batches<A, T>, no_batches<T>> r1(mag);
        for (; i + 2 * sum_lanes <= n; i += 2 * sum_lanes) {
            if constexpr (sum) r2.template add<0>(x + i);
            if constexpr (measure) r1.template add<0>(x + i);
            if constexpr (sum) r2.template add<1>(x + i + sum_lanes);
            if constexpr (measure) r1.template add<1>(x + i + sum_lanes);
        }
        if (i + sum_lanes <= n) {
            if constexpr (sum) r2.template add<0>(x + i);
            if constexpr (measure) r1.template add<0>(x + i);
            i += sum_lanes;
        }
        if constexpr (sum) r2.store(st);
        if constexpr (measure) r1.store(mag);
    } else if constexpr (sum && path == sum_path::plain) {
        // The batches' grouping, one element at a time: pairs of groups of sum_lanes, the second of
        // each into s1, then at most one more group, then s1 merged, then the rest. Whether the plain
        // sum rounds depends on the grouping, so a strided or unaligned copy must not change it.
        double s1[sum_lanes] = {};
        const index_t pairs = n / (2 * sum_lanes) * (2 * sum_lanes), groups = n / sum_lanes * sum_lanes;
        for (; i < groups; ++i) {
            const double x = static_cast<double>(load1<T>(p + i * step));
            double& lane = i < pairs && (i / sum_lanes) % 2 == 1 ? s1[i % sum_lanes] : st.s[i % sum_lanes];
            lane = lane + x;
            if constexpr (measure) measure1(mag, i, p + i * step);
        }
        for (index_t j = 0; j < sum_lanes; ++j) st.s[j] = st.s[j] + s1[j];
    }
    for (; i < n; ++i) {
        if constexpr (sum) sum_step<path>(st.s[i % sum_lanes], static_cast<double>(load1<T>(p + i * step)), st.c[i % sum_lanes]);
        if constexpr (measure) measure1(mag, i, p + i * step);
    }
}

// floating_run over the runs of elements [begin, end) of v, pass 2 (if `sum`) along `path`.
template <bool measure, bool sum, class A, class T>
void floating_runs(const nd_view<1>& v, index_t begin, index_t end, sum_state<double>& st, magnitudes<T>& mag,
                   sum_path path) noexcept
{
    auto over = [&](auto p) {
        for_each_run(v, begin, end, [&](char* const* ptr, index_t count, const index_t* step) {
            floating_run<measure, sum, decltype(p)::value, A, T>(st, mag, ptr[0], count, step[0]);
        });
    };
    if constexpr (!sum) {
        over(std::integral_constant<sum_path, sum_path::two_sum>{});  // (path unused)
    } else {
        switch (path) {
        case sum_path::plain:
            return over(std::integral_constant<sum_path, sum_path::plain>{});
        case sum_path::extract:
            return over(std::integral_constant<sum_path, sum_path::extract>{});
        case sum_path::two_sum:
            return over(std::integral_constant<sum_path, sum_path::two_sum>{});
        }
    }
}

// Where the plain pass of the float32 block beginning at `begin` splits it (see float32_block): after
// its first eighth, or at its end.
inline index_t first_run_end(index_t begin, index_t end) noexcept { return std::min(end, begin + sum_block / 8); }

// The float32 elements of v from `begin` on as one pointer, when they are contiguous and
// batch_readable (a 1-d view); otherwise nullptr.
inline const float* contiguous_floats(const nd_view<1>& v, index_t begin) noexcept
{
    if (v.ndim != 1) return nullptr;
    const index_t step = v.strides[0][0];
    const char* p = v.data[0] + begin * step;
    return batch_readable<float>(p, step) ? reinterpret_cast<const float*>(p) : nullptr;
}

// The plain passes of g whole blocks of contiguous float32 from x, into st[0, g): the additions of
// the two runs of float32_plain_pass (the first eighth, its second accumulator merged at its end as
// that run's store merges it, then the rest; sum_block is a whole number of pairs of groups), in one
// loop nest, with no store, reload and loop start between the runs. Called one block at a time,
// through floating_run for each run, a 5M float32 sum ran 5-8% slower (L3-resident, one core or
// two; in L2, one core, 5-6%).
template <class A>
void float32_plain_whole_blocks(const float* x, index_t g, sum_state<double>* st) noexcept
{
    static_assert(sum_block / 8 % (2 * sum_lanes) == 0, "the first run must end after whole pairs of groups");
    for (index_t k = 0; k < g; ++k, x += sum_block) {
        sum_batches<sum_path::plain, A, float> r(st[k]);
        auto pairs = [&](index_t i, index_t stop) {
            for (; i < stop; i += 2 * sum_lanes) {
                r.template add<0>(x + i);
                r.template add<1>(x + i + sum_lanes);
            }
        };
        pairs(0, sum_block / 8);
        r.merge();
        pairs(sum_block / 8, sum_block);
        r.store(st[k]);
    }
}

// The plain pass of the float32 block [begin, end) of v, in two runs split at first_run_end (see
// float32_block), when the flags need not be read between them: a whole contiguous block through
// float32_plain_whole_blocks, any other as the two runs.
template <class A>
void float32_plain_pass(const nd_view<1>& v, index_t begin, index_t end, sum_state<double>& st,
                        magnitudes<float>& mag) noexcept
{
    if (end - begin == sum_block) {
        if (const float* x = contiguous_floats(v, begin)) return float32_plain_whole_blocks<A>(x, 1, &st);
    }
    const index_t probe = first_run_end(begin, end);
    floating_runs<false, true, A>(v, begin, probe, st, mag, sum_path::plain);
    floating_runs<false, true, A>(v, probe, end, st, mag, sum_path::plain);
}

// The floating-point environment of a thread's floating sum: while it runs, round to nearest, every
// exception masked and (x86) no flush-to-zero or denormals-are-zero, which a library built with
// -ffast-math may have set; afterwards the caller's environment, flags included. (Elsewhere the C
// fenv functions, which leave flush-to-zero as it is.) Between clear() and exact(st) it tells
// whether any floating operation rounded, overflowed or was invalid: the flags are sticky per
// thread. exact() takes the block's state as an input, so the compiler materializes every addition
// into it before reading the flags; clear() clobbers memory, so no element is loaded before it.
class float_env {
#if defined(__SSE2__)
    // MXCSR: all exceptions masked, flags clear, round to nearest, no FTZ/DAZ
    static constexpr unsigned working = 0x1f80;
    unsigned saved_;

public:
    float_env() noexcept : saved_(mxcsr_read()) { clear(); }
    ~float_env() { mxcsr_write(saved_); }
    float_env(const float_env&) = delete;
    float_env& operator=(const float_env&) = delete;
    void clear() noexcept { mxcsr_write(working); }  // (writing measured cheaper than reading it)
    template <class State>
    bool exact(const State& st) const noexcept
    {
        unsigned csr;
        asm volatile("stmxcsr %0" : "=m"(csr) : "m"(st) : "memory");
        return (csr & 0x29u) == 0;  // no invalid (0x1), overflow (0x8) or inexact (0x20)
    }
#else
    std::fenv_t saved_;

public:
    float_env() noexcept
    {
        std::feholdexcept(&saved_);
        std::fesetround(FE_TONEAREST);
    }
    ~float_env() { std::fesetenv(&saved_); }
    float_env(const float_env&) = delete;
    float_env& operator=(const float_env&) = delete;
    void clear() noexcept
    {
        asm volatile("" : : : "memory");
        std::feclearexcept(FE_ALL_EXCEPT);
    }
    template <class State>
    bool exact(const State& st) const noexcept
    {
        asm volatile("" : : "m"(st) : "memory");
        return std::fetestexcept(FE_INEXACT | FE_OVERFLOW | FE_INVALID) == 0;
    }
#endif
};

// A float64 block's pass with scalars, which order by magnitude (see two_sum): element i of a run into
// lane i % sum_lanes, as floating_run's batches take it.
[[gnu::noinline, gnu::cold]] inline sum_state<double> float64_scalar_pass(const nd_view<1>& v, index_t begin,
                                                                           index_t end) noexcept
{
    sum_state<double> st;
    for_each_run(v, begin, end, [&](char* const* ptr, index_t count, const index_t* step) {
        for (index_t i = 0; i < count; ++i)
            two_sum(st.s[i % sum_lanes], load1<double>(ptr[0] + i * step[0]), st.c[i % sum_lanes]);
    });
    return st;
}

// The partial of the floating block [begin, end) of v (see sum_state).
//
// float32 blocks first take plain summation, the plain path's additions from 0 with no anchor and
// no first pass: when none of them rounded (env) and the lane sums are finite, those sums are the
// lanes' exact sums (see sum_state). The plain pass runs in two runs, the block's first eighth and
// the rest (a fixed split: it decides how the additions are grouped, and so whether they round).
// When the thread's last block rounded (guess.streak == 0), the flags are read between the two too:
// a block that rounds in its first eighth (wide-ranging data) stops there, and is read from memory
// about once. When the last block was exact, they are read only at the end (after a streak of exact
// blocks, once for a group of blocks: float32_blocks): reading them waits for every addition in
// flight, which cost 5-10% of the speed of an exact 5M float32 sum (L3-resident, one core or two).
// Either way the block is exact exactly when its plain additions did not round, and its partial is
// finish() of its lanes (taken from their plain tree when that does not round: lane_tree).
// Otherwise the block takes its plan: pass 1, and pass 2 in the same loop on the plan of the
// thread's last planned block if there is one (guess.planned, guess.plan: on return the block's
// own); on a different plan pass 2 alone runs again (compatible()). So the guesses decide only how
// fast a block is summed: its partial depends only on its data.
//
// Only float32 input is anchored. float64 blocks keep TwoSum, one pass: widening is free there, so
// the sum is memory-bound already at 2^25 elements on two cores, and on heavily cancelling float64
// data (condition numbers beyond ~1e16) extraction's coarser error grid measured 10 to 100 times
// TwoSum's error.
template <class A>
float_partial float64_block(const nd_view<1>& v, index_t begin, index_t end) noexcept
{
    sum_state<double> st;
    magnitudes<double> mag;
    floating_runs<false, true, A>(v, begin, end, st, mag, sum_path::two_sum);
    return finish(st);
}

// Blocks a thread sums plainly before it reads the flags once for all of them (float32_blocks).
constexpr index_t sum_group = 4;
constexpr index_t sum_group_backoff = 64;  // the most exact blocks in a row it waits for after a miss

// What a thread's last float32 blocks say of the next ones (see float32_block, float32_blocks);
// speed only.
struct float32_guess {
    bool planned = false;  // a block took its plan, and `plan` is the last one's
    sum_plan plan;
    index_t streak = sum_group;  // the last blocks' plain sums that did not round, in a row (0: the last rounded)
    index_t needed = sum_group;  // the streak after which blocks are summed in groups again
};

template <class A>
float_partial float32_block(const nd_view<1>& v, index_t begin, index_t end, float_env& env,
                            float32_guess& guess) noexcept
{
    sum_state<double> st;
    magnitudes<float> mag;
    env.clear();
    bool exact = true;
    if (guess.streak == 0) {
        const index_t probe = first_run_end(begin, end);
        floating_runs<false, true, A>(v, begin, probe, st, mag, sum_path::plain);
        exact = env.exact(st);
        if (exact && probe < end) floating_runs<false, true, A>(v, probe, end, st, mag, sum_path::plain);
    } else {
        float32_plain_pass<A>(v, begin, end, st, mag);
    }
    exact = exact && env.exact(st);
    for (double s_j : st.s) exact = exact && __builtin_isfinite(s_j);
    guess.streak = exact ? guess.streak + 1 : 0;
    if (exact) {
        const double hi = lane_tree(st);
        return env.exact(hi) ? float_partial{hi, 0.0} : finish(st);
    }

    sum_planned_blocks().fetch_add(1, std::memory_order_relaxed);
    const bool guessed = guess.planned;
    const sum_plan first = guessed ? guess.plan : sum_plan{};
    st = sum_state<double>(first);
    if (guessed) floating_runs<true, true, A>(v, begin, end, st, mag, first.path);
    else floating_runs<true, false, A>(v, begin, end, st, mag, first.path);
    const sum_plan plan = make_plan(mag);
    guess.plan = plan;
    guess.planned = true;
    if (!guessed || !compatible(first, plan)) {
        st = sum_state<double>(plan);
        floating_runs<false, true, A>(v, begin, end, st, mag, plan.path);
    }
    return finish(st);
}

// The partials of the float32 blocks from b on, to emit(block, partial), up to block b1; returns how
// many blocks it took. After a streak of blocks that did not round, up to sum_group of them are
// summed plainly, each as float32_block's plain pass does (the same runs, so the same additions;
// the group's whole contiguous blocks in one loop nest: float32_plain_whole_blocks), and
// the flags are read once, at the end, not once per block: each read waits for every addition in
// flight, and the clear before it costs too (an exact 5M float32 sum, L3-resident, ran 5-7% faster on
// one core and on two). The flags are sticky, so when they show no rounding, none of the group's blocks
// rounded, and their lanes are the partials block by block reading gives, finished after the read
// (the lane trees may round) as float32_block finishes one: all the group's trees, then one more read
// (see lane_tree; if any tree rounded, every block of the group takes finish(), which gives the same
// partials more slowly). Otherwise float32_block sums each of them again, and the streak it takes to group
// again doubles, up to sum_group_backoff (for the rest of the call). So data where rounding blocks
// come often goes back to reading the flags block by block after a few missed groups, and where they
// are rare a missed group wastes at most sum_group plain passes in every sum_group_backoff blocks.
// The partials are the same whichever path a block takes.
template <class A, class Emit>
index_t float32_blocks(const nd_view<1>& v, index_t b, index_t b1, float_env& env, float32_guess& guess,
                       Emit&& emit) noexcept
{
    const index_t n = elements(v);
    auto bounds = [n](index_t k) { return std::make_pair(k * sum_block, std::min(n, (k + 1) * sum_block)); };
    const index_t g = std::min(sum_group, b1 - b);
    if (g < 2 || guess.streak < guess.needed) {
        const auto [begin, end] = bounds(b);
        emit(b, float32_block<A>(v, begin, end, env, guess));
        return 1;
    }
    sum_state<double> st[sum_group];
    magnitudes<float> mag;
    env.clear();
    index_t whole = 0;  // the group's whole contiguous blocks (all but a short last one), if any
    if (const float* x = contiguous_floats(v, b * sum_block)) {
        whole = std::min(g, n / sum_block - b);
        float32_plain_whole_blocks<A>(x, whole, st);
    }
    for (index_t k = whole; k < g; ++k) {
        const auto [begin, end] = bounds(b + k);
        float32_plain_pass<A>(v, begin, end, st[k], mag);
    }
    bool exact = env.exact(st);
    for (index_t k = 0; k < g; ++k)
        for (double s_j : st[k].s) exact = exact && __builtin_isfinite(s_j);
    if (exact) {
        guess.streak += g;
        double hi[sum_group];
        for (index_t k = 0; k < g; ++k) hi[k] = lane_tree(st[k]);
        const bool trees_exact = env.exact(hi);
        for (index_t k = 0; k < g; ++k) emit(b + k, trees_exact ? float_partial{hi[k], 0.0} : finish(st[k]));
        return g;
    }
    guess.needed = std::min(sum_group_backoff, 2 * guess.needed);
    guess.streak = 0;  // (some block of the group rounded)
    for (index_t k = 0; k < g; ++k) {
        const auto [begin, end] = bounds(b + k);
        emit(b + k, float32_block<A>(v, begin, end, env, guess));
    }
    return g;
}

template <class A, class T>
void integer_run(sum_state<std::uint64_t>& st, const char* p, index_t n, index_t step) noexcept
{
    // Lanes hold int64 two's complement bits; SIMD integer adds wrap like the unsigned scalar ones.
    index_t i = 0;
    if (batch_readable<T>(p, step)) {
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

template <class A, class T>
std::uint64_t integer_block(const nd_view<1>& v, index_t begin, index_t end) noexcept
{
    sum_state<std::uint64_t> st;
    for_each_run(v, begin, end, [&](char* const* p, index_t count, const index_t* step) {
        integer_run<A, T>(st, p[0], count, step[0]);
    });
    return finish(st);
}

}  // namespace

// ---- the functors -----------------------------------------------------------------------------

template <class Arch, class T, class C>
unsigned scale_kernel::operator()(Arch, type_tag<T>, const nd_view<2>& v, C factor) const noexcept
{
    const bool stream = v.data[0] != v.data[1] && stream_output(2 * elements(v) * index_t{sizeof(T)});
    return parallel_for(elements(v), element_grain, 1, [&](index_t begin, index_t end) {
        for_each_run(v, begin, end, [&](char* const* p, index_t n, const index_t* step) {
            scale_run<Arch, T, C>(p[0], p[1], n, step[0], step[1], factor, stream);
        });
    });
}

template <class Arch, class T>
unsigned add_kernel::operator()(Arch, type_tag<T>, const nd_view<3>& v) const noexcept
{
    // (a + a reads one array: two operands of footprint, not three)
    const index_t operands = v.data[1] == v.data[2] ? 2 : 3;
    const bool stream = v.data[0] != v.data[1] && v.data[0] != v.data[2] && stream_output(operands * elements(v) * index_t{sizeof(T)});
    return parallel_for(elements(v), element_grain, 1, [&](index_t begin, index_t end) {
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
    using partial = std::conditional_t<std::is_floating_point<T>::value, float_partial, std::uint64_t>;
    const index_t n = elements(v);
    const index_t blocks = (n + sum_block - 1) / sum_block;

    // One thread's share: the partials of the blocks in each range [b0, b1) that next(b0, b1) gives,
    // in order, to emit(b, partial).
    // A floating sum runs in float_env's environment on every thread, its final combination included:
    // TwoSum and extraction are error-free only in round to nearest, and subnormals must count.
    struct no_env {};
    using thread_env = std::conditional_t<std::is_floating_point<T>::value, float_env, no_env>;
    [[maybe_unused]] thread_env env;

    // One thread's share: the partials of the blocks in each range [b0, b1) that next(b0, b1) gives,
    // in order, to emit(b, partial).
    auto run_blocks = [&](auto&& next, auto&& emit) {
        [[maybe_unused]] thread_env block_env;
        [[maybe_unused]] float32_guess guess;
        index_t b0, b1;
        while (next(b0, b1))
            for (index_t b = b0; b < b1;) {
                if constexpr (std::is_same<T, float>::value) {
                    b += float32_blocks<Arch>(v, b, b1, block_env, guess, emit);
                } else {
                    const index_t begin = b * sum_block, end = std::min(n, begin + sum_block);
                    if constexpr (std::is_same<T, double>::value) {
                        float_partial p = float64_block<Arch>(v, begin, end);
                        // A finite sum with a compensation that is not: Knuth's TwoSum overflowed in
                        // a lane where the sum did not (see two_sum). (Tested inside float64_block,
                        // this cost its loop register copies.)
                        if (__builtin_isfinite(p.hi) && !__builtin_isfinite(p.lo))
                            p = finish(float64_scalar_pass(v, begin, end));
                        emit(b, p);
                    }
                    else emit(b, integer_block<Arch, T>(v, begin, end));
                    ++b;
                }
            }
    };

    // Block partials are combined in index order whichever thread computed them, so the result does
    // not depend on the thread count or on which thread took which blocks (parallel_for_balanced).
    // Partials take 1/512 of the input's size.
    // (settle(): the asm makes the compiler finish the value's arithmetic there, in program order with
    // float_env's flag reads and writes. Otherwise a combine() could move into the next block's
    // plain sum, or the result past env's restoring the caller's rounding mode.)
    auto settle = [](auto& value) { asm volatile("" : "+m"(value)); };
    partial total{};
    partial* partials = blocks > 1 ? new (std::nothrow) partial[static_cast<std::size_t>(blocks)] : nullptr;
    if (partials == nullptr) {
        run_blocks(whole_range(blocks), [&](index_t, const partial& p) {
            combine(total, p);
            settle(total);
        });
    } else {
        parallel_for_balanced(blocks, 16, sum_block, [&](auto& next) {
            run_blocks(next, [&](index_t b, const partial& p) { partials[b] = p; });
        });
        for (index_t b = 0; b < blocks; ++b) combine(total, partials[b]);
        delete[] partials;
    }
    sum_result_t<T> r = result(total);
    settle(r);
    return r;
}

template <class Arch, class T>
double sum_arithmetic_kernel::operator()(Arch, type_tag<T>, const T* a, index_t n) const noexcept
{
    const index_t blocks = (n + sum_block - 1) / sum_block;
    double* partials = new (std::nothrow) double[static_cast<std::size_t>(blocks > 0 ? blocks : 1)];
    if (partials == nullptr) return 0.0;
    parallel_for_balanced(blocks, 16, sum_block, [&](auto& next) {
        index_t b0, b1;
        while (next(b0, b1))
            for (index_t b = b0; b < b1;) {
                constexpr index_t states = std::is_same<T, float>::value ? sum_group : 1;
                sum_state<double> st[states];
                const index_t begin = b * sum_block;
                index_t g = 1;  // blocks summed
                auto one_block = [&] {
                    constexpr sum_path path = std::is_same<T, float>::value ? sum_path::plain : sum_path::two_sum;
                    magnitudes<T> mag;
                    floating_run<false, true, path, Arch, T>(st[0], mag, reinterpret_cast<const char*>(a + begin),
                                                             std::min(n, begin + sum_block) - begin, index_t{sizeof(T)});
                };
                if constexpr (std::is_same<T, float>::value) {
                    g = std::min({states, b1 - b, n / sum_block - b});  // whole blocks
                    if (g > 0) float32_plain_whole_blocks<Arch>(a + begin, g, st);
                    else one_block(), g = 1;  // the short last block
                } else {
                    one_block();
                }
                for (index_t k = 0; k < g; ++k, ++b) {
                    sum_state<double> c;  // (the compensations' tree, as the lanes')
                    for (index_t j = 0; j < sum_lanes; ++j) c.s[j] = st[k].c[j];
                    partials[b] = lane_tree(st[k]) + lane_tree(c);
                }
            }
    });
    double total = 0.0;
    for (index_t b = 0; b < blocks; ++b) total += partials[b];
    delete[] partials;
    return total;
}

template <class Arch, class T>
unsigned nonfinite_kernel::operator()(Arch, type_tag<T>, const nd_view<1>& v) const noexcept
{
    using bits_t = std::conditional_t<sizeof(T) == 8, std::uint64_t, std::uint32_t>;
    constexpr bits_t magnitude = ~bits_t{0} >> 1;                                  // all but the sign
    constexpr bits_t inf = static_cast<bits_t>(sizeof(T) == 8 ? 0x7ff0000000000000u : 0x7f800000u);  // exponent all ones
    constexpr bits_t quiet = static_cast<bits_t>(sizeof(T) == 8 ? 0x0008000000000000u : 0x00400000u);  // a NaN's quiet bit
    std::atomic<unsigned> found{0};
    parallel_for(elements(v), element_grain, 1, [&](index_t begin, index_t end) {
        unsigned mine = 0;
        for_each_run(v, begin, end, [&](char* const* p, index_t n, const index_t* step) {
            for (index_t i = 0; i < n; ++i) {
                bits_t b;
                std::memcpy(&b, p[0] + i * step[0], sizeof b);
                if ((b & magnitude) > inf) mine |= (b & quiet) ? holds_nan : holds_nan | holds_signalling_nan;
                else if ((b & magnitude) == inf) mine |= b == inf ? holds_plus_inf : holds_minus_inf;
            }
        });
        found.fetch_or(mine, std::memory_order_relaxed);
    });
    return found.load(std::memory_order_relaxed);
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
    // Plain SIMD sum with four independent accumulators per block; block sums added in order. Blocks
    // are shared out between threads as safe_sum's are (parallel_for_balanced).
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
    parallel_for_balanced(blocks, 2, block, [&](auto& next) {
        index_t k0, k1;
        while (next(k0, k1))
            for (index_t k = k0; k < k1; ++k) partial[k] = block_sum(k);
    });
    double total = 0.0;
    for (index_t k = 0; k < blocks; ++k) total += partial[k];
    delete[] partial;
    return total;
}

}  // namespace memory_ops
