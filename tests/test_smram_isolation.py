"""TSEG outside SMM: reads all-ones, writes dropped and recorded (smm_semantics.md 4.3, item 13)."""

from __future__ import annotations

import struct

from helpers import EFI_SUCCESS

from smmemu import ECHO_HANDLER_GUID, Machine, StopReason


# movabs rax, [addr] ; hlt
def _read_guest(address: int) -> bytes:
    return b"\x48\xa1" + struct.pack("<Q", address) + b"\xf4"


# movabs rax, imm64 ; movabs [addr], rax ; hlt
def _write_guest(address: int, value: int) -> bytes:
    return (b"\x48\xb8" + struct.pack("<Q", value) + b"\x48\xa3" + struct.pack("<Q", address)
            + b"\xf4")


def test_item13_guest_read_of_smram_outside_smm_returns_all_ones(machine: Machine) -> None:
    smbase = machine.profile.smbase
    real = machine.read_physical(smbase + 0x8000, 8, smm=True)
    assert real != b"\xff" * 8
    result = machine.run_guest(_read_guest(smbase + 0x8000))
    assert result.stop is StopReason.HALTED
    assert result.registers["rax"] == 0xFFFF_FFFF_FFFF_FFFF
    assert [a.kind for a in result.smram_accesses] == ["read", "read"]
    assert all(a.source == "guest" and a.address >= smbase for a in result.smram_accesses)


def test_item13_guest_write_to_smram_outside_smm_is_dropped_and_recorded(machine: Machine) -> None:
    target = machine.profile.smbase + 0x1_0000
    before = machine.read_physical(target, 8, smm=True)
    result = machine.run_guest(_write_guest(target, 0xDEAD_BEEF_CAFE_F00D))
    assert result.stop is StopReason.HALTED
    assert machine.read_physical(target, 8, smm=True) == before
    writes = [a for a in result.smram_accesses if a.kind == "write"]
    assert writes
    assert writes[0].address == target
    assert writes[0].rip == 0x2_0000 + 10


def test_item13_smm_still_sees_real_smram_after_a_blocked_access(machine: Machine) -> None:
    machine.run_guest(_read_guest(machine.profile.smbase))
    assert machine.communicate(ECHO_HANDLER_GUID, b"after").data == b"after"
    again = machine.run_guest(_read_guest(machine.profile.smbase + 0x8000))
    assert again.registers["rax"] == 0xFFFF_FFFF_FFFF_FFFF


def test_item13_host_read_outside_smm_returns_all_ones_and_is_recorded(q35: Machine) -> None:
    base, size = q35.smram[0]
    data = q35.read_physical(base - 4, 8)
    assert data[4:] == b"\xff" * 4
    assert q35.smram_accesses[-1].source == "host"
    assert q35.smram_accesses[-1].address == base
    assert q35.read_physical(base + size - 16, 16, smm=True) is not None


def test_item13_host_write_outside_smm_is_dropped_and_recorded(q35: Machine) -> None:
    address = q35.profile.smbase + 0x8000
    before = q35.read_physical(address, 4, smm=True)
    q35.write_physical(address, b"\x90\x90\x90\x90")
    assert q35.read_physical(address, 4, smm=True) == before
    access = q35.smram_accesses[-1]
    assert (access.source, access.kind, access.address, access.size) == ("host", "write",
                                                                         address, 4)
    assert q35.communicate(ECHO_HANDLER_GUID, b"core intact").status == EFI_SUCCESS


def test_item13_non_smm_jump_into_smram_is_refused(q35: Machine) -> None:
    # movabs rax, entry ; jmp rax
    entry = q35.profile.smbase + 0x8000
    code = b"\x48\xb8" + struct.pack("<Q", entry) + b"\xff\xe0"
    result = q35.run_guest(code)
    assert result.stop is StopReason.SMRAM_FETCH
    assert q35.communicate(ECHO_HANDLER_GUID, b"usable").data == b"usable"


def test_item13_cached_smram_code_does_not_leak_to_non_smm(q35: Machine) -> None:
    """SMM code is translated by earlier SMIs; a non-SMM jump to it must still be refused."""
    for _ in range(3):
        q35.communicate(ECHO_HANDLER_GUID, b"warm the cache")
    target = q35.image.symbols["mmi_manage"]
    result = q35.run_guest(b"\x48\xb8" + struct.pack("<Q", target) + b"\xff\xe0")
    assert result.stop is StopReason.SMRAM_FETCH
