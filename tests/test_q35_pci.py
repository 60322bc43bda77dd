"""Q35 MCH and ICH9 LPC configuration space (smm_semantics.md 4.3, 5.2; checklist 14, 18)."""

from __future__ import annotations

import struct

import pytest

from smmemu import ECHO_HANDLER_GUID, Machine, StopReason

ECAM = 0xB000_0000
MCH = ECAM
LPC = ECAM + (31 << 15)


def _store_byte(address: int, value: int) -> bytes:
    # movabs rax, address ; mov byte [rax], value
    return b"\x48\xb8" + struct.pack("<Q", address) + b"\xc6\x00" + bytes([value])


def _load_dword(address: int) -> bytes:
    # movabs rax, address ; mov eax, [rax]
    return b"\x48\xb8" + struct.pack("<Q", address) + b"\x8b\x00"


def _config(m: Machine, *stores: tuple[int, int]) -> None:
    code = b"".join(_store_byte(address, value) for address, value in stores) + b"\xf4"
    assert m.run_guest(code).stop is StopReason.HALTED


def _read_config(m: Machine, address: int) -> int:
    return m.run_guest(_load_dword(address) + b"\xf4").registers["rax"] & 0xFFFF_FFFF


def test_config_ports_reach_the_mch_and_absent_devices_float(q35: Machine) -> None:
    # mov eax, 0x80000000 ; mov dx, 0xcf8 ; out dx, eax ; mov dx, 0xcfc ; in eax, dx ; hlt
    code = bytes.fromhex("b800000080 66baf80c ef 66bafc0c ed f4")
    assert q35.run_guest(code).registers["rax"] & 0xFFFF_FFFF == 0x29C0_8086
    code = bytes.fromhex("b800080080 66baf80c ef 66bafc0c ed f4")  # device 1
    assert q35.run_guest(code).registers["rax"] & 0xFFFF_FFFF == 0xFFFF_FFFF


def test_ecam_reads_the_lpc_pmbase(q35: Machine) -> None:
    assert _read_config(q35, LPC + 0x40) & 0xFF80 == 0x600


def test_item14_t_en_clear_opens_tseg_to_non_smm_code(machine: Machine) -> None:
    smbase = machine.profile.smbase
    real = machine.read_physical(smbase + 0x8000, 4, smm=True)
    _config(machine, (MCH + 0x9E, 0x04))  # TSEG_SZ 8 MiB, T_EN clear
    seen = machine.run_guest(_load_dword(smbase + 0x8000) + b"\xf4").registers["rax"]
    assert (seen & 0xFFFF_FFFF).to_bytes(4, "little") == real
    assert machine.read_physical(smbase + 0x8000, 4) == real
    _config(machine, (MCH + 0x9E, 0x05))
    closed = machine.run_guest(_load_dword(smbase + 0x8000) + b"\xf4").registers["rax"]
    assert closed & 0xFFFF_FFFF == 0xFFFF_FFFF
    assert machine.communicate(ECHO_HANDLER_GUID, b"ok").data == b"ok"


def test_item14_g_smrame_clear_also_opens_tseg(q35: Machine) -> None:
    _config(q35, (MCH + 0x9D, 0x02))
    smbase = q35.profile.smbase
    assert q35.read_physical(smbase + 0x8000, 1) != b"\xff"


def test_item14_d_lck_freezes_smram_controls_and_reports_attempts(machine: Machine) -> None:
    _config(machine, (MCH + 0x9D, 0x1A))  # G_SMRAME | D_LCK
    _config(machine, (MCH + 0x9D, 0x5A), (MCH + 0x9E, 0x00), (MCH + 0x9E, 0x03))
    assert _read_config(machine, MCH + 0x9C) >> 8 & 0xFFFF == 0x051A
    assert machine.mch.locked
    assert machine.mch.tseg_closed
    assert len(machine.refused_writes) == 3
    assert {w.reason for w in machine.refused_writes} == {"D_LCK set"}


def test_item14_setting_d_lck_clears_d_open(q35: Machine) -> None:
    _config(q35, (MCH + 0x9D, 0x4A))  # D_OPEN | G_SMRAME
    _config(q35, (MCH + 0x9D, 0x5A))  # + D_LCK
    assert (_read_config(q35, MCH + 0x9C) >> 8) & 0xFF == 0x1A


def test_item18_smi_lock_freezes_gbl_smi_en(machine: Machine) -> None:
    _config(machine, (LPC + 0xA0, 0x10))  # GEN_PMCON_1.SMI_LOCK
    # mov dx, 0x630 ; in eax, dx ; and eax, ~1 ; out dx, eax ; in eax, dx ; hlt
    code = bytes.fromhex("66ba3006 ed 83e0fe ef ed f4")
    assert machine.run_guest(code).registers["rax"] & 1 == 1
    _config(machine, (LPC + 0xA0, 0x00))
    assert machine.lpc.smi_lock
    assert machine.communicate(ECHO_HANDLER_GUID, b"still").data == b"still"


@pytest.mark.parametrize("profile", ["q35", "intel"])
def test_item18_without_smi_lock_gbl_smi_en_can_be_cleared(profile: str) -> None:
    with Machine(profile) as m:
        code = bytes.fromhex("66ba3006 ed 83e0fe ef ed f4")
        assert m.run_guest(code).registers["rax"] & 1 == 0
