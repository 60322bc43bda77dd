"""MSRs emulated without touching guest code (smm_semantics.md 4.1-4.2; checklist 15, 16, 23)."""

from __future__ import annotations

import struct
import uuid

import pytest

from smmemu import Machine, StopReason

HANDLER = uuid.UUID("35a00000-0000-4000-8000-0000000000a1")


def _rdmsr_handler(msr: int, out: int) -> bytes:
    """Root handler: store rdmsr(msr) at ``out``.

    mov ecx, msr ; rdmsr ; shl rdx, 32 ; or rax, rdx ; movabs rcx, out ;
    mov [rcx], rax ; xor eax, eax ; ret
    """
    return (b"\xb9" + struct.pack("<I", msr) + bytes.fromhex("0f32 48c1e220 4809d0")
            + b"\x48\xb9" + struct.pack("<Q", out) + bytes.fromhex("488901 31c0 c3"))


def _wrmsr_handler(msr: int, value: int) -> bytes:
    """Root handler: wrmsr(msr, value).

    mov ecx, msr ; mov eax, lo ; mov edx, hi ; wrmsr ; xor eax, eax ; ret
    """
    return (b"\xb9" + struct.pack("<I", msr) + b"\xb8" + struct.pack("<I", value & 0xFFFF_FFFF)
            + b"\xba" + struct.pack("<I", value >> 32) + bytes.fromhex("0f30 31c0 c3"))


def _read_in_smm(machine: Machine, msr: int) -> tuple[StopReason, int]:
    out = machine.profile.tseg_base + 0x7F_E000
    machine.install_handler(_rdmsr_handler(msr, out), None)
    result = machine.software_smi(0x10)
    value = struct.unpack("<Q", machine.read_physical(out, 8, smm=True))[0]
    return result.stop, value


def test_item23_apic_base_reads_bsp_bit_on_cpu0(machine: Machine) -> None:
    stop, value = _read_in_smm(machine, 0x1B)
    assert stop is StopReason.HALTED
    assert value == 0xFEE0_0900


def test_item23_apic_base_outside_smm_too(q35: Machine) -> None:
    # mov ecx, 0x1b ; rdmsr ; hlt
    result = q35.run_guest(bytes.fromhex("b91b000000 0f32 f4"))
    assert result.stop is StopReason.HALTED
    assert result.registers["rax"] == 0xFEE0_0900


def test_smbase_msr_reads_current_smbase_in_smm(machine: Machine) -> None:
    stop, value = _read_in_smm(machine, 0x9E)
    assert (stop, value) == (StopReason.HALTED, machine.profile.smbase)


def test_smbase_msr_outside_smm_is_gp(q35: Machine) -> None:
    result = q35.run_guest(bytes.fromhex("b99e000000 0f32 f4"))
    assert result.stop is StopReason.GUEST_FAULT
    assert "#GP" in result.detail


def test_item15_mtrrcap_advertises_smrr_only_on_intel(machine: Machine) -> None:
    result = machine.run_guest(bytes.fromhex("b9fe000000 0f32 f4"))
    smrr = bool(result.registers["rax"] & (1 << 11))
    assert smrr is (machine.profile.name == "intel")


def test_item15_smrr_write_outside_smm_is_gp() -> None:
    with Machine("intel") as m:
        # mov ecx, 0x1f2 ; xor eax, eax ; xor edx, edx ; wrmsr ; hlt
        result = m.run_guest(bytes.fromhex("b9f2010000 31c0 31d2 0f30 f4"))
        assert result.stop is StopReason.GUEST_FAULT


def test_item15_smrr_is_writable_in_smm_on_intel() -> None:
    with Machine("intel") as m:
        m.install_handler(_wrmsr_handler(0x1F3, 0xFF80_0800), None)
        assert m.software_smi(0x10).ok
        assert m.cpu.msr.smrr_mask == 0xFF80_0800
        assert m.cpu.msr.smrr_valid


def test_item15_smrr_msr_is_gp_in_smm_on_q35(q35: Machine) -> None:
    stop, _ = _read_in_smm(q35, 0x1F2)
    assert stop is StopReason.SMM_FAULT
    result = q35.software_smi(0x10)
    fault = result.fault
    assert fault is not None
    assert (fault.vector, fault.error_code) == (13, 0)


def test_item16_feature_control_lock_is_write_once() -> None:
    with Machine("intel") as m:
        m.install_handler(_wrmsr_handler(0x4E0, 0x1), None)
        assert m.software_smi(0x10).ok
        assert m.cpu.msr.feature_control == 1
        m.install_handler(_wrmsr_handler(0x4E0, 0x4), None)
        result = m.software_smi(0x10)
        assert result.stop is StopReason.SMM_FAULT
        assert result.fault is not None
        assert result.fault.vector == 13
        assert m.cpu.msr.feature_control == 1


def _make_comm_buffer_executable(m: Machine) -> int:
    """Clear NX on comm buffer 0's first page in the MM core's page tables; return its address."""
    address, _ = m.comm_buffer(0)
    table = m.image.constants["PML4"]
    entry = 0
    for shift in (39, 30, 21, 12):
        slot = table + ((address >> shift) & 0x1FF) * 8
        entry = struct.unpack("<Q", m.read_physical(slot, 8, smm=True))[0]
        table = entry & 0x000F_FFFF_FFFF_F000
    m.write_physical(slot, struct.pack("<Q", entry & ~(1 << 63)), smm=True)
    return address


def _call_out_handler(target: int) -> bytes:
    # movabs rax, target ; call rax ; xor eax, eax ; ret
    return b"\x48\xb8" + struct.pack("<Q", target) + bytes.fromhex("ffd0 31c0 c3")


def test_item25_call_out_from_smm_is_a_finding(q35: Machine) -> None:
    q35.software_smi(0x10)
    target = _make_comm_buffer_executable(q35)
    q35.write_physical(target, b"\xc3")
    q35.install_handler(_call_out_handler(target), HANDLER)
    reply = q35.communicate(HANDLER, b"x", buffer_id=1)
    assert reply.smi.stop is StopReason.SMM_FAULT
    assert any(f.kind == "smm-callout" and f.address == target for f in reply.smi.findings)


def test_item16_code_check_turns_a_call_out_into_a_machine_check() -> None:
    with Machine("intel") as m:
        m.install_handler(_wrmsr_handler(0x4E0, 0x5), None)
        assert m.software_smi(0x10).ok
        target = _make_comm_buffer_executable(m)
        m.write_physical(target, b"\xc3")
        m.install_handler(_call_out_handler(target), HANDLER)
        reply = m.communicate(HANDLER, b"x", buffer_id=1)
        assert reply.smi.stop is StopReason.MACHINE_CHECK
        assert any(f.kind == "machine-check" for f in reply.smi.findings)


@pytest.mark.parametrize("profile", ["q35", "intel"])
def test_smi_count_msr_counts_smis(profile: str) -> None:
    with Machine(profile) as m:
        stop, value = _read_in_smm(m, 0x34)
        assert stop is StopReason.HALTED
        assert value == m.smi_count
