"""glibc's malloc set up for a server that allocates the same large blocks at every batch.

By default glibc gives a freed block above its mmap threshold (128 KiB, raised by each free up to
32 MiB) straight back to the kernel, trims the free top of its heap above a trim threshold, and
caps each thread's arena at 64 MiB heaps. A VGG16 pass allocates activations of 16 MiB (one 256²
image) to hundreds of MiB (batches), so the device thread mapped them afresh at every pass and
faulted them in page by page: 16,395 page faults per 256² `perceptual` request, 5% of its pass;
kept, batches of 128² and 512² images ran 19–28% faster (BENCHMARKS.md, "The service and the
lone request"). ``keep_freed_memory`` makes every thread allocate from one arena that keeps up
to ``RETAINED_BYTES`` of freed memory for the next batch, as PyTorch's CUDA allocator keeps freed
GPU memory. Torch-free: ``serve`` calls it before anything else runs.
"""

from __future__ import annotations

import ctypes
import os
import platform

RETAINED_BYTES = 1 << 30
# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# A user who set any of these chose the allocator's behaviour: it is left as they set it.
GLIBC_MALLOC_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _glibc() -> ctypes.CDLL | None:
    return ctypes.CDLL(None) if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else None


def user_chose_malloc_settings(environ=os.environ) -> bool:
    return any(name in environ for name in GLIBC_MALLOC_VARIABLES) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> str:
    """One arena that keeps up to ``RETAINED_BYTES`` freed; to be called before the process starts
    threads (an arena, once a thread has one, stays). Returns what was done, for the log."""
    libc = _glibc()
    if libc is None:
        return "malloc left as is (not glibc)"
    if user_chose_malloc_settings():
        return "glibc malloc left as the MALLOC_* / GLIBC_TUNABLES environment sets it"
    settings = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, RETAINED_BYTES), (M_TRIM_THRESHOLD, RETAINED_BYTES))
    refused = [option for option, value in settings if libc.mallopt(option, value) != 1]
    if refused:
        return f"glibc malloc: mallopt refused options {refused}, applied the others"
    return f"glibc malloc: one arena that keeps up to {RETAINED_BYTES >> 20} MiB of freed memory for reuse"


def retained_free_bytes() -> int:
    """Freed memory this process's allocator holds (glibc's ``mallinfo2().fordblks``): RAM that
    /proc/meminfo counts as used but a batch can reuse. 0 where it cannot be read."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):  # mallinfo2: glibc ≥ 2.33
        return 0
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().fordblks)
