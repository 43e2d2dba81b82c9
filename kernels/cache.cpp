#include "cache.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace memory_ops {

namespace {

// The first line of a small sysfs file, without its newline ("" if unreadable).
std::string read_line(const std::string& path)
{
    char buf[64] = "";
    if (std::FILE* f = std::fopen(path.c_str(), "r")) {
        if (!std::fgets(buf, sizeof buf, f)) buf[0] = '\0';
        std::fclose(f);
    }
    std::string line = buf;
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    return line;
}

// "32768K", "32M", "1024" -> bytes; 0 if malformed.
index_t parse_size(const std::string& s)
{
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (end == s.c_str() || v <= 0 || v >= (1LL << 32)) return 0;  // (a 4 TiB cache is not a cache size)
    const std::string unit(end);
    if (unit.empty()) return static_cast<index_t>(v);
    if (unit == "K") return static_cast<index_t>(v) << 10;
    if (unit == "M") return static_cast<index_t>(v) << 20;
    if (unit == "G") return static_cast<index_t>(v) << 30;
    return 0;
}

}  // namespace

index_t last_level_cache_bytes() noexcept
{
    try {
        int best_level = 0;
        index_t best_size = 0;
        for (int i = 0; i < 16; ++i) {
            const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
            const std::string type = read_line(dir + "type");
            if (type.empty()) break;
            if (type != "Data" && type != "Unified") continue;
            const int level = std::atoi(read_line(dir + "level").c_str());
            const index_t size = parse_size(read_line(dir + "size"));
            if (size > 0 && level > best_level) best_level = level, best_size = size;
        }
        if (best_size > 0) return best_size;
    } catch (...) {  // std::bad_alloc from a string: fall through to the other sources
    }
    long llc = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
    llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return llc > 0 ? static_cast<index_t>(llc) : index_t{32} << 20;
}

std::atomic<index_t>& stream_threshold() noexcept
{
    static std::atomic<index_t> threshold{last_level_cache_bytes()};
    return threshold;
}

}  // namespace memory_ops
