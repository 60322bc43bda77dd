"""Copy-on-write images of host RAM buffers, for snapshots (decision 0011).

A :class:`RamImage` holds a :class:`~smmemu.memory.HostBuffer`'s contents in a
``memfd`` (only the pages that hold data are written; the rest of the file is a
hole). Taking an image maps the memfd ``MAP_PRIVATE | MAP_FIXED`` over the
buffer's own host address, so every engine keeps its pointers and the kernel's
copy-on-write tracks what changes afterwards: a page written since is a private
(anonymous) page, every other page is the file's.

``/proc/self/pagemap`` tells those pages apart. ``PAGEMAP_SCAN`` (Linux 6.7)
returns them as ranges in one ``ioctl``; older kernels fall back to reading
one pagemap entry per page, which is correct but slow.

Restoring compares the written pages with the image (through a read-only
shared mapping of the memfd) and copies back those that changed; when many
pages are mapped it maps the image again instead, which drops them all.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from smmemu.errors import SnapshotError
from smmemu.memory import HostBuffer

__all__ = ["PAGE", "REMAP_PAGES", "RamImage", "Residency", "revert", "take"]

PAGE = mmap.PAGESIZE
_ZERO = bytes(PAGE)
_MAP_FIXED = 0x10
_PAGEMAP_SCAN = 0xC060_6610  # _IOWR('f', 16, struct pm_scan_arg)
_IS_FILE, _IS_PRESENT, _IS_SWAPPED, _IS_PFNZERO = 1 << 2, 1 << 3, 1 << 4, 1 << 5
_PM_PRESENT, _PM_SWAPPED, _PM_FILE = 1 << 63, 1 << 62, 1 << 61
_VEC = 256
_GRAIN = 64
"""Changed-byte ranges are found to this many bytes (translated code rarely shares them)."""
REMAP_PAGES = 128
"""Above this many pages mapped, a restore maps the image again (dropping the page tables)."""

Runs = tuple[tuple[int, int], ...]
"""``(start, end)`` byte offsets into a buffer, sorted and disjoint (pages, or changed bytes)."""


class _ScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


class _Region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.ioctl.restype = ctypes.c_long
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


@dataclass(frozen=True, slots=True)
class Residency:
    """What a mapping holds now, as page-aligned offsets into it."""

    mapped: int
    """Pages with a page-table entry (the zero page included): what a scan walks."""
    data: Runs
    """Pages holding data: present or swapped out, the shared zero page excluded."""
    written: Runs
    """Data pages that are not the file's: copied on write since the mapping was made."""


class _PageScanner:
    """Reads page tables; one ``/proc/self/pagemap`` descriptor per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._ioctl = True
        self._vec = (_Region * _VEC)()

    def residency(self, address: int, size: int) -> Residency:
        """The pages of [address, address + size) by kind."""
        with self._lock:
            if self._pid != os.getpid():  # opened by the parent before a fork
                if self._fd >= 0:
                    os.close(self._fd)
                self._fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
                self._pid = os.getpid()
            regions = None
            if self._ioctl:
                try:
                    regions = self._scan(address, size)
                except OSError as err:
                    if err.errno not in (errno.ENOTTY, errno.EINVAL):
                        raise
                    self._ioctl = False
            if regions is None:
                regions = self._read(address, size)
        mapped = sum(end - start for start, end, _ in regions) // PAGE
        return Residency(mapped, _join(r for r in regions if not r[2] & _IS_PFNZERO),
                         _join(r for r in regions if r[2] == _IS_PRESENT))

    def _scan(self, address: int, size: int) -> list[tuple[int, int, int]]:
        """(start, end, kind) regions; kind is _IS_PRESENT plus _IS_FILE or _IS_PFNZERO."""
        anyof = _IS_PRESENT | _IS_SWAPPED
        arg = _ScanArg(ctypes.sizeof(_ScanArg), 0, address, address + size, 0,
                       ctypes.addressof(self._vec), _VEC, 0, 0, 0, anyof,
                       anyof | _IS_FILE | _IS_PFNZERO)
        out: list[tuple[int, int, int]] = []
        while True:
            count = _libc.ioctl(self._fd, _PAGEMAP_SCAN, ctypes.byref(arg))
            if count < 0:
                code = ctypes.get_errno()
                raise OSError(code, f"PAGEMAP_SCAN: {os.strerror(code)}")
            for region in self._vec[:count]:
                kind = region.categories
                kind = (kind & ~_IS_SWAPPED) | (_IS_PRESENT if kind & anyof else 0)
                out.append((region.start - address, region.end - address, kind))
            if count < _VEC or arg.walk_end >= address + size:
                return out
            arg.start = arg.walk_end

    def _read(self, address: int, size: int) -> list[tuple[int, int, int]]:
        """The same from one pagemap entry per page (no zero-page bit there)."""
        raw = os.pread(self._fd, size // PAGE * 8, address // PAGE * 8)
        return [(index * PAGE, (index + 1) * PAGE,
                 _IS_PRESENT | (_IS_FILE if entry & _PM_FILE else 0))
                for index, entry in enumerate(memoryview(raw).cast("Q"))
                if entry & (_PM_PRESENT | _PM_SWAPPED)]


_scanner = _PageScanner()


def _merge(runs: Iterable[tuple[int, int]]) -> Runs:
    out: list[tuple[int, int]] = []
    for start, end in sorted(runs):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return tuple(out)


def _join(regions: Iterable[tuple[int, int, int]]) -> Runs:
    """Sorted regions as runs, adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for start, end, _ in regions:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return tuple(out)


