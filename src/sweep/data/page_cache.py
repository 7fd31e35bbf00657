"""The page cache under a store: what of a file is in it, and reading byte ranges into it.

The loader's read-ahead (:class:`sweep.data.fetch.ReadAhead`) reads a reader's next blocks
through :class:`PageCacheReader`; ``loader.num_workers=null`` asks :func:`cached_share` how
much of a store is cached (sweep.data.datamodule.auto_num_workers). Linux's ``mincore`` answers
both without reading a byte; where the system cannot say, they say so (None).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np


class PageCacheReader:
    """Reads byte ranges of files into the page cache, for a gather that maps them.

    :data:`READ_BYTES` at a time, each piece first looked up in the page cache (``mincore``
    over a map of the file, which reads nothing) and left alone when all of it is there, so a
    cached store costs next to nothing. ``copy``: ``pread`` into a scratch buffer, ~0.2 s
    of a core per GB; else ``sendfile`` to ``/dev/null``, which copies nothing into the process
    (~0.05 s of a core per GB; ``pread`` where the system refuses it: macOS, a file system
    without splice). Which one a reader uses, and why, is measured in docs/benchmarks.md
    ("cold epochs at the pace of warm ones").
    """

    #: bytes per read
    READ_BYTES = 8 << 20

    def __init__(self, copy: bool = True):
        self.copy = copy
        self.buffer = bytearray(self.READ_BYTES)
        self.sink: int | None = None  # /dev/null, open for writing, once sendfile is used

    def read(self, path: Path, ranges: list[tuple[int, int]]) -> None:
        """Read byte ``ranges`` ((offset, length), see :meth:`Shard.byte_ranges`) of ``path``
        into the page cache; stops at the end of the file (the gather raises that error)."""
        mapped = np.memmap(path, dtype=np.uint8, mode="r")  # never read: asks what is cached
        fd = os.open(path, os.O_RDONLY)
        try:
            for first, length in ranges:
                for offset in range(first, first + length, self.READ_BYTES):
                    n = min(self.READ_BYTES, first + length - offset)
                    cached = resident_pages(mapped, offset, n)
                    if (cached is None or not cached.all()) and self._read(fd, offset, n) < n:
                        return
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.sink is not None:
            os.close(self.sink)
            self.sink = None

    def _read(self, fd: int, offset: int, length: int) -> int:
        """Read ``length`` bytes at ``offset`` into the page cache; the bytes read (fewer: the
        end of the file)."""
        if not self.copy:
            try:
                if self.sink is None:
                    self.sink = os.open(os.devnull, os.O_WRONLY)
                done = 0
                while (
                    done < length
                    and (n := os.sendfile(self.sink, fd, offset + done, length - done)) > 0
                ):
                    done += n
                return done
            except OSError:  # refused here (ENOTSOCK, EINVAL): copy from now on
                self.copy = True
        return os.preadv(fd, [memoryview(self.buffer)[:length]], offset)


def resident_pages(mapped: np.memmap, offset: int, length: int) -> np.ndarray | None:
    """Which 4 KiB pages of ``length`` bytes at ``offset`` of the whole-file map ``mapped`` are
    in the page cache (``mincore``: one byte per page, bit 0), or None where the system cannot
    say."""
    first = offset - offset % mmap.PAGESIZE
    pages = np.zeros(-(-(offset + length - first) // mmap.PAGESIZE), dtype=np.uint8)
    try:
        mincore = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    address = mapped.ctypes.data + first
    if mincore(address, offset + length - first, pages.ctypes.data) != 0:
        return None
    return pages & 1


def cached_share(paths: list[Path]) -> float | None:
    """Share of the bytes of files ``paths`` in the page cache now (``mincore`` over a map of
    each, 1 byte per 4 KiB page; 0.0 for no bytes), or None where the system cannot say."""
    cached = total = 0
    for path in paths:
        size = os.stat(path).st_size
        if size == 0:
            continue
        pages = resident_pages(np.memmap(path, dtype=np.uint8, mode="r"), 0, size)
        if pages is None:
            return None
        cached += int(np.count_nonzero(pages))
        total += len(pages)
    return cached / total if total else 0.0
