"""The page cache and a store's files, for the benchmarks' warm and cold measurements.

A store is made cold by evicting its own files (``posix_fadvise`` DONTNEED after an fsync: no
root needed, nothing else on the machine disturbed) and checked cold with ``mincore``; this
is what ``echo 3 > /proc/sys/vm/drop_caches`` does to them, minus the rest of the cache. A
virtual disk may still be cached by its host: the sequential read measured beside each cold
epoch (:func:`sequential_read`) is the disk the epoch actually met.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

#: the most of a store's bytes that may stay cached for it to count as cold
COLD_RESIDENT_MAX = 0.05
#: bytes per read of :func:`sequential_read`
READ_BYTES = 8 << 20


def store_files(store: Path) -> list[Path]:
    return sorted(path for path in store.iterdir() if path.is_file())


def resident_fraction(store: Path) -> float:
    """Share of the store's file bytes now in the page cache (``mincore`` over a shared map)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    resident = total = 0
    for path in store_files(store):
        size = path.stat().st_size
        if size == 0:
            continue
        with open(path, "rb") as f:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        pages = ctypes.create_string_buffer((size + page - 1) // page)
        try:
            if libc.mincore(address, size, pages) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
        finally:
            libc.munmap(address, size)
        resident += sum(b & 1 for b in pages.raw) * page
        total += len(pages.raw) * page
    return resident / max(total, 1)


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
