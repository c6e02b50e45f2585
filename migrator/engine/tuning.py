"""Process settings for a bulk copy, applied once before the engine starts (runner._execute).

Measured on the 5,000-message benchmark (benchmarks/README.md, fourth round), a copy
spends its CPU in two places no code path owns:
  - page faults: glibc hands a message of a few MB back to the kernel when it is freed
    (mmap/munmap, or trimming the top of a thread's heap), so the next one faults its
    pages in again: about 60,000 faults for 252 MB. Keeping up to two batches of freed
    memory for reuse: 42,000 faults, and migrator's CPU 1.00 -> 0.84 s (interleaved A/B,
    seven pairs, with the collector settings below);
  - the garbage collector: every 700 allocations it walks the young objects, and now and
    then the tens of thousands the imports made (about 20 ms a run).
Memory stays bounded by batch size: a heap keeps at most two batches of free memory.
"""

from __future__ import annotations

import gc

_M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's own ceiling for a dynamic threshold on 64-bit


_frozen = False


def for_bulk_copy(batch_bytes: int) -> None:
    global _frozen
    if not _frozen:  # once: a batch runs many copies, and what a later freeze caught would stay
        # What the imports created lives as long as the process: out of the collector's sight.
        gc.freeze()
        _frozen = True
    # Young objects are collected every 20,000 allocations instead of 700; the copy makes no
    # long chains of cyclic garbage, so memory does not grow with it.
    gc.set_threshold(20_000, 10, 10)
    _reuse_freed_memory(batch_bytes)


def _reuse_freed_memory(batch_bytes: int) -> None:
    """Bodies up to one batch come from the heap and go back to it, not to the kernel; a
    heap keeps up to two batches of free memory on top before giving it back."""
    mmap_threshold = min(max(batch_bytes, 1 << 20), _MMAP_THRESHOLD_MAX)
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError, ImportError, TypeError):  # not glibc, or no ctypes: defaults stay
        return
    mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)
