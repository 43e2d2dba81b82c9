// Fresh outputs of 32 MiB and more come from a NumPy data-memory handler (NEP 49) of memory_ops',
// mapped on huge-page boundaries.
//
// Why: NumPy's default handler takes large buffers from malloc, i.e. from an mmap that starts
// anywhere in a 2 MiB huge page, and advises huge pages from the buffer's second 4 KiB page on. The
// huge pages straddling either end of the buffer are then never huge, and their up to 2 x 511 pages
// of 4 KiB fault one by one (measured here: 1.8 us a 4 KiB fault, 0.17 ms a whole 2 MiB one), on
// the threads whose slices hold the ends. Here the mapping starts on a huge page, is advised huge as
// a whole, and ends on one when rounding up wastes at most 1/16 of it, so every page of the output
// can fault as a huge page in the parallel kernel's first touch. Measured in one process against
// the same kernel writing into np.empty_like (README, "Fresh outputs on huge pages"): 1.08-1.19 times
// as fast, fresh scale_copy/add_arrays at 5M float64 and 2^25 elements.
//
// From 32 MiB only: glibc maps every block that large afresh anyway (its largest mmap threshold),
// while smaller freed blocks may be recycled by malloc with no page faults at all, which no fresh
// mapping beats. And only where NumPy itself advises huge pages (Linux, while
// numpy._core.multiarray._get_madvise_hugepage() is true).
//
// Only in place of NumPy's default handler (a handler the user set is left alone). The arrays are
// ordinary NumPy arrays (OWNDATA, no base, resizable); numpy._core.multiarray.get_handler_name()
// names their handler "memory_ops_hugepage". Handler calls come with the GIL held (NumPy allocates
// and frees array data under it); the table's mutex is for free-threaded builds.
#include "alloc.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace memory_ops::bind {

namespace {

// NumPy's handler structures, version 1 (numpy/ndarraytypes.h; NumPy's headers are not used: its C
// API is reached through the _ARRAY_API capsule, as pybind11 reaches it).
struct data_allocator {
    void* ctx;
    void* (*malloc)(void* ctx, std::size_t size);
    void* (*calloc)(void* ctx, std::size_t nelem, std::size_t elsize);
    void* (*realloc)(void* ctx, void* ptr, std::size_t new_size);
    void (*free)(void* ctx, void* ptr, std::size_t size);
};

struct data_handler {
    char name[127];
    std::uint8_t version;
    data_allocator allocator;
};

constexpr std::size_t min_bytes = std::size_t{1} << 25;  // glibc's largest mmap threshold (64-bit)

#if defined(__linux__) && defined(MADV_HUGEPAGE)

constexpr std::size_t small_page = 4096;
constexpr std::size_t huge_page = std::size_t{1} << 21;

constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// The live mappings: data pointer -> (bytes mapped, bytes asked for). A table rather than a header
// in the mapping, which would fault its first page on the allocating thread.
struct mapping {
    std::size_t mapped;
    std::size_t size;
};
// (Never destroyed: arrays may be freed during interpreter shutdown, after static destructors.)
std::mutex& table_mutex()
{
    static auto* m = new std::mutex;
    return *m;
}
std::unordered_map<void*, mapping>& table()
{
    static auto* t = new std::unordered_map<void*, mapping>;
    return *t;
}

void* map_huge(std::size_t size) noexcept
{
    if (size == 0) size = 1;
    if (size > (SIZE_MAX >> 2)) return nullptr;
    const std::size_t need = round_up(size, small_page);
    const std::size_t whole = round_up(need, huge_page);
    const std::size_t mapped = (whole - need) * 16 <= need ? whole : need;
    const std::size_t reserve = mapped + huge_page;  // room to start on a huge page
    void* p = mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    const auto start = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t base = round_up(start, huge_page);
    if (base > start) munmap(p, base - start);
    if (start + reserve > base + mapped) munmap(reinterpret_cast<void*>(base + mapped), start + reserve - (base + mapped));
    void* data = reinterpret_cast<void*>(base);
    madvise(data, mapped, MADV_HUGEPAGE);  // advice: where it fails, pages are small, nothing else
    bool listed = false;
    try {
        std::lock_guard<std::mutex> lock(table_mutex());
        listed = table().emplace(data, mapping{mapped, size}).second;
    } catch (...) {
    }
    if (!listed) {  // out of memory for the table (a duplicate address cannot happen: it is mapped)
        munmap(data, mapped);
        return nullptr;
    }
    return data;
}

// The mapping of `data` taken out of the table (mapped = 0 if unknown).
mapping unlist(void* data) noexcept
{
    std::lock_guard<std::mutex> lock(table_mutex());
    auto it = table().find(data);
    if (it == table().end()) return {0, 0};
    const mapping m = it->second;
    table().erase(it);
    return m;
}

void* huge_malloc(void*, std::size_t size) noexcept { return map_huge(size); }

void* huge_calloc(void*, std::size_t nelem, std::size_t elsize) noexcept
{
    if (elsize != 0 && nelem > SIZE_MAX / elsize) return nullptr;
    return map_huge(nelem * elsize);  // fresh anonymous pages are zero
}

void huge_free(void*, void* ptr, std::size_t) noexcept
{
    if (ptr == nullptr) return;
    const mapping m = unlist(ptr);
    if (m.mapped != 0) munmap(ptr, m.mapped);
}

// (A new mapping and a copy: in-place resizes of big outputs are rare; glibc would mremap.)
void* huge_realloc(void*, void* ptr, std::size_t new_size) noexcept
{
    if (ptr == nullptr) return map_huge(new_size);
    mapping old;
    {
        std::lock_guard<std::mutex> lock(table_mutex());
        auto it = table().find(ptr);
        if (it == table().end()) return nullptr;  // not ours: fail (MemoryError), touching nothing
        old = it->second;
    }
    void* fresh = map_huge(new_size);
    if (fresh == nullptr) return nullptr;  // the old block stays valid, as realloc leaves it
    std::memcpy(fresh, ptr, old.size < new_size ? old.size : new_size);
    unlist(ptr);
    munmap(ptr, old.mapped);
    return fresh;
}

static_assert(offsetof(data_handler, allocator) == 128 && sizeof(data_handler) == 128 + 5 * sizeof(void*),
              "data_handler must match NumPy's PyDataMem_Handler");

data_handler huge_handler = {"memory_ops_hugepage", 1, {nullptr, huge_malloc, huge_calloc, huge_realloc, huge_free}};

// What memory_ops needs of NumPy's handler API (slots 304-306 of its C API table, NumPy >= 1.22),
// found at import (init_allocator). Leaked, as pybind11 leaks its own NumPy API table.
using set_handler_t = PyObject* (*)(PyObject*);
using get_handler_t = PyObject* (*)();
struct numpy_handlers {
    set_handler_t set_handler = nullptr;  // PyDataMem_SetHandler: returns the previous handler
    get_handler_t get_handler = nullptr;  // PyDataMem_GetHandler: the current one
    PyObject* numpys = nullptr;           // PyDataMem_DefaultHandler
    py::object ours;                      // the capsule of huge_handler
    py::object get_madvise;               // numpy._core.multiarray._get_madvise_hugepage, or None
};
numpy_handlers* numpy_api = nullptr;  // null: the handler is not used

// Sets NumPy's current handler for the scope's lifetime.
class handler_scope {
public:
    handler_scope(set_handler_t set, PyObject* handler) : set_(set), previous_(set(handler))
    {
        if (previous_ == nullptr) throw py::error_already_set();
    }
    ~handler_scope()
    {
        PyObject* ours = set_(previous_);
        Py_DECREF(previous_);
        if (ours != nullptr) Py_DECREF(ours);
        else PyErr_Clear();  // (cannot fail for a valid capsule; nothing to report it to here)
    }
    handler_scope(const handler_scope&) = delete;
    handler_scope& operator=(const handler_scope&) = delete;

private:
    set_handler_t set_;
    PyObject* previous_;
};

#endif

}  // namespace

