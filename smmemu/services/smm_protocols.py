"""Protocols real SMM drivers expect in the MM protocol database.

* ``EFI_MM_SW_DISPATCH2_PROTOCOL`` (PI Vol. 4, GUID 18a3c6dc-...): Register,
  UnRegister, MaximumSwiValue. A root MMI handler (a host thunk in the MM
  core's own handler table) reads APM_CNT on every SMI and calls each
  registered DispatchFunction(DispatchHandle, Context, CommBuffer =
  EFI_MM_SW_CONTEXT {SwSmiCpuIndex, CommandPort, DataPort}, CommBufferSize),
  as edk2's SmmSwDispatch2 driver does. The root handler's record keeps its
  place in the table but is active only while a child is registered: with no
  child it would return EFI_WARN_INTERRUPT_SOURCE_PENDING having changed
  nothing, and each call is a host call (a full stop of the CPU, about a sixth
  of a round trip; docs/performance.md).
* ``EFI_MM_CPU_PROTOCOL`` (PI Vol. 4, GUID eb346b97-...): ReadSaveState and
  WriteSaveState over the profile's save-state map, by
  ``EFI_MM_SAVE_STATE_REGISTER`` number.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from smmemu.cpu import Cpu
from smmemu.profiles import Profile, SaveStateKind
from smmemu.services.runtime import MmRuntime
from smmemu.smm.savestate import Amd64SaveStateMap, Intel64SaveStateMap
from smmemu.uefi.status import EfiStatus

__all__ = ["MM_CPU_GUID", "SW_DISPATCH2_GUID", "MmCpuProtocol", "SwDispatch2"]

SW_DISPATCH2_GUID = uuid.UUID("18a3c6dc-5eea-48c8-a1c1-b53389f98999")
MM_CPU_GUID = uuid.UUID("eb346b97-975f-4a9f-8b22-f8e92bb3d569")
_MAX_SWI = 0xFF


@dataclass(slots=True)
class _SwRegistration:
    handle: int
    function: int
    context: int
    value: int


class SwDispatch2:
    """The software-SMI dispatch protocol and its root handler."""

    def __init__(self, mm: MmRuntime, apm: Callable[[], tuple[int, int]]) -> None:
        self._mm = mm
        self._apm = apm
        self.registrations: list[_SwRegistration] = []
        mem = mm.memory
        self.interface = mm.pool(24)
        mem.put_u64(self.interface, mm.thunks.add("SwDispatch2->Register", self._register))
        mem.put_u64(self.interface + 8, mm.thunks.add("SwDispatch2->UnRegister",
                                                      self._unregister))
        mem.put_u64(self.interface + 16, _MAX_SWI)
        self.root_handler = mm.thunks.add("SwDispatch2 root MMI handler", self._root)
        self._sw_context = mm.pool(16)
        self._size = mm.pool(8)
        self._root_record: int | None = None

    def attach_root(self, record: int) -> None:
        """Take the MM core handler-table ``record`` that holds the root handler."""
        self._root_record = record
        self._sync_root()

    def _sync_root(self) -> None:
        # Record flags (mm-core.md): bit 0 registered, bit 1 root handler.
        if self._root_record is not None:
            self._mm.memory.put_u64(self._root_record, 3 if self.registrations else 2)

    def _register(self, cpu: Cpu) -> int:
        function, context, out = cpu.argument(1), cpu.argument(2), cpu.argument(3)
        if function == 0 or context == 0 or out == 0:
            return EfiStatus.INVALID_PARAMETER
        mem = self._mm.memory
        value = mem.u64(context)
        taken = {r.value for r in self.registrations}
        if value == (1 << 64) - 1:
            free = [v for v in range(1, _MAX_SWI + 1) if v not in taken]
            if not free:
                return EfiStatus.OUT_OF_RESOURCES
            value = free[0]
            mem.put_u64(context, value)
        elif value > _MAX_SWI or value in taken:
            return EfiStatus.INVALID_PARAMETER
        handle = self._mm.pool(16)
        # The dispatcher keeps its own EFI_SMM_SW_REGISTER_CONTEXT (as edk2's SMM SW
        # dispatchers keep the child context in their record): the caller's copy is often
        # on its stack, gone by the time the SMI comes.
        copy = self._mm.pool(8)
        mem.put_u64(copy, value)
        self.registrations.append(_SwRegistration(handle, function, copy, value))
        self._sync_root()
        mem.put_u64(out, handle)
        return EfiStatus.SUCCESS

    def _unregister(self, cpu: Cpu) -> int:
        handle = cpu.argument(1)
        for registration in self.registrations:
            if registration.handle == handle:
                self.registrations.remove(registration)
                self._sync_root()
                return EfiStatus.SUCCESS
        return EfiStatus.INVALID_PARAMETER

    def _root(self, cpu: Cpu) -> int:
        command, data = self._apm()
        matched = [r for r in self.registrations if r.value == command]
        mem = self._mm.memory
        for registration in matched:
            mem.write(self._sw_context, struct.pack("<QBB6x", cpu.index, command, data))
            mem.put_u64(self._size, 16)
            cpu.call_guest(registration.function, [registration.handle, registration.context,
                                                   self._sw_context, self._size])
        return EfiStatus.SUCCESS if matched else EfiStatus.WARN_INTERRUPT_SOURCE_PENDING


# EFI_MM_SAVE_STATE_REGISTER numbers (PI Vol. 4) -> (AMD64 field, Intel field).
_REGISTERS: dict[int, tuple[str, str]] = {
    20: ("ESSelector", "ES"), 21: ("CSSelector", "CS"), 22: ("SSSelector", "SS"),
    23: ("DSSelector", "DS"), 24: ("FSSelector", "FS"), 25: ("GSSelector", "GS"),
    28: ("DR7", "DR7"), 29: ("DR6", "DR6"),
    30: ("R8", "R8"), 31: ("R9", "R9"), 32: ("R10", "R10"), 33: ("R11", "R11"),
    34: ("R12", "R12"), 35: ("R13", "R13"), 36: ("R14", "R14"), 37: ("R15", "R15"),
    38: ("RAX", "RAX"), 39: ("RBX", "RBX"), 40: ("RCX", "RCX"), 41: ("RDX", "RDX"),
    42: ("RSP", "RSP"), 43: ("RBP", "RBP"), 44: ("RSI", "RSI"), 45: ("RDI", "RDI"),
    46: ("RIP", "RIP"), 51: ("RFLAGS", "RFLAGS"), 52: ("CR0", "CR0"), 53: ("CR3", "CR3"),
    54: ("CR4", "CR4"),
}
_IO = 512
_PROCESSOR_ID = 514
_LMA = 513


class MmCpuProtocol:
    """ReadSaveState / WriteSaveState for every CPU."""

    def __init__(self, mm: MmRuntime, profile: Profile, smbases: Callable[[], list[int]]) -> None:
        self._mm = mm
        self._profile = profile
        self._smbases = smbases
        self._map = (Amd64SaveStateMap if profile.save_state is SaveStateKind.AMD64
                     else Intel64SaveStateMap)
        self.interface = mm.pool(16)
        mm.memory.put_u64(self.interface, mm.thunks.add("MmCpu->ReadSaveState", self._read))
        mm.memory.put_u64(self.interface + 8, mm.thunks.add("MmCpu->WriteSaveState",
                                                            self._write))

    def _field(self, register: int, cpu_index: int) -> tuple[int, int] | None:
        names = _REGISTERS.get(register)
        smbases = self._smbases()
        if names is None or not 0 <= cpu_index < len(smbases):
            return None
        name = names[0] if self._map is Amd64SaveStateMap else names[1]
        field = getattr(self._map, name)
        base = smbases[cpu_index] + self._profile.save_state_offset
        return base + field.offset, field.size

    def _read(self, cpu: Cpu) -> int:
        width, register, cpu_index, buffer = (cpu.argument(i) for i in range(1, 5))
        mem = self._mm.memory
        if register == _PROCESSOR_ID:
            mem.write(buffer, struct.pack("<Q", cpu_index)[:width])
            return EfiStatus.SUCCESS
        if register == _LMA:
            mem.write(buffer, bytes([64])[:width])
            return EfiStatus.SUCCESS
        where = self._field(register, cpu_index)
        if where is None:
            return EfiStatus.NOT_FOUND if register == _IO else EfiStatus.UNSUPPORTED
        address, size = where
        if width > 8 or width == 0:
            return EfiStatus.INVALID_PARAMETER
        value = mem.read(address, size) + bytes(8)
        mem.write(buffer, value[:width])
        return EfiStatus.SUCCESS

    def _write(self, cpu: Cpu) -> int:
        width, register, cpu_index, buffer = (cpu.argument(i) for i in range(1, 5))
        where = self._field(register, cpu_index)
        if where is None:
            return EfiStatus.UNSUPPORTED
        address, size = where
        if width == 0 or width > size:
            return EfiStatus.INVALID_PARAMETER
        mem = self._mm.memory
        mem.write(address, mem.read(buffer, width))
        return EfiStatus.SUCCESS
