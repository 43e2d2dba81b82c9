#!/usr/bin/env bash
# The whole pytest suite against an AddressSanitizer + UndefinedBehaviorSanitizer build of the
# extension, then the normal build is restored. Arguments go to pytest.
# Python itself is not instrumented, so the ASan runtime is preloaded; leak reports are limited to
# leaks whose stack passes through memory_ops (Python's own arena allocations would drown them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
CXX_BIN=${CXX:-c++}

# Both builds write memory_ops/_core*.so; the normal build's make would see it up to date, so the
# sanitized module is removed first and the normal one relinked.
restore() { rm -f memory_ops/_core.*.so; "$PYTHON" setup.py -q build_ext --inplace >/dev/null; }
trap restore EXIT

CMAKE_ARGS="-DMEMORY_OPS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-}" \
    "$PYTHON" setup.py -q build_ext --inplace --build-temp build/sanitize

# The interpreter itself, not a wrapper script (pyenv shims are bash, which must not get the preload).
python_exe=$("$PYTHON" -c 'import sys; print(sys.executable)')
asan=$("$CXX_BIN" -print-file-name=libasan.so)
ubsan=$("$CXX_BIN" -print-file-name=libubsan.so)
supp=$(mktemp)
# Report only leaks allocated on a path through the extension.
printf 'leak:libpython\nleak:_multiarray_umath\nleak:python3\nleak:libcrypto\n' >"$supp"

LD_PRELOAD="$asan $ubsan" \
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_odr_violation=0" \
LSAN_OPTIONS="suppressions=$supp:print_suppressions=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
MEMORY_OPS_SANITIZED=1 \
    "$python_exe" -m pytest -p no:cacheprovider "$@"