void init_allocator()
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    try {
        py::module_ multiarray = py::module_::import("numpy._core.multiarray");
        void** api = static_cast<void**>(PyCapsule_GetPointer(multiarray.attr("_ARRAY_API").ptr(), nullptr));
        if (api == nullptr) throw py::error_already_set();
        auto* h = new numpy_handlers;
        h->set_handler = reinterpret_cast<set_handler_t>(api[304]);
        h->get_handler = reinterpret_cast<get_handler_t>(api[305]);
        h->numpys = *static_cast<PyObject**>(api[306]);
        h->ours = py::reinterpret_steal<py::object>(PyCapsule_New(&huge_handler, "mem_handler", nullptr));
        if (!h->ours) throw py::error_already_set();
        h->get_madvise = py::getattr(multiarray, "_get_madvise_hugepage", py::none());
        numpy_api = h;
    } catch (const py::error_already_set&) {
        // Only a speed-up is lost: fresh outputs then come from NumPy's handler like any other.
    }
#endif
}

py::array new_array(const py::dtype& dtype, const std::vector<py::ssize_t>& shape)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    std::size_t bytes = static_cast<std::size_t>(dtype.itemsize());
    for (py::ssize_t n : shape) bytes *= static_cast<std::size_t>(n);
    numpy_handlers* h = numpy_api;
    if (bytes >= min_bytes && h != nullptr && (h->get_madvise.is_none() || h->get_madvise().cast<bool>())) {
        // Only in place of NumPy's default handler: a handler the user set (tracing, pinned memory)
        // is left to do its work.
        const auto current = py::reinterpret_steal<py::object>(h->get_handler());
        if (!current) throw py::error_already_set();
        if (current.ptr() == h->numpys) {
            // The handler is NumPy's context variable: ours for this one allocation, then restored.
            handler_scope scope(h->set_handler, h->ours.ptr());
            py::array out(dtype, shape);
            return out;
        }
    }
#endif
    return py::array(dtype, shape);
}

}  // namespace memory_ops::bind
