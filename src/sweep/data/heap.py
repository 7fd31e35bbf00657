"""Keep freed dense batches in the process heap, so a new batch does not page-fault its memory.

A dense batch is large (1024 cells x 3241 genes x 4 bytes = 13 MiB). glibc serves blocks that
large with a fresh ``mmap`` and gives them back to the kernel when freed (or trims them off the
heap), so every batch densified on the CPU first faults in ~3,300 zeroed pages: measured here,
2,150 minor faults and ~7 ms of a 1-worker loader's 13 ms per batch. Raising glibc's mmap and
trim thresholds above the batch size keeps the freed block in the heap for the next batch
(0 faults per batch; see docs/benchmarks.md). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit systems; larger batches keep their faults
MMAP_THRESHOLD_MAX = 32 << 20


def retain_freed_blocks(block_bytes: int) -> bool:
    """Let blocks up to ``block_bytes`` (capped at 32 MiB) come from, and return to, the heap.

    The heap may then hold up to 4 such blocks freed but not returned to the kernel. Returns
    whether glibc accepted the setting (False on other C libraries or when it refused).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    threshold = min(max(int(block_bytes), 1 << 20) + (1 << 20), MMAP_THRESHOLD_MAX)
    accepted = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(M_TRIM_THRESHOLD, 4 * threshold)
    )
    if not accepted:
        log.debug("mallopt refused a %d-byte mmap threshold", threshold)
    return accepted
