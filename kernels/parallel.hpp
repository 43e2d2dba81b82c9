// Where the number of threads and the chunking are decided: the OpenMP helpers every kernel uses.
//
// parallel_for (the element-wise kernels) splits work into one contiguous chunk per thread (a static
// schedule), each chunk a whole multiple of `grain` items, so only the last chunk has a tail and, for
// grain = 64 elements, no two threads write the same cache line of a 64-byte-aligned output; a fresh
// output's pages are first touched by the thread that computes them. parallel_for_balanced (the sums)
// gives each thread such a share too, taken in chunks, and a thread done with its own takes the
// others' last chunks. Below serial_threshold() elements of work there is no parallel region at all.
#pragma once

#include <algorithm>
#include <atomic>
#include <cfenv>
#include <new>
#include <utility>

#include "layout.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace memory_ops {

// Elements of work below which a kernel runs on the calling thread alone: waking a team costs
// more than it saves there. The default is chosen from measurements (benchmarks/threshold.py; see
// README, "Serial/parallel threshold"); the benchmark changes it through _core._set_serial_threshold.
inline constexpr index_t default_serial_threshold = index_t{1} << 16;
inline std::atomic<index_t>& serial_threshold() noexcept
{
    static std::atomic<index_t> threshold{default_serial_threshold};
    return threshold;
}

// Items per chunk boundary for element-wise kernels: a multiple of every SIMD batch width and one
// 512-byte stretch of float64 (8 cache lines).
inline constexpr index_t element_grain = 64;

// Fork safety. libgomp's thread pool does not survive fork(): in a child of a process that has run a
// parallel region, the next region waits forever for threads that no longer exist. So a child forked
// after the first parallel region runs every kernel serially (spawned children are unaffected).
// Set by the pthread_atfork child handler that bindings/module.cpp installs.
struct fork_state {
    std::atomic<bool> team_started{false};  // a parallel region has run in this process
    std::atomic<bool> serial_only{false};   // this process is a fork child of such a process
};
inline fork_state& fork_guard() noexcept
{
    static fork_state state;
    return state;
}
inline void on_fork_child() noexcept
{
    if (fork_guard().team_started.load()) fork_guard().serial_only.store(true);
}

// The IEEE exceptions an element-wise kernel raised on any of its threads, as these bits
// (parallel_for's result), for the bindings to report as NumPy's ufuncs do (np.errstate).
enum fp_exception : unsigned { fp_invalid = 1, fp_divide_by_zero = 2, fp_overflow = 4, fp_underflow = 8 };

namespace {  // (in each translation unit its own: they are built for different instruction sets)

#ifdef _OPENMP
// The threads for `work` elements split into at most `parts` pieces: 1 below serial_threshold() or
// in a fork child (see fork_state); otherwise as many as OpenMP allows, and the team is then noted
// as started.
inline int team_size(index_t work, index_t parts) noexcept
{
    if (work < serial_threshold().load(std::memory_order_relaxed) || fork_guard().serial_only.load(std::memory_order_relaxed))
        return 1;
    const int threads = static_cast<int>(std::min<index_t>(omp_get_max_threads(), parts));
    if (threads > 1) fork_guard().team_started.store(true, std::memory_order_relaxed);
    return threads;
}
#endif

// A chunk source (see parallel_for_balanced) that gives [0, n_items) once.
inline auto whole_range(index_t n_items) noexcept
{
    return [n_items, taken = false](index_t& begin, index_t& end) mutable noexcept {
        begin = 0;
        end = n_items;
        return !std::exchange(taken, true);
    };
}

#if defined(__SSE2__)
// The calling thread's MXCSR (SSE control and exception flags), read and written. The "memory"
// clobbers keep the compiler from moving memory accesses, and so the floating-point work on them,
// across either.
inline unsigned mxcsr_read() noexcept
{
    unsigned csr;
    asm volatile("stmxcsr %0" : "=m"(csr) : : "memory");
    return csr;
}
inline void mxcsr_write(unsigned csr) noexcept { asm volatile("ldmxcsr %0" : : "m"(csr) : "memory"); }
#endif

// The floating-point environment of an element-wise kernel call. Every thread computes its chunk in
// the calling thread's control: on x86 the whole MXCSR control (rounding mode, flush-to-zero,
// denormals-are-zero, exception masks), elsewhere the C fenv environment (glibc's aarch64 one holds
// the FPCR, flush-to-zero included). A result then rounds on every thread as NumPy's
// single-threaded loop rounds it in the calling thread; otherwise each team thread would keep the
// environment it was created with. The floating-point exceptions (invalid, divide by zero, overflow,
// underflow) raised on any thread are collected: raised().
//   run_here(f), on the calling thread: f with those four exception flags clear (on x86 they usually
// are, and the MXCSR is written only when they are not or when f raised one), and the thread's flags
// as they were afterwards (inexact and denormal-operand excepted: f may add those). (When the
// bindings then report exceptions, NumPy's ufunc that reports them clears the flags, as a NumPy
// operation would.)
//   run(f), on a team thread: f in the calling thread's control with the flags clear, and the
// thread's own environment back afterwards.
class kernel_fp_env {
    std::atomic<unsigned> raised_{0};

