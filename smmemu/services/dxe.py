"""What a traditional DXE_SMM_DRIVER sees of DXE while its entry point runs.

edk2's PiSmmCore calls such an entry point with the DXE ``EFI_SYSTEM_TABLE``;
the driver's library constructors take ``gBS``/``gRT`` from it, find
``EFI_SMM_BASE2_PROTOCOL`` with ``LocateProtocol`` and ask it for the SMST.
smmemu has no DXE, so it provides the system table, the boot and runtime
services tables and a small DXE protocol database. Every service is a
thunk; the ones drivers need during their entry points are implemented,
every other reports itself (a finding naming the service and the caller)
and returns EFI_UNSUPPORTED. The tables live in SMRAM (a deviation: on a
real machine they are DXE memory) so that calls through them are not SMM
call-outs.

Offsets (X64): EFI_SYSTEM_TABLE (UEFI 2.x, 4.3) has RuntimeServices at 0x58,
BootServices at 0x60, NumberOfTableEntries 0x68, ConfigurationTable 0x70;
EFI_BOOT_SERVICES (4.4) lists 44 functions after its 24-byte header;
EFI_SMM_BASE2_PROTOCOL is {InSmm, GetSmstLocation} (PI Vol. 4).
"""

from __future__ import annotations

import struct
import uuid

from smmemu.cpu import Cpu
from smmemu.services.dxe_memory import DXE_SERVICES_TABLE_GUID, DxeMemoryMap, MemoryRange
from smmemu.services.protocols import ProtocolDatabase
from smmemu.services.runtime import MmRuntime, UnresolvedRequest
from smmemu.uefi.status import EfiStatus

__all__ = ["SMM_BASE2_GUID", "DxeServices"]

SMM_BASE2_GUID = uuid.UUID("f4ccbfb7-f6e0-47fd-9dd4-10a8f150c191")
HOB_LIST_GUID = uuid.UUID("7739f24c-93d7-11d4-9a3a-0090273fc14d")
_BOOT_SERVICES = (
    "RaiseTPL", "RestoreTPL", "AllocatePages", "FreePages", "GetMemoryMap", "AllocatePool",
    "FreePool", "CreateEvent", "SetTimer", "WaitForEvent", "SignalEvent", "CloseEvent",
    "CheckEvent", "InstallProtocolInterface", "ReinstallProtocolInterface",
    "UninstallProtocolInterface", "HandleProtocol", "Reserved", "RegisterProtocolNotify",
    "LocateHandle", "LocateDevicePath", "InstallConfigurationTable", "LoadImage", "StartImage",
    "Exit", "UnloadImage", "ExitBootServices", "GetNextMonotonicCount", "Stall",
    "SetWatchdogTimer", "ConnectController", "DisconnectController", "OpenProtocol",
    "CloseProtocol", "OpenProtocolInformation", "ProtocolsPerHandle", "LocateHandleBuffer",
    "LocateProtocol", "InstallMultipleProtocolInterfaces", "UninstallMultipleProtocolInterfaces",
    "CalculateCrc32", "CopyMem", "SetMem", "CreateEventEx",
)
_RUNTIME_SERVICES = (
    "GetTime", "SetTime", "GetWakeupTime", "SetWakeupTime", "SetVirtualAddressMap",
    "ConvertPointer", "GetVariable", "GetNextVariableName", "SetVariable",
    "GetNextHighMonotonicCount", "ResetSystem", "UpdateCapsule", "QueryCapsuleCapabilities",
    "QueryVariableInfo",
)
_ALLOCATE_MAX_ADDRESS = 1
_LOW_BASE, _LOW_LIMIT = 0x8_0000, 0x10_0000
"""DXE pages below 1 MiB come from [0x80000, 0xA0000), top down (conventional memory)."""
_BS_SIGNATURE = 0x5652_4553_544F_4F42  # 'BOOTSERV'
_RT_SIGNATURE = 0x5652_4553_544E_5552  # 'RUNTSERV'
_ST_SIGNATURE = 0x5453_5953_2049_4249  # 'IBI SYST'


