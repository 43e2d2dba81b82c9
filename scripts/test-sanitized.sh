#!/usr/bin/env bash
# The whole pytest suite against an AddressSanitizer + UndefinedBehaviorSanitizer build of the
# extension, then the normal build is restored. Arguments go to pytest.
# Python itself is not instrumented, so the ASan runtime is preloaded; leak reports are limited to
# leaks whose stack passes through memory_ops (Python's own arena allocations would drown them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
CXX_BIN=${CXX:-c++}

# setuptools builds an in-place extension in its build-lib directory and copies it (keeping its
# mtime) into memory_ops/. The sanitized build gets build directories of its own, so neither build
# mistakes the other's module for its up-to-date output; the restore copies the normal one back.
restore() { rm -f memory_ops/_core.*.so; "$PYTHON" setup.py -q build_ext --inplace >/dev/null; }
uses_asan() { ldd memory_ops/_core.*.so | grep -q libasan; }
trap restore EXIT

rm -f memory_ops/_core.*.so  # setuptools copies a module only over an older one
CMAKE_ARGS="-DMEMORY_OPS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-}" \
    "$PYTHON" setup.py -q build_ext --inplace --build-temp build/sanitize/temp --build-lib build/sanitize/lib
uses_asan || { echo "test-sanitized: memory_ops/_core is not the sanitized build" >&2; exit 1; }

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
status=$?
restore
trap - EXIT
uses_asan && { echo "test-sanitized: the normal build was not restored" >&2; exit 1; }
exit $status
