"""The DXE memory maps a traditional SMM driver reads: gBS->GetMemoryMap and gDS's GCD map.

edk2's SmmMemLib takes both at EndOfDxe and, once ReadyToLock has been signalled, accepts a
communicate or data buffer only if it lies in an EfiReservedMemoryType, EfiRuntimeServicesCode
/Data or EfiACPIMemoryNVS range of the UEFI memory map and not in untested GCD memory
(MdePkg/Library/SmmMemLib/SmmMemLib.c, SmmIsBufferOutsideSmmValid). So the map decides which
requests a locked driver will refuse, and it is built from the Machine's own layout:

- low DRAM below TSEG is EfiConventionalMemory, except the legacy hole [0xA0000, 0x100000);
- the DXE-side communicate buffers and their status mailboxes are EfiRuntimeServicesData, as
  the MM communication drivers allocate them (PI Vol. 4 requires the buffer to be usable at
  runtime);
- TSEG is EfiReservedMemoryType (OVMF's PlatformPei reserves it that way);
- the GCD map has one tested SystemMemory space for low DRAM and TSEG.

Layouts: EFI_MEMORY_DESCRIPTOR (UEFI 2.10, 7.2) is 40 bytes; like edk2 we report a
DescriptorSize of 48 so that drivers which assume ``sizeof`` are caught.
EFI_GCD_MEMORY_SPACE_DESCRIPTOR (PI 1.8 Vol. 2, 7.2.4) is 56 bytes; EFI_DXE_SERVICES lists
GetMemorySpaceMap seventh after its 24-byte header.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from smmemu.cpu import Cpu
from smmemu.services.runtime import MmRuntime
from smmemu.uefi.status import EfiStatus

__all__ = [
    "DXE_SERVICES_TABLE_GUID", "DxeMemoryMap", "MemoryRange", "MemoryType", "build_memory_map",
]

DXE_SERVICES_TABLE_GUID = uuid.UUID("05ad34ba-6f02-4214-952e-4da0398e2bb9")
PAGE = 0x1000
DESCRIPTOR_SIZE = 48
DESCRIPTOR_VERSION = 1
_MEMORY_WB_ETC = 0xF  # UC | WC | WT | WB
_MEMORY_RUNTIME = 1 << 63
_GCD_PRESENT, _GCD_INITIALIZED, _GCD_TESTED = 1 << 44, 1 << 45, 1 << 46
_GCD_SYSTEM_MEMORY = 2
_GCD_DESCRIPTOR = struct.Struct("<QQQQI4xQQ")
_DXE_SERVICES = (
    "AddMemorySpace", "AllocateMemorySpace", "FreeMemorySpace", "RemoveMemorySpace",
    "GetMemorySpaceDescriptor", "SetMemorySpaceAttributes", "GetMemorySpaceMap", "AddIoSpace",
    "AllocateIoSpace", "FreeIoSpace", "RemoveIoSpace", "GetIoSpaceDescriptor", "GetIoSpaceMap",
    "Dispatch", "Schedule", "Trust", "ProcessFirmwareVolume", "SetMemorySpaceCapabilities",
)
_DS_SIGNATURE = 0x5652_4553_5F45_5844  # 'DXE_SERV'


class MemoryType(IntEnum):
    """EFI_MEMORY_TYPE values the map uses."""

    RESERVED = 0
    RUNTIME_SERVICES_DATA = 6
    CONVENTIONAL = 7


@dataclass(frozen=True, slots=True)
class MemoryRange:
    """One EFI_MEMORY_DESCRIPTOR: [start, start + pages * 4 KiB) of ``type``."""

    type: MemoryType
    start: int
    pages: int

    @property
    def end(self) -> int:
        """First address after the range."""
        return self.start + self.pages * PAGE


def build_memory_map(dram_size: int, tseg: tuple[int, int],
                     runtime: list[tuple[int, int]]) -> list[MemoryRange]:
    """The UEFI memory map of the Machine: ``runtime`` ranges carved out of conventional DRAM."""
    tseg_base, tseg_size = tseg
    marks = sorted((start & ~(PAGE - 1), (end + PAGE - 1) & ~(PAGE - 1))
                   for start, end in runtime)
    out: list[MemoryRange] = []

    def conventional(start: int, end: int) -> None:
        for low, high in ((start, min(end, 0xA0000)), (max(start, 0x100000), end)):
            if high > low:
                out.append(MemoryRange(MemoryType.CONVENTIONAL, low, (high - low) // PAGE))

    cursor = 0
    for start, end in marks:
        conventional(cursor, start)
        out.append(MemoryRange(MemoryType.RUNTIME_SERVICES_DATA, start, (end - start) // PAGE))
        cursor = end
    conventional(cursor, tseg_base)
    out.append(MemoryRange(MemoryType.RESERVED, tseg_base, tseg_size // PAGE))
    del dram_size  # low DRAM ends where TSEG ends
    return out


class DxeMemoryMap:
    """gBS->GetMemoryMap and the DXE services table (gDS) over one memory map."""

    def __init__(self, mm: MmRuntime, ranges: list[MemoryRange]) -> None:
        self.mm = mm
        self.ranges = ranges
        self.map_key = 1
        implemented = {"GetMemorySpaceMap": self._get_memory_space_map}
        size = 0x18 + 8 * len(_DXE_SERVICES)
        self.table = mm.pool(size)
        mm.memory.write(self.table, struct.pack("<QIII", _DS_SIGNATURE, 0x0001_0050, size, 0))
        for index, name in enumerate(_DXE_SERVICES):
            run = implemented.get(name) or mm.unsupported(f"gDS->{name}")
            mm.memory.put_u64(self.table + 0x18 + 8 * index, mm.thunks.add(f"gDS->{name}", run))

    def descriptors(self) -> bytes:
        """The map as the guest reads it (DescriptorSize 48)."""
        return b"".join(
            struct.pack("<I4xQQQQ8x", r.type, r.start, 0, r.pages,
                        _MEMORY_WB_ETC | (_MEMORY_RUNTIME if r.type == 6 else 0))
            for r in self.ranges)

    def get_memory_map(self, cpu: Cpu) -> int:
        """EFI_BOOT_SERVICES.GetMemoryMap (UEFI 2.10, 7.2)."""
        size_ptr, buffer, key_ptr, descriptor_ptr, version_ptr = (cpu.argument(i)
                                                                   for i in range(5))
        mem = self.mm.memory
        if size_ptr == 0:
            return EfiStatus.INVALID_PARAMETER
        data = self.descriptors()
        available = mem.u64(size_ptr)
        mem.put_u64(size_ptr, len(data))
        if descriptor_ptr:
            mem.put_u64(descriptor_ptr, DESCRIPTOR_SIZE)
        if version_ptr:
            mem.write(version_ptr, struct.pack("<I", DESCRIPTOR_VERSION))
        if available < len(data):
            return EfiStatus.BUFFER_TOO_SMALL
        if buffer == 0:
            return EfiStatus.INVALID_PARAMETER
        mem.write(buffer, data)
        if key_ptr:
            mem.put_u64(key_ptr, self.map_key)
        return EfiStatus.SUCCESS

    def _get_memory_space_map(self, cpu: Cpu) -> int:
        """EFI_DXE_SERVICES.GetMemorySpaceMap: one tested SystemMemory space, pool-allocated."""
        count_ptr, map_ptr = cpu.argument(0), cpu.argument(1)
        if count_ptr == 0 or map_ptr == 0:
            return EfiStatus.INVALID_PARAMETER
        end = max(r.end for r in self.ranges)
        entry = _GCD_DESCRIPTOR.pack(0, end, _GCD_PRESENT | _GCD_INITIALIZED | _GCD_TESTED
                                     | _MEMORY_WB_ETC, 0, _GCD_SYSTEM_MEMORY, 0, 0)
        buffer = self.mm.heap.allocate_pool(len(entry))
        if buffer is None:
            return EfiStatus.OUT_OF_RESOURCES
        self.mm.memory.write(buffer, entry)
        self.mm.memory.put_u64(count_ptr, 1)
        self.mm.memory.put_u64(map_ptr, buffer)
        return EfiStatus.SUCCESS