    void add(bool invalid, bool divide, bool overflow, bool underflow) noexcept
    {
        const unsigned e = (invalid ? fp_invalid : 0u) | (divide ? fp_divide_by_zero : 0u) |
                           (overflow ? fp_overflow : 0u) | (underflow ? fp_underflow : 0u);
        if (e != 0) raised_.fetch_or(e, std::memory_order_relaxed);
    }
#if defined(__SSE2__)
    static constexpr unsigned flags = 0x3f;       // the MXCSR's exception flags
    static constexpr unsigned exceptions = 0x1d;  // invalid 0x01, divide 0x04, overflow 0x08, underflow 0x10
    unsigned caller_;

    void add(unsigned csr) noexcept { add(csr & 0x01, csr & 0x04, csr & 0x08, csr & 0x10); }

public:
    kernel_fp_env() noexcept : caller_(mxcsr_read()) {}
    template <class F>
    void run_here(F&& f) noexcept
    {
        const unsigned stale = caller_ & exceptions;
        if (stale) mxcsr_write(caller_ & ~exceptions);
        f();
        const unsigned csr = mxcsr_read();
        add(csr);
        if (stale || (csr & exceptions)) mxcsr_write(caller_ | (csr & flags & ~exceptions));
    }
    template <class F>
    void run(F&& f) noexcept
    {
        const unsigned own = mxcsr_read();
        mxcsr_write(caller_ & ~flags);
        f();
        const unsigned csr = mxcsr_read();
        mxcsr_write(own);
        add(csr);
    }
#else
    std::fenv_t caller_;

    void add(int e) noexcept { add(e & FE_INVALID, e & FE_DIVBYZERO, e & FE_OVERFLOW, e & FE_UNDERFLOW); }

public:
    kernel_fp_env() noexcept { std::fegetenv(&caller_); }
    template <class F>
    void run_here(F&& f) noexcept
    {
        constexpr int exceptions = FE_INVALID | FE_DIVBYZERO | FE_OVERFLOW | FE_UNDERFLOW;
        std::feclearexcept(exceptions);
        asm volatile("" : : : "memory");
        f();
        asm volatile("" : : : "memory");
        add(std::fetestexcept(exceptions));
        std::fesetenv(&caller_);
    }
    template <class F>
    void run(F&& f) noexcept
    {
        std::fenv_t own;
        std::fegetenv(&own);
        std::fesetenv(&caller_);  // (on aarch64 glibc: FPCR, flush-to-zero included, and FPSR)
        std::feclearexcept(FE_ALL_EXCEPT);
        asm volatile("" : : : "memory");
        f();
        asm volatile("" : : : "memory");
        add(std::fetestexcept(FE_ALL_EXCEPT));
        std::fesetenv(&own);
    }
#endif
    unsigned raised() const noexcept { return raised_.load(std::memory_order_relaxed); }
};

}  // namespace

// Calls f(begin, end) on disjoint ranges covering [0, n_items), in parallel when the work (n_items *
// cost_per_item elements) reaches serial_threshold. Chunk boundaries are multiples of `grain`. Every
// thread runs f in the calling thread's floating-point control; returns the floating-point
// exceptions f raised on any thread (fp_exception bits; see kernel_fp_env). f must not throw.
template <class F>
unsigned parallel_for(index_t n_items, index_t grain, index_t cost_per_item, F&& f) noexcept
{
    if (n_items <= 0) return 0;
    kernel_fp_env fp;
#ifdef _OPENMP
    const index_t max_chunks = (n_items + grain - 1) / grain;
    const int threads = team_size(n_items * cost_per_item, max_chunks);
    if (threads > 1) {
        const index_t per_thread = (max_chunks + threads - 1) / threads * grain;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int t = 0; t < threads; ++t) {
            const index_t begin = t * per_thread;
            const index_t end = std::min(n_items, begin + per_thread);
            if (begin < end) {
                if (omp_get_thread_num() == 0) fp.run_here([&] { f(begin, end); });
                else fp.run([&] { f(begin, end); });
            }
        }
        return fp.raised();
    }
