"""The page cache and a store's files, for the benchmarks' warm and cold measurements.

A store is made cold by evicting its own files (``posix_fadvise`` DONTNEED after an fsync: no
root needed, nothing else on the machine disturbed) and checked cold with ``mincore``; this
is what ``echo 1 > /proc/sys/vm/drop_caches`` does to them, minus the rest of the cache
(:func:`drop` does that as root). A virtual disk may still be cached by its host: the
sequential read measured beside each cold epoch (:func:`sequential_read`) is the disk the
epoch actually met.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: the most of a store's bytes that may stay cached for it to count as cold
COLD_RESIDENT_MAX = 0.05
#: bytes per read of :func:`sequential_read`
READ_BYTES = 8 << 20
#: the kernel's switch that drops the page cache (root only)
DROP_CACHES = "/proc/sys/vm/drop_caches"


def store_files(store: Path) -> list[Path]:
    return sorted(path for path in store.iterdir() if path.is_file())


def resident_fraction(store: Path) -> float:
    """Share of the store's file bytes now in the page cache (``mincore``)."""
    from sweep.data.page_cache import cached_share  # here: an older checkout lacks it

    share = cached_share(store_files(store))
    if share is None:
        raise OSError(f"the system cannot say what of {store} is in the page cache (mincore)")
    return share


def evict(store: Path) -> str | None:
    """Evict the store's files (only them) from the page cache; None when at most
    :data:`COLD_RESIDENT_MAX` of their bytes stay cached, else why the store cannot be cold."""
    if not hasattr(os, "posix_fadvise"):
        return "no posix_fadvise on this system"
    for path in store_files(store):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be evicted
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    left = resident_fraction(store)
    if left > COLD_RESIDENT_MAX:
        return f"{left:.0%} of the store stayed in the page cache after eviction (tmpfs?)"
    return None


def drop(store: Path) -> str | None:
    """Make ``store`` cold: as root, drop the whole page cache (``sync``, then
    ``/proc/sys/vm/drop_caches``: what a store far larger than memory meets), else evict its
    files (:func:`evict`). None when at most :data:`COLD_RESIDENT_MAX` of it stays cached,
    else why it cannot be cold."""
    if os.geteuid() == 0 and os.path.exists(DROP_CACHES):
        os.sync()
        with open(DROP_CACHES, "w") as control:
            control.write("1\n")  # the page cache only (dentries and inodes stay)
        left = resident_fraction(store)
        if left <= COLD_RESIDENT_MAX:
            return None
    return evict(store)


def sequential_read(store: Path) -> dict:
    """Every file of ``store`` read once, in order, :data:`READ_BYTES` at a time, on one core:
    its pages end up cached. {"bytes", "seconds", "mb_per_s"}."""
    buffer = bytearray(READ_BYTES)
    total, start = 0, time.perf_counter()
    for path in store_files(store):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    seconds = time.perf_counter() - start
    return {"bytes": total, "seconds": seconds, "mb_per_s": total / seconds / 1e6}


def warm_up(store: Path) -> None:
    """Read every file of the store once, so that its pages are cached."""
    sequential_read(store)