class DxeServices:
    """The DXE system table and boot services a DXE_SMM_DRIVER's entry point uses."""

    def __init__(self, mm: MmRuntime, memory_map: list[MemoryRange]) -> None:
        self.mm = mm
        self.memory_map = DxeMemoryMap(mm, memory_map)
        self.db = ProtocolDatabase()
        self.events = 0
        self._low_next = 0xA_0000
        mem = mm.memory
        implemented = {
            "RaiseTPL": self._raise_tpl, "RestoreTPL": self._nothing,
            "AllocatePool": self._allocate_pool, "FreePool": self._free_pool,
            "AllocatePages": self._allocate_pages, "FreePages": self._free_pages,
            "CreateEvent": self._create_event, "CreateEventEx": self._create_event,
            "CloseEvent": self._success, "SignalEvent": self._success,
            "InstallProtocolInterface": self._install, "HandleProtocol": self._handle_protocol,
            "LocateProtocol": self._locate_protocol,
            "InstallMultipleProtocolInterfaces": self._install_multiple,
            "RegisterProtocolNotify": self._register_notify, "CopyMem": self._copy_mem,
            "SetMem": self._set_mem, "Stall": self._success,
            "CalculateCrc32": self._crc32, "GetMemoryMap": self.memory_map.get_memory_map,
        }
        self.boot_services = mm.pool(0x18 + 8 * len(_BOOT_SERVICES))
        mem.write(self.boot_services, struct.pack("<QIII", _BS_SIGNATURE, 0x0002_0046,
                                                  0x18 + 8 * len(_BOOT_SERVICES), 0))
        for index, name in enumerate(_BOOT_SERVICES):
            run = implemented.get(name) or mm.unsupported(f"gBS->{name}")
            mem.put_u64(self.boot_services + 0x18 + 8 * index, mm.thunks.add(f"gBS->{name}", run))
        self.runtime_services = mm.pool(0x18 + 8 * len(_RUNTIME_SERVICES))
        mem.write(self.runtime_services, struct.pack("<QIII", _RT_SIGNATURE, 0x0002_0046,
                                                     0x18 + 8 * len(_RUNTIME_SERVICES), 0))
        for index, name in enumerate(_RUNTIME_SERVICES):
            run = mm.unsupported(f"gRT->{name}")
            mem.put_u64(self.runtime_services + 0x18 + 8 * index,
                        mm.thunks.add(f"gRT->{name}", run))
        self.system_table = mm.pool(0x78)
        mem.write(self.system_table, struct.pack("<QIII", _ST_SIGNATURE, 0x0002_0046, 0x78, 0))
        vendor = mm.pool(32)
        mem.write(vendor, "smmemu".encode("utf-16-le") + b"\0\0")
        mem.put_u64(self.system_table + 0x18, vendor)
        mem.put_u64(self.system_table + 0x58, self.runtime_services)
        mem.put_u64(self.system_table + 0x60, self.boot_services)
        # Two configuration tables: a HOB list (PHIT, end of list) for HobLib users and
        # the DXE services table for DxeServicesTableLib (gDS).
        hobs = mm.pool(64)
        mem.write(hobs, struct.pack("<HHI", 1, 56, 0) + struct.pack("<IIQQQQQ", 9, 0, 0, 0, 0,
                                                                     0, 0))
        mem.write(hobs + 56, struct.pack("<HHI", 0xFFFF, 8, 0))
        config = mm.pool(48)
        mem.write(config, HOB_LIST_GUID.bytes_le + struct.pack("<Q", hobs)
                  + DXE_SERVICES_TABLE_GUID.bytes_le + struct.pack("<Q", self.memory_map.table))
        mem.put_u64(self.system_table + 0x68, 2)
        mem.put_u64(self.system_table + 0x70, config)
        self.hob_list = hobs
        base2 = mm.pool(16)
        mem.put_u64(base2, mm.thunks.add("SmmBase2->InSmm", self._in_smm))
        mem.put_u64(base2 + 8, mm.thunks.add("SmmBase2->GetSmstLocation", self._get_smst))
        self.db.install(mm.pool(16), SMM_BASE2_GUID, base2)

    # -- helpers ----------------------------------------------------------------
    @staticmethod
    def _success(_cpu: Cpu) -> int:
        return EfiStatus.SUCCESS

    @staticmethod
    def _nothing(_cpu: Cpu) -> int:
        return 0

    @staticmethod
    def _raise_tpl(cpu: Cpu) -> int:
        del cpu
        return 4  # TPL_APPLICATION: the previous TPL

    # -- boot services ------------------------------------------------------------
    def _allocate_pool(self, cpu: Cpu) -> int:
        return self.mm._allocate_pool(cpu)

    def _free_pool(self, cpu: Cpu) -> int:
        return self.mm.free_pool(cpu, "gBS->FreePool")

    def _allocate_pages(self, cpu: Cpu) -> int:
        """AllocatePages: SMRAM heap, except AllocateMaxAddress below 1 MiB (DXE low memory).

        Drivers ask for memory below 1 MiB for real-mode code other CPUs run outside SMM
        (OVMF's CpuHotplugSmm puts its post-SMM pen there), so it must not be SMRAM.
        """
        kind, pages, out = cpu.argument(0), cpu.argument(2), cpu.argument(3)
        if kind != _ALLOCATE_MAX_ADDRESS or out == 0 or self.mm.memory.u64(out) >= _LOW_LIMIT:
            return self.mm._allocate_pages(cpu)
        limit = self.mm.memory.u64(out)
        address = self._low_next - pages * 0x1000
        if pages == 0 or address < _LOW_BASE or address + pages * 0x1000 - 1 > limit:
            return EfiStatus.OUT_OF_RESOURCES
        self._low_next = address
        self.mm.memory.put_u64(out, address)
        return EfiStatus.SUCCESS

    def _free_pages(self, cpu: Cpu) -> int:
        address, pages = cpu.argument(0), cpu.argument(1)
        if not _LOW_BASE <= address < _LOW_LIMIT:
            return self.mm._free_pages(cpu)
        if address < self._low_next or address % 0x1000:
            return EfiStatus.NOT_FOUND
        if address == self._low_next:  # the most recent allocation: give it back
            self._low_next = address + pages * 0x1000
        return EfiStatus.SUCCESS

    def _create_event(self, cpu: Cpu) -> int:
        out = cpu.argument(4)
        if out == 0:
            return EfiStatus.INVALID_PARAMETER
        self.events += 1
        self.mm.memory.put_u64(out, self.mm.pool(16))
        return EfiStatus.SUCCESS

    def _install(self, cpu: Cpu) -> int:
        handle_ptr, guid_ptr, interface = cpu.argument(0), cpu.argument(1), cpu.argument(3)
        return self._install_one(handle_ptr, guid_ptr, interface)

    def _install_one(self, handle_ptr: int, guid_ptr: int, interface: int) -> int:
        mem = self.mm.memory
        handle = mem.u64(handle_ptr)
        if handle == 0:
            handle = self.mm.pool(16)
            mem.put_u64(handle_ptr, handle)
        ok = self.db.install(handle, mem.guid(guid_ptr), interface)
        return EfiStatus.SUCCESS if ok else EfiStatus.INVALID_PARAMETER

    def _install_multiple(self, cpu: Cpu) -> int:
        handle_ptr = cpu.argument(0)
        index = 1
        while True:
            guid_ptr = cpu.argument(index)
            if guid_ptr == 0:
                return EfiStatus.SUCCESS
            status = self._install_one(handle_ptr, guid_ptr, cpu.argument(index + 1))
            if status != EfiStatus.SUCCESS:
                return status
            index += 2

    def _handle_protocol(self, cpu: Cpu) -> int:
        handle, guid_ptr, out = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        interface = self.db.interface(handle, self.mm.memory.guid(guid_ptr))
        if interface is None:
            return EfiStatus.UNSUPPORTED
        self.mm.memory.put_u64(out, interface)
        return EfiStatus.SUCCESS

    def _locate_protocol(self, cpu: Cpu) -> int:
        guid_ptr, out = cpu.argument(0), cpu.argument(2)
        guid = self.mm.memory.guid(guid_ptr)
        record = self.db.locate(guid)
        if record is None:
            self.mm.unresolved.append(UnresolvedRequest("gBS->LocateProtocol", guid,
                                                        self.mm.caller))
            self.mm.memory.put_u64(out, 0)
            return EfiStatus.NOT_FOUND
        self.mm.memory.put_u64(out, record.interface)
        return EfiStatus.SUCCESS

    def _register_notify(self, cpu: Cpu) -> int:
        guid_ptr, out = cpu.argument(0), cpu.argument(2)
        registration = self.mm.pool(16)
        self.db.notify(registration, self.mm.memory.guid(guid_ptr), cpu.argument(1))
        self.mm.memory.put_u64(out, registration)
        return EfiStatus.SUCCESS

    def _copy_mem(self, cpu: Cpu) -> int:
        destination, source, length = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        self.mm.memory.write(destination, self.mm.memory.read(source, length))
        return 0

    def _set_mem(self, cpu: Cpu) -> int:
        buffer, size, value = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        self.mm.memory.write(buffer, bytes([value & 0xFF]) * size)
        return 0

    def _crc32(self, cpu: Cpu) -> int:
        import zlib

        data, size, out = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        self.mm.memory.write(out, struct.pack("<I", zlib.crc32(self.mm.memory.read(data, size))))
        return EfiStatus.SUCCESS

    # -- EFI_SMM_BASE2_PROTOCOL --------------------------------------------------------
    def _in_smm(self, cpu: Cpu) -> int:
        self.mm.memory.put_u8(cpu.argument(1), 1)
        return EfiStatus.SUCCESS

    def _get_smst(self, cpu: Cpu) -> int:
        self.mm.memory.put_u64(cpu.argument(1), self.mm.tables.mmst)
        return EfiStatus.SUCCESS
