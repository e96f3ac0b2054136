"""Keep freed memory for reuse: CPU training without a page fault for every activation.

glibc's malloc hands allocations above a threshold (128 KiB at start, raised as large
blocks are freed, at most 32 MiB) to ``mmap`` and returns them to the system when freed.
A training step on a CPU allocates and frees activations of tens of MiB, so each step
asks the kernel for fresh, zeroed pages again: measured on 2 cores, 4.5 million page
faults in 35 steps and a third of the throughput lost (``benchmarks/stream.py``).
Which side of the threshold a step falls on depended on what the process had freed
before, so images held in memory trained faster than the same images streamed.

:func:`reuse_freed_memory` raises both thresholds, so freed blocks stay in the process
for the next step, as PyTorch's own GPU allocator keeps them. It changes the whole
process, so only the command line calls it (``twinsight train``, ``tune``, ``demo``, and
every other command); a Python program opts in by calling it once at its start. It does
nothing off glibc (macOS, Windows, musl) or under another allocator (jemalloc, tcmalloc
through ``LD_PRELOAD``), which keep freed memory already.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks below this come from the heap and are reused; above it, mmap (1 GiB, then the
#: 32 MiB older glibc versions accept at most).
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
#: Freed memory kept at the heap's top before returning it to the system (mallopt's
#: value is a C int: about 2 GiB at most).
_TRIM_THRESHOLD = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse; True where it took effect.

    RSS then stays near its peak between training steps instead of falling and being
    faulted back in, and the peak grows by what is kept: measured streaming on 2 cores,
    1.53 GB with glibc's defaults, 1.92 GB with this (``BENCHMARKS.md``, Streaming).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    threshold = next((t for t in _MMAP_THRESHOLDS if mallopt(_M_MMAP_THRESHOLD, t) == 1), None)
    if threshold is None:
        return False
    trimmed = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    log.debug(
        "malloc keeps freed blocks below %d MiB (trim threshold %s)",
        threshold >> 20,
        "2 GiB" if trimmed else "glibc's",
    )
    return trimmed
