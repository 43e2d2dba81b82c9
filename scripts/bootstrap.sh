#!/usr/bin/env bash
# All set-up on a fresh machine, idempotent: xsimd headers (Debian's libxsimd-dev when missing),
# the Python packages in requirements/dev.txt, and the in-place build of memory_ops._core.
# Uses $PYTHON (default python3). Run from anywhere; it works in the repository it lives in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

have_xsimd() {
    [ -f /usr/include/xsimd/xsimd.hpp ] || [ -f /usr/local/include/xsimd/xsimd.hpp ] ||
        [ -n "${xsimd_DIR:-}" ] || [[ "${CMAKE_ARGS:-}" == *xsimd_DIR* ]]
}

if ! have_xsimd; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing xsimd headers (Debian package libxsimd-dev)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libxsimd-dev >/dev/null
    else
        echo "bootstrap: xsimd headers not found and apt-get is not usable here (needs root)." >&2
        echo "  Install xsimd >= 8 (Debian/Ubuntu: sudo apt-get install libxsimd-dev), or pass" >&2
        echo "  CMAKE_ARGS=-Dxsimd_DIR=<dir containing xsimdConfig.cmake>." >&2
        exit 1
    fi
fi

"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements/dev.txt
"$PYTHON" setup.py -q build_ext --inplace
"$PYTHON" -c "import memory_ops; print('bootstrap: memory_ops', memory_ops.__version__, 'on', memory_ops.simd_arch())"
