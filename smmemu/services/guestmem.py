"""Typed access to guest memory for services: pointers, GUIDs, UINTNs, strings.

Services run while the CPU is in SMM, where the MM core maps SMRAM and the
buffers it knows identically (virtual = physical), so guest pointers are
used as physical addresses. Reads and writes go through the SMM view.
"""

from __future__ import annotations

import struct
import uuid

from smmemu.memory import PhysicalMemory

__all__ = ["GuestMemory"]

_Q = struct.Struct("<Q")


class GuestMemory:
    """Little helpers over :class:`PhysicalMemory` in the SMM view."""

    def __init__(self, memory: PhysicalMemory) -> None:
        self._memory = memory

    def read(self, address: int, size: int) -> bytes:
        """Raw bytes."""
        return self._memory.read(address, size, smm=True)

    def write(self, address: int, data: bytes) -> None:
        """Raw bytes."""
        self._memory.write(address, data, smm=True)

    def u64(self, address: int) -> int:
        """A UINT64 / UINTN / pointer."""
        return int(_Q.unpack(self.read(address, 8))[0])

    def put_u64(self, address: int, value: int) -> None:
        """Store a UINT64 / UINTN / pointer."""
        self.write(address, _Q.pack(value & 0xFFFF_FFFF_FFFF_FFFF))

    def put_u8(self, address: int, value: int) -> None:
        """Store a BOOLEAN / UINT8."""
        self.write(address, bytes([value & 0xFF]))

    def guid(self, address: int) -> uuid.UUID:
        """An EFI_GUID (EFI byte order)."""
        return uuid.UUID(bytes_le=self.read(address, 16))

    def ucs2(self, address: int, limit: int = 512) -> str:
        """A NUL-terminated CHAR16 string."""
        raw = self.read(address, limit * 2)
        end = next((i for i in range(0, len(raw), 2) if raw[i:i + 2] == b"\0\0"), len(raw))
        return raw[:end].decode("utf-16-le", errors="replace")

    def readable(self, address: int, size: int = 1) -> bool:
        """Whether [address, address + size) is RAM."""
        return address > 0 and address + size <= self._memory.dram_size
