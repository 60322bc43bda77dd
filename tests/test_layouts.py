"""Guest-visible layouts against the specifications' offsets."""

from __future__ import annotations

import pytest

from smmemu.smm.savestate import Amd64SaveStateMap, Intel64SaveStateMap, attributes_from_flags
from smmemu.uefi.communicate import (
    EfiMmCommunicateHeader,
    MmCommBuffer,
    MmCommBufferStatus,
    MmSupervisorRequestHeader,
    MmSupervisorUnblockMemoryParams,
    MmSupervisorVersionInfo,
)

# edk2 MdePkg/Include/Register/Intel/SmramSaveStateMap.h, SMRAM_SAVE_STATE_MAP64 (state+0x7Cxx).
INTEL = {
    "GdtBaseHiDword": 0x7DD0, "IO_EIP": 0x7DE8, "CR4": 0x7E40, "GdtBaseLoDword": 0x7E8C,
    "IdtBaseLoDword": 0x7E94, "LdtBaseLoDword": 0x7E9C, "SMBASE": 0x7EF8, "SMMRevId": 0x7EFC,
    "IORestart": 0x7F00, "AutoHALTRestart": 0x7F02, "R15": 0x7F1C, "R8": 0x7F54,
    "RAX": 0x7F5C, "RCX": 0x7F64, "RDX": 0x7F6C, "RBX": 0x7F74, "RSP": 0x7F7C, "RBP": 0x7F84,
    "RSI": 0x7F8C, "RDI": 0x7F94, "IOMemAddr": 0x7F9C, "IOMisc": 0x7FA4, "ES": 0x7FA8,
    "GS": 0x7FBC, "LDTR": 0x7FC0, "TR": 0x7FC4, "DR7": 0x7FC8, "DR6": 0x7FD0, "RIP": 0x7FD8,
    "IA32_EFER": 0x7FE0, "RFLAGS": 0x7FE8, "CR3": 0x7FF0, "CR0": 0x7FF8,
}
# edk2 MdePkg/Include/Register/Amd/SmramSaveStateMap.h, absolute offsets from SMBASE.
AMD = {
    "ESSelector": 0xFE00, "CSSelector": 0xFE10, "GSBase": 0xFE58, "GDTRLimit": 0xFE64,
    "GDTRBase": 0xFE68, "LDTRSelector": 0xFE70, "IDTRLimit": 0xFE84, "IDTRBase": 0xFE88,
    "TRSelector": 0xFE90, "IO_RIP": 0xFEA0, "IO_DWord": 0xFEC0, "IORestart": 0xFEC8,
    "AutoHALTRestart": 0xFEC9, "EFER": 0xFED0, "SMMRevId": 0xFEFC, "SMBASE": 0xFF00,
    "CR4": 0xFF48, "CR3": 0xFF50, "CR0": 0xFF58, "DR7": 0xFF60, "DR6": 0xFF68, "RFLAGS": 0xFF70,
    "RIP": 0xFF78, "R15": 0xFF80, "R8": 0xFFB8, "RDI": 0xFFC0, "RSP": 0xFFD8, "RBX": 0xFFE0,
    "RCX": 0xFFF0, "RAX": 0xFFF8,
}


@pytest.mark.parametrize(("field", "offset"), sorted(INTEL.items()))
def test_intel64_save_state_offsets(field: str, offset: int) -> None:
    assert 0x7C00 + Intel64SaveStateMap.offset_of(field) == offset


@pytest.mark.parametrize(("field", "offset"), sorted(AMD.items()))
def test_amd64_save_state_offsets(field: str, offset: int) -> None:
    assert 0xFE00 + Amd64SaveStateMap.offset_of(field) == offset


def test_save_state_map_sizes_reach_smbase_plus_0x10000() -> None:
    assert Intel64SaveStateMap.size() == 0x400
    assert Amd64SaveStateMap.size() == 0x200


def test_comm_layouts() -> None:
    assert EfiMmCommunicateHeader.size() == 24
    assert EfiMmCommunicateHeader.offset_of("MessageLength") == 16
    assert MmCommBuffer.size() == 24
    assert MmCommBufferStatus.size() == 24
    assert MmCommBufferStatus.offset_of("ReturnStatus") == 8
    assert MmCommBufferStatus.offset_of("ReturnBufferSize") == 16


def test_supervisor_layouts() -> None:
    assert MmSupervisorRequestHeader.size() == 24
    assert MmSupervisorRequestHeader.offset_of("Result") == 16
    assert MmSupervisorVersionInfo.size() == 16
    assert MmSupervisorUnblockMemoryParams.size() == 56
    assert MmSupervisorUnblockMemoryParams.offset_of("PhysicalStart") == 8
    assert MmSupervisorUnblockMemoryParams.offset_of("IdentifierGuid") == 0x28


@pytest.mark.parametrize(("high_dword", "attributes"), [
    (0x00AF_9B00, 0xA09B),  # 64-bit ring-0 code
    (0x00CF_9300, 0xC093),  # flat 32-bit data
    (0x00CF_9B00, 0xC09B),  # flat 32-bit code
])
def test_segment_attributes_use_qemu_encoding(high_dword: int, attributes: int) -> None:
    assert attributes_from_flags(high_dword) == attributes