@dataclass(slots=True)
class _Backing:
    image: weakref.ref[RamImage]
    runs: Runs


_backing: weakref.WeakKeyDictionary[HostBuffer, _Backing] = weakref.WeakKeyDictionary()
"""Which image each buffer is mapped from now (buffers never mapped from one are absent)."""


class RamImage:
    """One host buffer's contents at one moment, kept in a memfd (and mapped read-only)."""

    def __init__(self, buffer: HostBuffer) -> None:
        self.size = buffer.size
        backing = _backing.get(buffer)
        candidates = _scanner.residency(buffer.address, buffer.size).data
        if backing is not None:  # pages of the file mapped now but not touched since
            candidates = _merge(candidates + backing.runs)
        self._fd = os.memfd_create("smmemu-snapshot", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, self.size)
            view = buffer.view
            self.runs = _merge((offset, offset + PAGE) for start, end in candidates
                               for offset in range(start, end, PAGE)
                               if view[offset:offset + PAGE].tobytes() != _ZERO)
            """The pages stored (all others are zero)."""
            for start, end in self.runs:
                os.pwrite(self._fd, view[start:end], start)
            self._reader = _map(None, self.size, mmap.PROT_READ, mmap.MAP_SHARED, self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self._finalizer = weakref.finalize(self, _release, self._fd, self._reader, self.size)
        self._view = memoryview((ctypes.c_char * self.size).from_address(self._reader)).cast("B")

    @property
    def pages(self) -> int:
        """Pages of data the image holds."""
        return sum(end - start for start, end in self.runs) // PAGE

    @property
    def alive(self) -> bool:
        """False once :meth:`close` released the image."""
        return self._finalizer.alive

    def close(self) -> None:
        """Release the memfd (a buffer mapped from it keeps its pages)."""
        if self._finalizer.alive:
            self._view.release()
            self._finalizer()

    def map_over(self, buffer: HostBuffer) -> None:
        """Map this image privately over ``buffer`` at the same host address.

        Raises:
            SnapshotError: the image was closed, or is not ``buffer``'s size.
            OSError: the kernel refused the mapping.
        """
        self._check_alive()
        if buffer.size != self.size:
            raise SnapshotError(f"a {self.size:#x}-byte image cannot cover a "
                                f"{buffer.size:#x}-byte buffer")
        if os.fstat(self._fd).st_blocks * 512 > (self.pages + REMAP_PAGES) * PAGE:
            self._punch_holes()
        _map(buffer.address, buffer.size, mmap.PROT_READ | mmap.PROT_WRITE,
             mmap.MAP_PRIVATE | _MAP_FIXED, self._fd)
        _backing[buffer] = _Backing(weakref.ref(self), self.runs)

    def _check_alive(self) -> None:
        if not self._finalizer.alive:
            raise SnapshotError("this snapshot was released")

    def _punch_holes(self) -> None:
        """Free the zero pages that reads of holes allocated in the memfd (tmpfs does that)."""
        cursor = 0
        for start, end in (*self.runs, (self.size, self.size)):
            if start > cursor and _libc.fallocate(self._fd, _PUNCH_HOLE, cursor, start - cursor):
                code = ctypes.get_errno()
                raise OSError(code, f"fallocate on a snapshot image: {os.strerror(code)}")
            cursor = end

    def changes(self, buffer: HostBuffer, runs: Runs) -> tuple[list[int], Runs]:
        """Where ``buffer`` differs from the image within ``runs``: (pages, byte ranges).

        A byte range spans a page's first to last differing byte, so translated
        code elsewhere in a page that also holds written data stays valid.
        """
        self._check_alive()
        pages: list[int] = []
        spans: list[tuple[int, int]] = []
        here, there = buffer.address, self._reader
        for start, end in runs:
            if not _libc.memcmp(here + start, there + start, end - start):
                continue
            for page in range(start, end, PAGE):
                if end - start == PAGE or _libc.memcmp(here + page, there + page, PAGE):
                    pages.append(page)
                    low, high = _span(buffer.view[page:page + PAGE].tobytes(),
                                      self._view[page:page + PAGE].tobytes())
                    spans.append((page + low, page + high))
        return pages, _merge(spans)

    def copy_into(self, buffer: HostBuffer, pages: list[int]) -> None:
        """Copy the image's ``pages`` (offsets) back into ``buffer``."""
        for page in pages:
            ctypes.memmove(buffer.address + page, self._reader + page, PAGE)


def _span(now: bytes, then: bytes) -> tuple[int, int]:
    """Where ``now`` and ``then`` (unequal) differ, widened to ``_GRAIN``-byte boundaries."""
    low, high = 0, len(now)  # now[:low] == then[:low]; they differ within [low, high)
    while high - low > _GRAIN:
        middle = (low + high) // 2
        if now[low:middle] == then[low:middle]:
            low = middle
        else:
            high = middle
    first = low
    low, high = first, len(now)  # they differ within [low, high); now[high:] == then[high:]
    while high - low > _GRAIN:
        middle = (low + high) // 2
        if now[middle:high] == then[middle:high]:
            high = middle
        else:
            low = middle
    return first, high


def _map(address: int | None, size: int, prot: int, flags: int, fd: int) -> int:
    got = _libc.mmap(address, size, prot, flags, fd, 0)
    if got is None or got == ctypes.c_void_p(-1).value or (address is not None and got != address):
        code = ctypes.get_errno()
        raise OSError(code, f"mmap of a snapshot image failed: {os.strerror(code)}")
    return int(got)


def _release(fd: int, reader: int, size: int) -> None:
    _libc.munmap(reader, size)
    os.close(fd)


def take(buffer: HostBuffer) -> RamImage:
    """Copy ``buffer`` into a new image and map the image over it (tracking starts here)."""
    image = RamImage(buffer)
    image.map_over(buffer)
    return image


def revert(buffer: HostBuffer, image: RamImage) -> Runs | None:
    """Put ``image`` back into ``buffer``; return the byte ranges whose contents changed.

    None means unknown (``buffer`` was mapped from another image since): anything
    may have changed. Only the pages written since ``image`` was last mapped are
    compared. When few pages are mapped, the changed ones are copied back and
    the written pages stay private; otherwise the image is mapped again, which
    drops every page (and the cost of walking them in later scans).
    """
    backing = _backing.get(buffer)
    if backing is None or backing.image() is not image:
        image.map_over(buffer)
        return None
    now = _scanner.residency(buffer.address, buffer.size)
    pages, spans = image.changes(buffer, now.written)
    if now.mapped > REMAP_PAGES:
        image.map_over(buffer)
    else:
        image.copy_into(buffer, pages)
    return spans
