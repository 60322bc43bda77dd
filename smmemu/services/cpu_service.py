"""EFI_SMM_CPU_SERVICE_PROTOCOL and CPU_HOT_PLUG_DATA: what edk2's PiSmmCpuDxeSmm provides.

smmemu's CPU model takes PiSmmCpuDxeSmm's place, so the protocol it installs for other
drivers comes from here (UefiCpuPkg/Include/Protocol/SmmCpuService.h, gEfiSmmCpuService
ProtocolGuid 1d202cab-c8ab-4d5c-94f7-3cfcc0d3d335):

    { GetProcessorInfo, SwitchBsp, AddProcessor, RemoveProcessor, WhoAmI,
      RegisterExceptionHandler }

GetProcessorInfo fills an EFI_PROCESSOR_INFORMATION (PI 1.8 Vol. 2, MP services:
ProcessorId UINT64, StatusFlag UINT32, Location {Package, Core, Thread} UINT32 each) with
APIC ID = CPU index, one package, one core per CPU. WhoAmI gives the calling CPU's index.
Hot-add/remove and BSP switching are not modelled: they return EFI_UNSUPPORTED and record a
finding, as does RegisterExceptionHandler (the MM core owns the IDT).

PiSmmCpuDxeSmm also publishes CPU_HOT_PLUG_DATA (UefiCpuPkg/Include/CpuHotPlugData.h:
Revision, ArrayLength, ApicId *, SmBase *, IEDBase, SmrrBase, SmrrSize) through
PcdCpuHotPlugDataAddress; :func:`build_hot_plug_data` lays one out in SMRAM with the
present CPUs' APIC IDs and SMBASEs and MAX_UINT64 for the possible-but-absent ones.
OVMF's SmmCpuFeaturesLib adds CPU_HOT_EJECT_DATA (OvmfPkg/Include/Pcd/CpuHotEjectData.h:
QemuSelectorMap *, Handler, ArrayLength) through PcdCpuHotEjectDataAddress when more than
one CPU is possible; :func:`build_hot_eject_data` lays one out with every selector
CPU_EJECT_QEMU_SELECTOR_INVALID and no handler.
"""

from __future__ import annotations

import struct
import uuid

from smmemu.cpu import Cpu
from smmemu.services.runtime import MmRuntime
from smmemu.uefi.status import EfiStatus

__all__ = ["CPU_SERVICE_GUID", "CpuServiceProtocol", "build_hot_eject_data",
           "build_hot_plug_data"]

CPU_SERVICE_GUID = uuid.UUID("1d202cab-c8ab-4d5c-94f7-3cfcc0d3d335")
_STATUS_BSP, _STATUS_ENABLED, _STATUS_HEALTHY = 0x1, 0x2, 0x4
_PROCESSOR_INFORMATION = struct.Struct("<QIIII")
_NOT_MODELLED = ("SwitchBsp", "AddProcessor", "RemoveProcessor", "RegisterExceptionHandler")
_HOT_PLUG_HEADER = struct.Struct("<IIQQQII")
_REVISION_1 = 1
_ABSENT = (1 << 64) - 1


class CpuServiceProtocol:
    """The six-function EFI_SMM_CPU_SERVICE_PROTOCOL over ``cpu_count`` CPUs."""

    def __init__(self, mm: MmRuntime, cpu_count: int) -> None:
        self._mm = mm
        self._count = cpu_count
        runs = {"GetProcessorInfo": self._get_processor_info, "WhoAmI": self._who_am_i}
        names = ("GetProcessorInfo", "SwitchBsp", "AddProcessor", "RemoveProcessor", "WhoAmI",
                 "RegisterExceptionHandler")
        self.interface = mm.pool(8 * len(names))
        for index, name in enumerate(names):
            run = runs.get(name) or mm.unsupported(f"SmmCpuService->{name}", "not modelled")
            mm.memory.put_u64(self.interface + 8 * index,
                              mm.thunks.add(f"SmmCpuService->{name}", run))

    def _get_processor_info(self, cpu: Cpu) -> int:
        number, out = cpu.argument(1), cpu.argument(2)
        if out == 0:
            return EfiStatus.INVALID_PARAMETER
        if number >= self._count:
            return EfiStatus.NOT_FOUND
        flags = _STATUS_ENABLED | _STATUS_HEALTHY | (_STATUS_BSP if number == 0 else 0)
        self._mm.memory.write(out, _PROCESSOR_INFORMATION.pack(number, flags, 0, number, 0))
        return EfiStatus.SUCCESS

    def _who_am_i(self, cpu: Cpu) -> int:
        out = cpu.argument(1)
        if out == 0:
            return EfiStatus.INVALID_PARAMETER
        self._mm.memory.put_u64(out, cpu.index)
        return EfiStatus.SUCCESS


def build_hot_plug_data(mm: MmRuntime, smbases: list[int], possible: int) -> int:
    """CPU_HOT_PLUG_DATA in SMRAM for ``possible`` CPUs, the first ``len(smbases)`` present."""
    apic_ids = mm.pool(8 * possible)
    smbase_array = mm.pool(8 * possible)
    for index in range(possible):
        present = index < len(smbases)
        mm.memory.put_u64(apic_ids + 8 * index, index if present else _ABSENT)
        mm.memory.put_u64(smbase_array + 8 * index, smbases[index] if present else 0)
    data = mm.pool(_HOT_PLUG_HEADER.size)
    mm.memory.write(data, _HOT_PLUG_HEADER.pack(_REVISION_1, possible, apic_ids, smbase_array,
                                                 0, 0, 0))
    return data


def build_hot_eject_data(mm: MmRuntime, possible: int) -> int:
    """CPU_HOT_EJECT_DATA in SMRAM: no pending ejects, no handler registered yet."""
    selectors = mm.pool(8 * possible)
    for index in range(possible):
        mm.memory.put_u64(selectors + 8 * index, _ABSENT)
    data = mm.pool(24)
    mm.memory.write(data, struct.pack("<QQI4x", selectors, 0, possible))
    return data
