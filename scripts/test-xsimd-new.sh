#!/usr/bin/env bash
# The package built against a current xsimd (>= 13) instead of Debian's 8.1, with warnings as
# errors, and the whole pytest suite run on that build. Arguments go to pytest.
# xsimd itself is not on PyPI; pythran's wheel vendors a copy of its headers
# (pythran 0.19.0: xsimd 14.1.0), so that is where they come from. The build happens in a copy of
# the committed tree in a temporary directory: this checkout's own build is left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
PYTHRAN=${PYTHRAN:-pythran==0.19.0}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps -d "$work/wheel" "$PYTHRAN"
"$PYTHON" -m zipfile -e "$work"/wheel/pythran-*.whl "$work/pythran"
headers="$work/pythran/pythran"
[ -f "$headers/xsimd/xsimd.hpp" ] || { echo "test-xsimd-new: no xsimd headers in $PYTHRAN" >&2; exit 1; }

# The CMake package file xsimd installs, reduced to what CMakeLists.txt takes from it.
mkdir -p "$work/cmake"
cat > "$work/cmake/xsimdConfig.cmake" <<EOF
add_library(xsimd INTERFACE IMPORTED)
set_target_properties(xsimd PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "$headers")
EOF

# (../shared beside the checkout holds the lesson the tests run the demo of.)
git archive --format=tar HEAD | (mkdir -p "$work/main" && tar -x -C "$work/main")
[ -d ../shared ] && ln -s "$(cd ../shared && pwd)" "$work/shared"
cd "$work/main"
CMAKE_ARGS="-Dxsimd_DIR=$work/cmake -DMEMORY_OPS_WERROR=ON" "$PYTHON" setup.py -q build_ext --inplace
"$PYTHON" - <<'PY'
import memory_ops
info = memory_ops.info()
major = int(info["xsimd"].split(".")[0])
assert major >= 13, f"built against xsimd {info['xsimd']}, not >= 13"
print(f"test-xsimd-new: memory_ops built against xsimd {info['xsimd']}, targets {info['simd_compiled']}")
PY
"$PYTHON" -m pytest -p no:cacheprovider "$@"
