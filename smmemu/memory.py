"""Physical memory: host buffers for DRAM and TSEG, and the non-SMM view of SMRAM.

DRAM and TSEG are separate anonymous ``mmap`` buffers (pages are only
allocated when touched) that every CPU's engine maps with ``mem_map_ptr``, so
several CPUs can share them. TSEG is its own Unicorn region from the start
because protecting part of a larger region splits it by copying
(unicorn_probe.md 4a).

Outside SMM, TSEG behaves as QEMU's ``tseg-blackhole`` and Intel chipsets do:
reads return all-ones and writes are dropped (smm_semantics.md 4.3). The host
API here implements that rule for host accesses; :mod:`smmemu.smm.smram`
implements it for guest code. Every refused access is kept as a
:class:`SmramAccess` finding.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass, field

from smmemu.errors import MemoryAccessError

_QWORD = struct.Struct("<Q")

__all__ = ["HostBuffer", "PhysicalMemory", "SmramAccess"]


@dataclass(frozen=True, slots=True)
class SmramAccess:
    """A non-SMM access to closed SMRAM: the data never reached or left SMRAM."""

    source: str
    """``"guest"`` (CPU code) or ``"host"`` (the Python API)."""
    kind: str
    """``"read"``, ``"write"`` or ``"fetch"``."""
    address: int
    size: int
    value: int | None = None
    rip: int | None = None

    def describe(self) -> str:
        """One line for reports."""
        where = f" at rip {self.rip:#x}" if self.rip is not None else ""
        data = f" value {self.value:#x}" if self.value is not None else ""
        verdict = "dropped" if self.kind == "write" else "returned all-ones"
        if self.kind == "fetch":
            verdict = "refused"
        return (f"{self.source} {self.kind} of {self.size} byte(s) at {self.address:#x}{data}"
                f"{where} outside SMM: {verdict}")


class HostBuffer:
    """A zero-filled, lazily allocated host memory block with a stable address."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self._map)
        self.address = ctypes.addressof(self._anchor)
        self.view = memoryview(self._map)

    def close(self) -> None:
        """Unmap the block (only once no engine maps it any more)."""
        self.view.release()
        del self._anchor
        self._map.close()


@dataclass(slots=True)
class PhysicalMemory:
    """The machine's RAM: DRAM below TSEG and TSEG (SMRAM) at the top of low memory."""

    dram_size: int
    smram_base: int
    smram_size: int
    findings: list[SmramAccess] = field(default_factory=list)
    smram_closed: bool = True
    """Whether TSEG hides SMRAM from non-SMM accesses (MCH T_EN and G_SMRAME)."""
    dram: HostBuffer = field(init=False)
    smram: HostBuffer = field(init=False)

    def __post_init__(self) -> None:
        self.dram = HostBuffer(self.smram_base)
        self.smram = HostBuffer(self.smram_size)

    @property
    def _smram_top(self) -> int:
        return min(self.smram_end, self.dram_size)

    @property
    def smram_end(self) -> int:
        """First address above SMRAM."""
        return self.smram_base + self.smram_size

    def in_smram(self, address: int, size: int = 1) -> bool:
        """Whether [address, address + size) overlaps SMRAM."""
        return address < self.smram_end and address + size > self.smram_base

    def view_at(self, address: int, size: int) -> tuple[memoryview, int]:
        """The host buffer holding [address, address + size) and the offset in it.

        Raises:
            MemoryAccessError: if the range is outside RAM or straddles TSEG's edge.
        """
        self._check(address, size)
        if address >= self.smram_base:
            return self.smram.view, address - self.smram_base
        if address + size > self.smram_base:
            raise MemoryAccessError(f"range {address:#x}+{size:#x} straddles the TSEG boundary",
                                    address=address, size=size)
        return self.dram.view, address

    def _check(self, address: int, size: int) -> None:
        if size < 0 or address < 0 or address + size > self.dram_size:
            raise MemoryAccessError(
                f"physical range {address:#x}+{size:#x} is outside RAM [0, {self.dram_size:#x})",
                address=address, size=size,
            )

    def _pieces(self, address: int, size: int) -> list[tuple[int, int, bool]]:
        """Split [address, address+size) into (address, size, is_smram) pieces."""
        pieces = []
        cursor, end = address, address + size
        ranges = ((0, self.smram_base, False), (self.smram_base, self.smram_end, True))
        for lo, hi, is_smram in ranges:
            start, stop = max(cursor, lo), min(end, hi)
            if start < stop:
                pieces.append((start, stop - start, is_smram))
        return pieces

    def read(self, address: int, size: int, *, smm: bool) -> bytes:
        """Read physical memory; outside SMM, SMRAM bytes read as 0xFF (and are recorded)."""
        end = address + size
        # Fast paths: the range lies in DRAM, or in SMRAM that this access may see.
        if address >= 0 and size >= 0 and end <= self.smram_base:
            return bytes(self.dram.view[address:end])
        if (size >= 0 and self.smram_base <= address and end <= self._smram_top
                and (smm or not self.smram_closed)):
            offset = address - self.smram_base
            return bytes(self.smram.view[offset:offset + size])
        self._check(address, size)
        out = bytearray()
        for start, length, is_smram in self._pieces(address, size):
            if is_smram and not smm and self.smram_closed:
                self.findings.append(SmramAccess("host", "read", start, length))
                out += b"\xff" * length
            elif is_smram:
                offset = start - self.smram_base
                out += self.smram.view[offset:offset + length]
            else:
                out += self.dram.view[start:start + length]
        return bytes(out)

    def qword(self, address: int) -> int:
        """The little-endian u64 at ``address`` as SMM sees it (page-table walks)."""
        if 0 <= address <= self.smram_base - 8:
            return int(_QWORD.unpack_from(self.dram.view, address)[0])
        if self.smram_base <= address <= self._smram_top - 8:
            return int(_QWORD.unpack_from(self.smram.view, address - self.smram_base)[0])
        return int.from_bytes(self.read(address, 8, smm=True), "little")

    def write(self, address: int, data: bytes, *, smm: bool) -> None:
        """Write physical memory; outside SMM, writes to SMRAM are dropped (and recorded)."""
        end = address + len(data)
        if address >= 0 and end <= self.smram_base:
            self.dram.view[address:end] = data
            return
        if self.smram_base <= address and end <= self._smram_top and (
                smm or not self.smram_closed):
            offset = address - self.smram_base
            self.smram.view[offset:offset + len(data)] = data
            return
        self._check(address, len(data))
        for start, length, is_smram in self._pieces(address, len(data)):
            chunk = data[start - address:start - address + length]
            if is_smram and not smm and self.smram_closed:
                value = int.from_bytes(chunk[:8], "little")
                self.findings.append(SmramAccess("host", "write", start, length, value))
            elif is_smram:
                offset = start - self.smram_base
                self.smram.view[offset:offset + length] = chunk
            else:
                self.dram.view[start:start + length] = chunk

    def close(self) -> None:
        """Release the host buffers."""
        self.dram.close()
        self.smram.close()
