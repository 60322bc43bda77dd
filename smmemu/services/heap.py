"""A real allocator for the SMRAM heap: pages and pool, with misuse reported.

First fit over a free list kept in Python (the bytes themselves are SMRAM);
pool blocks are 16-byte aligned, page allocations 4 KiB aligned. Freeing an
address that is not an allocation is refused (EFI_INVALID_PARAMETER, as
edk2's pool code does) and reported: a *double free* when the address was
allocated and freed before, a *foreign free* otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["HeapMisuse", "SmramHeap"]

PAGE = 0x1000
_POOL_ALIGN = 0x10


@dataclass(frozen=True, slots=True)
class HeapMisuse:
    """A free the allocator refused."""

    kind: str
    """``double-free`` or ``foreign-free``."""
    address: int
    caller: int


@dataclass(slots=True)
class SmramHeap:
    """Pool and page allocations in [start, end)."""

    start: int
    end: int
    misuse: list[HeapMisuse] = field(default_factory=list)
    _free: list[tuple[int, int]] = field(default_factory=list)
    _used: dict[int, tuple[int, bool]] = field(default_factory=dict)
    _released: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._free = [(self.start, self.end - self.start)]

    def _take(self, size: int, align: int) -> int | None:
        for index, (address, length) in enumerate(self._free):
            aligned = (address + align - 1) & ~(align - 1)
            waste = aligned - address
            if length - waste < size:
                continue
            pieces = []
            if waste:
                pieces.append((address, waste))
            if length - waste > size:
                pieces.append((aligned + size, length - waste - size))
            self._free[index:index + 1] = pieces
            return aligned
        return None

    def _give_back(self, address: int, size: int) -> None:
        self._free.append((address, size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for start, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self._free = merged

    def allocate_pool(self, size: int) -> int | None:
        """``size`` bytes, 16-byte aligned; None when the heap is exhausted."""
        rounded = max(_POOL_ALIGN, (size + _POOL_ALIGN - 1) & ~(_POOL_ALIGN - 1))
        address = self._take(rounded, _POOL_ALIGN)
        if address is not None:
            self._used[address] = (rounded, False)
            self._released.discard(address)
        return address

    def allocate_pages(self, count: int, *, at: int | None = None) -> int | None:
        """``count`` pages, anywhere or at ``at``; None when impossible."""
        size = count * PAGE
        if at is not None:
            return self._take_at(at, size)
        address = self._take(size, PAGE)
        if address is not None:
            self._used[address] = (size, True)
            self._released.discard(address)
        return address

    def _take_at(self, address: int, size: int) -> int | None:
        for index, (start, length) in enumerate(self._free):
            if start <= address and address + size <= start + length:
                pieces = [(start, address - start)] if address > start else []
                if address + size < start + length:
                    pieces.append((address + size, start + length - address - size))
                self._free[index:index + 1] = pieces
                self._used[address] = (size, True)
                return address
        return None

    def free(self, address: int, *, pages: int | None = None, caller: int = 0) -> bool:
        """Release an allocation; False (and a recorded misuse) if it is not one."""
        entry = self._used.get(address)
        if entry is None or (pages is not None and entry != (pages * PAGE, True)):
            kind = "double-free" if address in self._released else "foreign-free"
            self.misuse.append(HeapMisuse(kind, address, caller))
            return False
        del self._used[address]
        self._released.add(address)
        self._give_back(address, entry[0])
        return True

    def owns(self, address: int) -> bool:
        """Whether ``address`` lies in the heap."""
        return self.start <= address < self.end

    @property
    def in_use(self) -> int:
        """Bytes allocated."""
        return sum(size for size, _ in self._used.values())