#else
    (void)grain;
    (void)cost_per_item;
#endif
    fp.run_here([&] { f(index_t{0}, n_items); });
    return fp.raised();
}

namespace {  // (in each translation unit its own, as above)

// One thread's share of parallel_for_balanced's items: [front, back), what is left of it. Its owner
// takes chunks from the front; a thread that has run out of its own takes them from the back. The
// lock is held for a few instructions, once a chunk.
class alignas(64) balanced_share {
    std::atomic<bool> busy_{false};
    index_t front_ = 0, back_ = 0;

    void lock() noexcept
    {
        while (busy_.exchange(true, std::memory_order_acquire))
            while (busy_.load(std::memory_order_relaxed)) {
            }
    }
    void unlock() noexcept { busy_.store(false, std::memory_order_release); }

    // What one take gets: a chunk, or half of what is left (rounded up) when that is less, so that the
    // last takes, which decide when the threads all finish, are short (safe_sum on 2 threads, 1M-5M
    // elements: x1.01-1.02 in A/B).
    index_t portion(index_t chunk) const noexcept { return std::min(chunk, (back_ - front_ + 1) / 2); }

public:
    void assign(index_t front, index_t back) noexcept { front_ = front, back_ = back; }
    bool take_front(index_t chunk, index_t& begin, index_t& end) noexcept
    {
        lock();
        begin = front_;
        end = front_ = front_ + portion(chunk);
        unlock();
        return begin < end;
    }
    bool take_back(index_t chunk, index_t& begin, index_t& end) noexcept
    {
        lock();
        end = back_;
        begin = back_ = back_ - portion(chunk);
        unlock();
        return begin < end;
    }
};

}  // namespace

// Like parallel_for, for work whose result does not depend on which thread does which items: each
// thread calls f(next) once, and next(begin, end) gives it its next chunk of up to max_chunk items
// (false when none is left), and f keeps its per-thread state from chunk to chunk. Each thread owns
// one contiguous share of the items, as parallel_for's static schedule gives it, and takes its chunks
// in order from the share's front; when its share is done it takes chunks from the back of the
// others'. So a thread the host slows down (a shared or noisy machine, a slower core) does less of
// the work instead of holding up the rest, and each thread still reads one stretch of memory, the
// same one from call to call. Against chunks dealt out in turn from one counter (which interleaves
// the threads' reads), safe_sum on 2 threads measured x0.97-1.07 (1M to 2^25 elements) in seven
// shuffled A/Bs on this machine, and in one taken while its memory was fast, x1.11 and x1.36 at 5M
// float32 and float64, x1.21 at 2^25 float32 (README, "Speed targets").
// Chunks are cut so that each thread has about 8 or more when there are enough items.
template <class F>
void parallel_for_balanced(index_t n_items, index_t max_chunk, index_t cost_per_item, F&& f) noexcept
{
    if (n_items <= 0) return;
#ifdef _OPENMP
    const int threads = team_size(n_items * cost_per_item, n_items);
    balanced_share* shares =
        threads > 1 ? new (std::nothrow) balanced_share[static_cast<std::size_t>(threads)] : nullptr;
    if (shares != nullptr) {
        const index_t chunk = std::max<index_t>(1, std::min(max_chunk, n_items / (8 * index_t{threads})));
        // Share t: [start(t), start(t + 1)), the first n_items % threads shares one item longer.
        const index_t each = n_items / threads, extra = n_items % threads;
        auto start = [&](index_t t) { return t * each + std::min(t, extra); };
        for (int t = 0; t < threads; ++t) shares[t].assign(start(t), start(t + 1));
        // (A team smaller than asked for leaves some shares without an owner: the others take them.)
#pragma omp parallel num_threads(threads)
        {
            const int me = omp_get_thread_num();
            int other = 1;  // the next share to take from, counted from this thread's own
            auto next = [&](index_t& begin, index_t& end) noexcept {
                if (shares[me].take_front(chunk, begin, end)) return true;
                for (; other < threads; ++other)
                    if (shares[(me + other) % threads].take_back(chunk, begin, end)) return true;
                return false;
            };
            f(next);
        }
        delete[] shares;
        return;
    }  // (one thread too when the shares cannot be allocated)
#else
    (void)max_chunk;
    (void)cost_per_item;
#endif
    auto all = whole_range(n_items);
    f(all);
}

}  // namespace memory_ops
