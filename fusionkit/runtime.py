"""Process-level settings that make CPU inference and training faster.

:func:`tune_allocator` - glibc's ``malloc`` on Linux
    By default glibc serves allocations from 128 KiB up with fresh ``mmap`` pages (the threshold
    then adapts) and gives free memory at the top of the heap back to the OS as soon as 128 KiB
    are free. A CNN forward allocates and frees activations of several MiB per layer and batch,
    so a fresh process takes a page fault for every page of every activation, every batch:
    measured on this project's 2-core machine, EfficientNet-Lite0 at batch 4 on 800 images runs
    at ~110 images/s with ~155,000 minor page faults per pass, and at ~205 images/s with none once
    the allocator keeps its memory (``benchmarks/README.md``). Long-lived processes (a Jupyter
    kernel that has run for a while) often reach the fast state by accident; this makes it the
    rule. It sets ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's maximum; larger blocks are still
    mmapped) and ``M_TRIM_THRESHOLD`` to 1 GiB: freed memory stays in the process for reuse
    instead of being returned and faulted in again. The cost: up to that much free memory may
    stay resident after a peak (the peak itself does not grow).

    fusionkit calls it when it starts heavy work (feature extraction, training, robustness
    studies); it is process-wide, idempotent, and a no-op off glibc. ``FUSIONKIT_MALLOC_TUNING=0``
    turns it off. The same effect from outside: ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment, or preloading jemalloc / tcmalloc.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_state: dict[str, bool] = {}

__all__ = ["allocator_tuned", "tune_allocator"]


def tune_allocator() -> bool:
    """Apply the allocator settings above once per process; True when they are in effect."""
    if "tuned" in _state:
        return _state["tuned"]
    ok = False
    if os.environ.get("FUSIONKIT_MALLOC_TUNING", "1").strip().lower() not in ("0", "false", "no", "off"):
        ok = _mallopt()
    _state["tuned"] = ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has applied its settings in this process."""
    return _state.get("tuned", False)


def _mallopt() -> bool:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
