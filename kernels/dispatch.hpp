// Run-time choice of SIMD target: xsimd::dispatch over the compiled targets, with an optional cap
// (MEMORY_OPS_SIMD, or memory_ops._core._set_simd for tests) that forces a lower target.
//
// A cap is a position in compiled_targets (best first): the kernel runs on the best target at or
// after that position that this CPU supports. One xsimd dispatcher exists per cap position, each
// built once (CPU detection runs in its constructor).
#pragma once

#include <atomic>
#include <cstring>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "simd_targets.hpp"

namespace memory_ops {

inline constexpr int target_count =
    static_cast<int>(sizeof(compiled_target_names) / sizeof(compiled_target_names[0]));

namespace detail {

template <class S, class A, class = void>
struct has_has : std::false_type {};
template <class S, class A>
struct has_has<S, A, std::void_t<decltype(std::declval<const S&>().has(A{}))>> : std::true_type {};

// Newer xsimd answers with .has(arch); 8.x with the version rank its own dispatcher compares.
template <class Arch, class Available>
bool supports(const Available& available) noexcept
{
    if constexpr (has_has<Available, Arch>::value)
        return available.has(Arch{});
    else
        return Arch::version() <= available.best;
}

#if defined(__x86_64__) || defined(__i386__)
// The register state the operating system saves and so enables (XCR0), which xsimd 8 never reads:
// a CPU can report AVX or AVX-512 in CPUID while the OS or a hypervisor leaves those registers
// disabled, and any instruction on them then faults (SIGILL). Bits: 1 SSE, 2 upper halves of ymm,
// 5-7 AVX-512 (opmask, upper halves of zmm0-15, zmm16-31). Without OSXSAVE there is no XCR0 and
// no AVX state.
inline unsigned os_enabled_state() noexcept
{
    unsigned eax = 1, ebx, ecx = 0, edx;
    asm("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
    if (!(ecx & (1u << 27))) return 0;  // OSXSAVE
    unsigned lo, hi;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return lo;
}
#endif

// What a target needs beyond its xsimd architecture's CPUID bits. On x86 the avx2 and avx512
// targets are built with -mfma (the table in CMakeLists.txt), and no xsimd avx512 architecture
// checks for FMA3 (xsimd 8's rank order even reports fma3<avx2> under any avx512 CPU); every such
// CPU has FMA3, but a virtual machine may hide it. And the OS must have enabled the registers the
// target uses (os_enabled_state).
template <class Arch, class Available>
bool flags_supported(const Available& available) noexcept
{
#if defined(__x86_64__) || defined(__i386__)
    if constexpr (Arch::alignment() >= 32) {
        const unsigned needed = Arch::alignment() >= 64 ? 0xe6u : 0x06u;
        if ((os_enabled_state() & needed) != needed) return false;
        if constexpr (has_has<Available, xsimd::fma3<xsimd::avx2>>::value)
            return available.has(xsimd::fma3<xsimd::avx2>{});
        else
            return available.fma3_avx2;
    }
#endif
    (void)available;
    return true;
}

template <class Arch>
bool cpu_supports(Arch) noexcept
{
    const auto available = xsimd::available_architectures();
    return supports<Arch>(available) && flags_supported<Arch>(available);
}

template <class... Archs>
void fill_supported(xsimd::arch_list<Archs...>, bool* out) noexcept
{
    int i = 0;
    ((out[i++] = cpu_supports(Archs{})), ...);
}

}  // namespace detail

// Whether this CPU runs compiled target i (best first).
inline bool target_supported(int i) noexcept
{
    static const auto table = [] {
        struct {
            bool v[target_count];
        } t{};
        detail::fill_supported(compiled_targets{}, t.v);
        return t;
    }();
    return i >= 0 && i < target_count && table.v[i];
}

// The cap in force: 0 means "the best this CPU has".
inline std::atomic<int>& simd_cap() noexcept
{
    static std::atomic<int> cap{0};
    return cap;
}

// Position of a target by name, or -1.
inline int find_target(const char* name) noexcept
{
    for (int i = 0; i < target_count; ++i)
        if (std::strcmp(compiled_target_names[i], name) == 0) return i;
    return -1;
}

// The target the kernels run on under a cap.
inline int target_under(int cap) noexcept
{
    for (int i = cap; i < target_count; ++i)
        if (target_supported(i)) return i;
    return target_count - 1;  // the baseline target is always runnable
}

// The target the kernels run on under the current cap.
inline int active_target() noexcept { return target_under(simd_cap().load(std::memory_order_relaxed)); }

// Calls F{}(Arch{}, args...) for the target chosen under the cap. One xsimd dispatcher per suffix of
// the target list.
template <class F, class List>
class capped_dispatch;

template <class F, class A>
class capped_dispatch<F, xsimd::arch_list<A>> {
    decltype(xsimd::dispatch<xsimd::arch_list<A>>(std::declval<F>())) here_ =
        xsimd::dispatch<xsimd::arch_list<A>>(F{});

public:
    template <class... Args>
    decltype(auto) operator()(int, Args&&... args) noexcept
    {
        return here_(std::forward<Args>(args)...);
    }
};

template <class F, class A, class Next, class... Rest>
class capped_dispatch<F, xsimd::arch_list<A, Next, Rest...>> {
    decltype(xsimd::dispatch<xsimd::arch_list<A, Next, Rest...>>(std::declval<F>())) here_ =
        xsimd::dispatch<xsimd::arch_list<A, Next, Rest...>>(F{});
    capped_dispatch<F, xsimd::arch_list<Next, Rest...>> rest_;

public:
    template <class... Args>
    decltype(auto) operator()(int cap, Args&&... args) noexcept
    {
        if (cap > 0) return rest_(cap - 1, std::forward<Args>(args)...);
        return here_(std::forward<Args>(args)...);
    }
};

// Runs kernel F on the target chosen under the current cap. The dispatchers are built on first use.
// The dispatcher for the list starting at active_target() picks active_target() itself: xsimd's
// choice there agrees with target_supported(), which adds only the flags check.
template <class F, class... Args>
decltype(auto) run_kernel(Args&&... args) noexcept
{
    static capped_dispatch<F, compiled_targets> dispatcher;
    return dispatcher(active_target(), std::forward<Args>(args)...);
}

}  // namespace memory_ops
