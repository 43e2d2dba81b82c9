from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from ._core import (
    add_arrays as add_arrays,
    get_num_threads as get_num_threads,
    safe_sum as safe_sum,
    scale_copy as scale_copy,
    scale_inplace as scale_inplace,
    set_num_threads as set_num_threads,
    simd_arch as simd_arch,
)

__version__: str
__all__: list[str]

def threads(n: int) -> AbstractContextManager[int]: ...
def info() -> dict[str, Any]: ...
