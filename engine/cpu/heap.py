"""glibc heap settings for MLX's CPU backend: freed buffers kept for reuse, and memory paged in ahead."""

from __future__ import annotations

import functools
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_MAX = 32 << 20  # the largest glibc accepts on 64-bit
TRIM_THRESHOLD = 1 << 30
# Pieces of memory paged in by page_in_heap: below the mmap threshold, so glibc keeps them when freed.
PAGE_IN_PIECE = 16 << 20


@functools.cache
def _glibc():
    """glibc's C library on Linux, with malloc's and free's signatures; None elsewhere (macOS, musl:
    no mallopt)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def keep_freed_memory() -> None:
    """Let glibc keep freed buffers up to 32 MB for reuse instead of handing them back to the kernel,
    in one heap for all threads. Call it before other threads start.

    MLX frees its buffer cache between prefill chunks (mlx-lm calls `mx.clear_cache()`), so every
    chunk and every batch of KV caches would otherwise touch fresh pages, and in a VM page faults make
    fresh memory many times slower to write than reused memory. One heap (glibc's main
    arena) because glibc gives each thread its own otherwise, and unmaps a thread's heaps once they are
    empty: memory one thread freed (or page_in_heap paged in) would not serve an allocation on another,
    such as the stream threads MLX evaluates on. Only glibc (Linux) has mallopt; elsewhere this does
    nothing.
    """
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(M_ARENA_MAX, 1)
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def page_in_heap(num_bytes: int) -> None:
    """Touch `num_bytes` of heap memory and free it again, so that allocations after this reuse pages
    the process already has.

    A restored KV cache is hundreds of MB of new float32 arrays; in a fresh process their first touch
    costs a page fault per page, more CPU time than reading them from disk. With keep_freed_memory's
    settings the freed pieces stay mapped for the next ones. Only glibc; elsewhere this does nothing.
    """
    libc = _glibc()
    if libc is None or num_bytes <= 0:
        return
    import ctypes

    pieces = []
    try:
        for _ in range(-(-num_bytes // PAGE_IN_PIECE)):
            address = libc.malloc(PAGE_IN_PIECE)
            if not address:
                break  # out of memory: page in what fits
            ctypes.memset(address, 0, PAGE_IN_PIECE)
            pieces.append(address)
    finally:
        for address in pieces:
            libc.free(address)
