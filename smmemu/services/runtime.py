"""The MM services runtime: the MM system table and the services behind it.

Layouts (offsets for X64) follow ``EFI_MM_SYSTEM_TABLE`` in PI 1.8 Vol. 4 and
edk2 ``MdePkg/Include/Pi/PiMmCis.h``: header (signature 'SMST') at 0x00,
MmFirmwareVendor 0x18, MmFirmwareRevision 0x20, MmInstallConfigurationTable
0x28, MmIo (Mem.Read, Mem.Write, Io.Read, Io.Write) 0x30-0x48,
MmAllocatePool 0x50, MmFreePool 0x58, MmAllocatePages 0x60, MmFreePages 0x68,
MmStartupThisAp 0x70, CurrentlyExecutingCpu 0x78, NumberOfCpus 0x80,
CpuSaveStateSize 0x88, CpuSaveState 0x90, NumberOfTableEntries 0x98,
MmConfigurationTable 0xA0, MmInstallProtocolInterface 0xA8,
MmUninstallProtocolInterface 0xB0, MmHandleProtocol 0xB8,
MmRegisterProtocolNotify 0xC0, MmLocateHandle 0xC8, MmLocateProtocol 0xD0,
MmiManage 0xD8, MmiHandlerRegister 0xE0, MmiHandlerUnRegister 0xE8. The
traditional ``EFI_SMM_SYSTEM_TABLE2`` has the same layout, so one table
serves both kinds of driver.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from smmemu.cpu import Cpu
from smmemu.errors import MemoryAccessError
from smmemu.results import Finding
from smmemu.services.guestmem import GuestMemory
from smmemu.services.heap import PAGE, SmramHeap
from smmemu.services.protocols import ProtocolDatabase
from smmemu.services.thunks import ThunkTable
from smmemu.uefi.status import EfiStatus

__all__ = ["MMST_SIZE", "MmRuntime", "UnresolvedRequest"]

log = logging.getLogger(__name__)

MMST_SIGNATURE = 0x5453_4D53  # 'SMST'
MMST_REVISION = (1 << 16) | 80
MMST_SIZE = 0xF0
_SUCCESS = EfiStatus.SUCCESS
_INVALID = EfiStatus.INVALID_PARAMETER
_NOT_FOUND = EfiStatus.NOT_FOUND
_NO_MEMORY = EfiStatus.OUT_OF_RESOURCES


@dataclass(frozen=True, slots=True)
class UnresolvedRequest:
    """A LocateProtocol (or similar) nobody could answer, with who asked."""

    service: str
    guid: uuid.UUID
    caller: int


@dataclass(slots=True)
class _Tables:
    mmst: int = 0
    config: int = 0
    config_entries: list[tuple[uuid.UUID, int]] = field(default_factory=list)


class MmRuntime:
    """Builds the MM system table in SMRAM and implements its services."""

    def __init__(self, memory: GuestMemory, heap: SmramHeap, thunks: ThunkTable, *,
                 mmi_manage: int, mmi_handler_register: int, handler_table: int,
                 save_states: list[tuple[int, int]], io_read: Callable[[int, int], int],
                 io_write: Callable[[int, int, int], None]) -> None:
        self.memory = memory
        self.heap = heap
        self.thunks = thunks
        self.db = ProtocolDatabase()
        self.findings: list[Finding] = []
        self.unresolved: list[UnresolvedRequest] = []
        self.calls: dict[str, int] = {}
        self._handler_table = handler_table
        self._io_read = io_read
        self._io_write = io_write
        self._caller = 0
        self.symbolize: Callable[[int], str | None] = lambda _address: None
        """Names an address as ``image+offset``; the Machine sets it once images exist."""
        self._cpu: Cpu | None = None
        self.tables = _Tables()
        self._build(mmi_manage, mmi_handler_register, save_states)

    # -- construction -----------------------------------------------------------
    def pool(self, size: int) -> int:
        """SMRAM for the runtime's own objects.

        Raises:
            MemoryError: the SMRAM heap is exhausted.
        """
        address = self.heap.allocate_pool(size)
        if address is None:
            raise MemoryError("the SMRAM heap is exhausted")
        self.memory.write(address, bytes(size))
        return address

    def _build(self, mmi_manage: int, mmi_handler_register: int,
               save_states: list[tuple[int, int]]) -> None:
        mem = self.memory
        mmst = self.pool(MMST_SIZE)
        vendor = self.pool(32)
        mem.write(vendor, "smmemu".encode("utf-16-le") + b"\0\0")
        sizes = self.pool(8 * len(save_states))
        pointers = self.pool(8 * len(save_states))
        for index, (address, size) in enumerate(save_states):
            mem.put_u64(sizes + 8 * index, size)
            mem.put_u64(pointers + 8 * index, address)
        self.tables.config = self.pool(24 * 32)
        mem.write(mmst, struct.pack("<QIII", MMST_SIGNATURE, MMST_REVISION, MMST_SIZE, 0))
        mem.put_u64(mmst + 0x18, vendor)
        mem.write(mmst + 0x20, struct.pack("<I", 0x0001_0000))
        services: dict[int, tuple[str, Callable[[Cpu], int]]] = {
            0x28: ("MmInstallConfigurationTable", self._install_configuration_table),
            0x30: ("MmIo.Mem.Read", self._mem_read), 0x38: ("MmIo.Mem.Write", self._mem_write),
            0x40: ("MmIo.Io.Read", self._io_read_service),
            0x48: ("MmIo.Io.Write", self._io_write_service),
            0x50: ("MmAllocatePool", self._allocate_pool), 0x58: ("MmFreePool", self._free_pool),
            0x60: ("MmAllocatePages", self._allocate_pages),
            0x68: ("MmFreePages", self._free_pages),
            0x70: ("MmStartupThisAp", self._startup_this_ap),
            0xA8: ("MmInstallProtocolInterface", self._install_protocol),
            0xB0: ("MmUninstallProtocolInterface", self._uninstall_protocol),
            0xB8: ("MmHandleProtocol", self._handle_protocol),
            0xC0: ("MmRegisterProtocolNotify", self._register_notify),
            0xC8: ("MmLocateHandle", self._locate_handle),
            0xD0: ("MmLocateProtocol", self._locate_protocol),
            0xE8: ("MmiHandlerUnRegister", self._mmi_unregister),
        }
        for offset, (name, run) in services.items():
            mem.put_u64(mmst + offset, self.thunks.add(name, run))
        mem.put_u64(mmst + 0x78, 0)
        mem.put_u64(mmst + 0x80, len(save_states))
        mem.put_u64(mmst + 0x88, sizes)
        mem.put_u64(mmst + 0x90, pointers)
        mem.put_u64(mmst + 0x98, 0)
        mem.put_u64(mmst + 0xA0, self.tables.config)
        mem.put_u64(mmst + 0xD8, mmi_manage)
        mem.put_u64(mmst + 0xE0, mmi_handler_register)
        self.tables.mmst = mmst

    # -- dispatch -----------------------------------------------------------------
    def host_call(self, cpu: Cpu, thunk: int) -> None:
        """The CPU's host-call handler: run the service, status in RAX."""
        service = self.thunks.lookup(thunk)
        self._cpu = cpu
        self._caller = self.memory.u64(cpu.engine.reg("rsp"))
        status: int = EfiStatus.UNSUPPORTED
        if service is not None:
            self.calls[service.name] = self.calls.get(service.name, 0) + 1
            try:
                status = service.run(cpu)
            except MemoryAccessError as err:
                # A guest pointer outside RAM: the guest gets an error status and the
                # run goes on; the host never unwinds through Unicorn.
                self.report("bad-pointer", f"{service.name} called from "
                                           f"{self.where(self._caller)} with a buffer outside "
                                           f"RAM ({err.address:#x}, {err.size} bytes)",
                            err.address)
                status = EfiStatus.INVALID_PARAMETER
        cpu.engine.set_reg("rax", int(status))

    @property
    def caller(self) -> int:
        """The return address of the service call being performed."""
        return self._caller

    def where(self, address: int) -> str:
        """``image+offset (0x…)`` for an address, or just the address when no image holds it."""
        name = self.symbolize(address)
        return f"{name} ({address:#x})" if name else f"{address:#x}"

    def unsupported(self, name: str, why: str = "not emulated") -> Callable[[Cpu], int]:
        """A service body for ``name`` that reports each call (with the caller) and fails."""
        def run(_cpu: Cpu) -> int:
            self.report("unsupported-service",
                        f"{name} called from {self.where(self._caller)}: {why}")
            return EfiStatus.UNSUPPORTED

        return run

    def report(self, kind: str, message: str, address: int | None = None) -> None:
        """Record a finding for the run report."""
        self.findings.append(Finding(kind, message, address))

    def install_event_protocol(self, cpu: Cpu, guid: uuid.UUID) -> None:
        """Install an SMM event protocol (ReadyToLock, EndOfDxe) once, firing its notifications.

        PiSmmCore does this when DXE signals the event through an MMI.
        """
        if self.db.locate(guid) is not None:
            return
        guid_ptr = self.pool(16)
        self.memory.write(guid_ptr, guid.bytes_le)
        handle_ptr = self.pool(8)
        self.install(cpu, handle_ptr, guid, 0, guid_ptr)

    # -- memory -------------------------------------------------------------------
    def _allocate_pool(self, cpu: Cpu) -> int:
        size, out = cpu.argument(1), cpu.argument(2)
        if out == 0:
            return _INVALID
        address = self.heap.allocate_pool(size)
        if address is None:
            return _NO_MEMORY
        self.memory.put_u64(out, address)
        return _SUCCESS

    def _free_pool(self, cpu: Cpu) -> int:
        return self.free_pool(cpu, "MmFreePool")

    def free_pool(self, cpu: Cpu, service: str) -> int:
        """FreePool of the pool both MmFreePool and gBS->FreePool use; misuse named by service."""
        address = cpu.argument(0)
        if self.heap.free(address, caller=self._caller):
            return _SUCCESS
        misuse = self.heap.misuse[-1]
        self.report(misuse.kind, f"{service}({address:#x}) from {self.where(self._caller)}: "
                                 f"{misuse.kind.replace('-', ' ')}", address)
        return _INVALID

    def _allocate_pages(self, cpu: Cpu) -> int:
        kind, pages, out = cpu.argument(0), cpu.argument(2), cpu.argument(3)
        if out == 0:
            return _INVALID
        wanted = self.memory.u64(out) if kind == 2 else None  # AllocateAddress
        address = self.heap.allocate_pages(pages, at=wanted)
        if address is None:
            return _NO_MEMORY
        if kind == 1 and address + pages * PAGE > self.memory.u64(out) + 1:  # AllocateMaxAddress
            self.heap.free(address, pages=pages)  # not where the caller can use it: give back
            return _NOT_FOUND
        self.memory.put_u64(out, address)
        return _SUCCESS

    def _free_pages(self, cpu: Cpu) -> int:
        address, pages = cpu.argument(0), cpu.argument(1)
        if self.heap.free(address, pages=pages, caller=self._caller):
            return _SUCCESS
        misuse = self.heap.misuse[-1]
        self.report(misuse.kind, f"MmFreePages({address:#x}, {pages}) from "
                                 f"{self.where(self._caller)}: "
                                 f"{misuse.kind.replace('-', ' ')}", address)
        return _NOT_FOUND

    def _mem_read(self, cpu: Cpu) -> int:
        width, address, count, buffer = (cpu.argument(i) for i in range(1, 5))
        size = (1 << (width & 3)) * count
        self.memory.write(buffer, self.memory.read(address, size))
        return _SUCCESS

    def _mem_write(self, cpu: Cpu) -> int:
        width, address, count, buffer = (cpu.argument(i) for i in range(1, 5))
        size = (1 << (width & 3)) * count
        self.memory.write(address, self.memory.read(buffer, size))
        return _SUCCESS

    def _io_read_service(self, cpu: Cpu) -> int:
        width, port, count, buffer = (cpu.argument(i) for i in range(1, 5))
        step = 1 << (width & 3)
        for index in range(count):
            value = self._io_read(port, step)
            self.memory.write(buffer + index * step, value.to_bytes(step, "little"))
        return _SUCCESS

    def _io_write_service(self, cpu: Cpu) -> int:
        width, port, count, buffer = (cpu.argument(i) for i in range(1, 5))
        step = 1 << (width & 3)
        for index in range(count):
            value = int.from_bytes(self.memory.read(buffer + index * step, step), "little")
            self._io_write(port, step, value)
        return _SUCCESS

    def _startup_this_ap(self, cpu: Cpu) -> int:
        procedure, cpu_number, argument = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        self.report("startup-this-ap", f"MmStartupThisAp({procedure:#x}, CPU {cpu_number}) "
                                       "ran the procedure on the calling CPU", procedure)
        result = cpu.call_guest(procedure, [argument])
        return _SUCCESS if result is not None else EfiStatus.DEVICE_ERROR

    def _install_configuration_table(self, cpu: Cpu) -> int:
        # (SystemTable, Guid, Table, TableSize): PI Vol. 4 MmInstallConfigurationTable.
        guid_ptr, table = cpu.argument(1), cpu.argument(2)
        guid = self.memory.guid(guid_ptr)
        entries = [(g, t) for g, t in self.tables.config_entries if g != guid]
        if table:
            entries.append((guid, table))
        elif len(entries) == len(self.tables.config_entries):
            return _NOT_FOUND
        self.tables.config_entries = entries[:32]
        blob = b"".join(g.bytes_le + struct.pack("<Q", t) for g, t in self.tables.config_entries)
        self.memory.write(self.tables.config, blob)
        self.memory.put_u64(self.tables.mmst + 0x98, len(self.tables.config_entries))
        return _SUCCESS

    # -- protocols ------------------------------------------------------------------
    def _install_protocol(self, cpu: Cpu) -> int:
        handle_ptr, guid_ptr, interface = cpu.argument(0), cpu.argument(1), cpu.argument(3)
        if handle_ptr == 0 or guid_ptr == 0:
            return _INVALID
        return self.install(cpu, handle_ptr, self.memory.guid(guid_ptr), interface, guid_ptr)

    def install(self, cpu: Cpu, handle_ptr: int, guid: uuid.UUID, interface: int,
                guid_ptr: int) -> int:
        """Install and fire the notifications registered for ``guid``."""
        handle = self.memory.u64(handle_ptr)
        if handle == 0:
            handle = self.pool(16)
            self.memory.put_u64(handle_ptr, handle)
        if not self.db.install(handle, guid, interface, self._caller):
            return _INVALID
        for note in self.db.notifications_for(guid):
            cpu.call_guest(note.function, [guid_ptr, interface, handle])
        return _SUCCESS

    def _uninstall_protocol(self, cpu: Cpu) -> int:
        handle, guid_ptr, interface = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        ok = self.db.uninstall(handle, self.memory.guid(guid_ptr), interface)
        return _SUCCESS if ok else _NOT_FOUND

    def _handle_protocol(self, cpu: Cpu) -> int:
        handle, guid_ptr, out = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        if out == 0:
            return _INVALID
        interface = self.db.interface(handle, self.memory.guid(guid_ptr))
        if interface is None:
            return EfiStatus.UNSUPPORTED
        self.memory.put_u64(out, interface)
        return _SUCCESS

    def _register_notify(self, cpu: Cpu) -> int:
        guid_ptr, function, out = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        if guid_ptr == 0 or out == 0:
            return _INVALID
        if function == 0:
            return _SUCCESS if self.db.forget(self.memory.u64(out)) else _NOT_FOUND
        registration = self.pool(16)
        self.db.notify(registration, self.memory.guid(guid_ptr), function)
        self.memory.put_u64(out, registration)
        return _SUCCESS

    def _locate_handle(self, cpu: Cpu) -> int:
        search, guid_ptr, key, size_ptr, buffer = (cpu.argument(i) for i in range(5))
        if search == 0:
            handles = list(self.db.handles)
        elif search == 1:
            note = next((n for n in self.db.notifications if n.registration == key), None)
            record = None if note is None else self.db.locate_after(note)
            handles = [] if record is None else [record.handle]
        else:
            handles = self.db.handles_with(self.memory.guid(guid_ptr))
        if not handles:
            return _NOT_FOUND
        needed = 8 * len(handles)
        available = self.memory.u64(size_ptr)
        self.memory.put_u64(size_ptr, needed)
        if available < needed:
            return EfiStatus.BUFFER_TOO_SMALL
        self.memory.write(buffer, b"".join(struct.pack("<Q", h) for h in handles))
        return _SUCCESS

    def _locate_protocol(self, cpu: Cpu) -> int:
        guid_ptr, registration, out = cpu.argument(0), cpu.argument(1), cpu.argument(2)
        if out == 0 or guid_ptr == 0:
            return _INVALID
        guid = self.memory.guid(guid_ptr)
        if registration:
            note = next((n for n in self.db.notifications if n.registration == registration),
                        None)
            record = None if note is None else self.db.locate_after(note)
        else:
            record = self.db.locate(guid)
        if record is None:
            self.memory.put_u64(out, 0)
            if not registration:
                self.unresolved.append(UnresolvedRequest("MmLocateProtocol", guid, self._caller))
            return _NOT_FOUND
        self.memory.put_u64(out, record.interface)
        return _SUCCESS

    def _mmi_unregister(self, cpu: Cpu) -> int:
        handle = cpu.argument(0)
        first = self._handler_table + 0x10
        if handle < first or (handle - first) % 0x20 or handle >= first + 64 * 0x20:
            return _INVALID
        if not self.memory.u64(handle) & 1:
            return _INVALID
        self.memory.put_u64(handle, 0)
        return _SUCCESS
