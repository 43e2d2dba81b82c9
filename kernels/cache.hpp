// The streaming-store policy's one number, stream_threshold() (used by kernels/ops_impl.hpp,
// stream_output). Pure C++; knows nothing of Python.
#pragma once

#include <atomic>

#include "layout.hpp"

namespace memory_ops {

// Size in bytes of the last-level data (or unified) cache of CPU 0, as Linux reports it in
// /sys/devices/system/cpu/cpu0/cache; sysconf(_SC_LEVEL3_CACHE_SIZE) where there is no sysfs; 32 MiB
// if neither answers. sysfs comes first because glibc's sysconf derives the size from CPUID, which a
// hypervisor may fill in freely: on the 2-vCPU AMD EPYC VM this was measured on, sysconf says 320 MiB
// for an L3 that sysfs and lscpu give as 32 MiB, and a 256 MiB output then never streamed.
// Defined in kernels/cache.cpp, compiled with the baseline flags (no SIMD target's).
index_t last_level_cache_bytes() noexcept;

// An element-wise op streams its output (non-temporal stores) when its operands together, inputs
// and output, span at least stream_threshold() bytes. The loop then pulls more through the cache than
// it holds, so the output's early lines are evicted before the call returns anyway, and every
// ordinary store would first read its line from memory (read-for-ownership): a third more traffic
// for add, half more for scale. Smaller ops take ordinary stores, and their output stays in cache
// for whatever reads it next. Defaults to last_level_cache_bytes(); tests and benchmarks change it
// through _core._set_stream_threshold. Chosen from benchmarks/streaming.py (README, "Streaming
// stores"): ordinary stores win below 0.75 LLC of operands, streaming from 1-1.25 LLC on.
// Defined in kernels/cache.cpp (baseline flags), not inline: its static's guarded initialisation
// would otherwise be emitted in every per-target translation unit, and the linker could keep the
// copy compiled for the widest target.
std::atomic<index_t>& stream_threshold() noexcept;

}  // namespace memory_ops
