"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_memory(collect: bool = True) -> bool:
    """Hand freed heap pages back to the system (glibc's malloc_trim; after collecting garbage,
    with ``collect``), so that what was freed stops counting in the process's resident memory.
    False where there is no malloc_trim."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
