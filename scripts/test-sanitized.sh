#!/usr/bin/env bash
# The whole pytest suite against an AddressSanitizer + UndefinedBehaviorSanitizer build of the
# extension, then the normal build is restored. Arguments go to pytest.
# Python itself is not instrumented, so the ASan runtime is preloaded; leak reports count only when
# their allocation stack passes through memory_ops (Python's own would drown them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
CXX_BIN=${CXX:-c++}

# setuptools builds an in-place extension in its build-lib directory and copies it (keeping its
# mtime) into memory_ops/. The sanitized build gets build directories of its own, so neither build
# mistakes the other's module for its up-to-date output; the restore copies the normal one back.
restore() { rm -f memory_ops/_core.*.so; "$PYTHON" setup.py -q build_ext --inplace >/dev/null; }
# Not `ldd | grep -q`: under pipefail, grep -q exiting at the first match can kill ldd with SIGPIPE
# and turn a match into a failure (CI at fc1e541 failed so with the sanitized module in place).
uses_asan() { local libs; libs=$(ldd memory_ops/_core.*.so) && [[ $libs == *libasan* ]]; }
trap restore EXIT

rm -f memory_ops/_core.*.so  # setuptools copies a module only over an older one
CMAKE_ARGS="-DMEMORY_OPS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-}" \
    "$PYTHON" setup.py -q build_ext --inplace --build-temp build/sanitize/temp --build-lib build/sanitize/lib
uses_asan || { echo "test-sanitized: memory_ops/_core is not the sanitized build" >&2; exit 1; }

# The interpreter itself, not a wrapper script (pyenv shims are bash, which must not get the preload).
python_exe=$("$PYTHON" -c 'import sys; print(sys.executable)')
asan=$("$CXX_BIN" -print-file-name=libasan.so)
ubsan=$("$CXX_BIN" -print-file-name=libubsan.so)
reports=$(mktemp -d)
# LeakSanitizer cannot be told "only leaks allocated by memory_ops" (a suppression matches any frame,
# and every stack passes through libpython), so all reports go to files and only leaks whose
# allocation stack passes through the extension fail the run; CPython and NumPy keep allocations
# alive at exit by design.
set +e
LD_PRELOAD="$asan $ubsan" \
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_odr_violation=0:log_path=$reports/asan" \
LSAN_OPTIONS="exitcode=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
MEMORY_OPS_SANITIZED=1 \
    "$python_exe" -m pytest -p no:cacheprovider "$@"
status=$?
set -e
"$python_exe" - "$reports" <<'PY' || status=1
import pathlib, re, sys
bad = []
for report in sorted(pathlib.Path(sys.argv[1]).glob("asan*")):
    text = report.read_text(errors="replace")
    if "ERROR: AddressSanitizer" in text or "runtime error:" in text:
        bad.append(text)  # a memory error or UB report: always fatal
    for block in re.split(r"\n(?=(?:Direct|Indirect) leak)", text):
        # symbolized frames name the function (memory_ops::...), unsymbolized ones the module
        if block.startswith(("Direct leak", "Indirect leak")) and re.search(r"memory_ops::|_core\.cpython", block):
            bad.append(block)
for text in bad:
    print(text, file=sys.stderr)
print(f"test-sanitized: {len(bad)} report(s) involving memory_ops", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
restore
trap - EXIT
uses_asan && { echo "test-sanitized: the normal build was not restored" >&2; exit 1; }
exit $status
