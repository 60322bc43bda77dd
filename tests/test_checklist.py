"""Architectural SMM rules, one test per item of reference/smm_semantics.md section 8.

Items covered elsewhere: 1, 3 and 5 in test_smi_entry.py; 13 in test_smram_isolation.py;
14 and 18 in test_q35_pci.py; 15, 16, 23 and 25 in test_msr.py; 17, 19 and 20 in
test_chipset.py.
"""

from __future__ import annotations

import struct

import pytest
from helpers import store_qword_handler

from smmemu import Machine, StopReason
from smmemu.boot import RESET_SMBASE, relocate_smbases

CODE = 0x2_0000


def _save_state_offset(m: Machine, q35_offset: int, intel_offset: int) -> int:
    return m.profile.smbase + (q35_offset if m.profile.name == "q35" else intel_offset)


def test_item02_smi_raised_in_smm_is_latched_and_taken_after_rsm(q35: Machine) -> None:
    # Root handler, active on APM command 0x42 only:
    # in al, 0xb2 ; cmp al, 0x42 ; jne done ; mov al, 0x77 ; out 0xb2, al ; out 0xb2, al ;
    # done: xor eax, eax ; ret
    q35.install_handler(bytes.fromhex("e4b2 3c42 7506 b077 e6b2 e6b2 31c0 c3"), None)
    # mov al, 0x42 ; out 0xb2, al ; mov rbx, 0x1234 ; hlt
    result = q35.run_guest(bytes.fromhex("b042 e6b2 48c7c334120000 f4"), regs={"rbx": 0})
    assert [smi.rsm for smi in result.smis] == [True, True]
    second = result.smis[1].save_state
    assert second["rip"] == CODE + 4  # taken before the next guest instruction
    assert second["rbx"] == 0
    assert all(smi.save_state["rip"] == CODE + 4 for smi in result.smis[1:])
    assert result.registers["rbx"] == 0x1234


def test_item04_smm_entry_has_4gib_data_and_code_limits(machine: Machine) -> None:
    smbase = machine.profile.smbase
    rcx = _save_state_offset(machine, 0xFFF0, 0xFF64) - smbase
    rbx = _save_state_offset(machine, 0xFFE0, 0xFF74) - smbase
    stub = (bytes.fromhex("6766 8b0d 00000300")       # mov ecx, [dword 0x30000]
            + bytes.fromhex("2e668b1e 0081")          # mov ebx, cs:[0x8100]
            + bytes.fromhex("2e66890e") + struct.pack("<H", rcx)   # mov cs:[rcx slot], ecx
            + bytes.fromhex("2e66891e") + struct.pack("<H", rbx)   # mov cs:[rbx slot], ebx
            + bytes.fromhex("0faa"))                   # rsm
    original = machine.read_physical(smbase + 0x8000, 0x200, smm=True)
    machine.write_physical(0x30000, struct.pack("<I", 0x1122_3344))
    planted = machine.read_physical(smbase + 0x8100, 4, smm=True)
    machine.write_physical(smbase + 0x8000, stub, smm=True)
    try:
        result = machine.software_smi(0x10, regs={"rbx": 0, "rcx": 0})
    finally:
        machine.write_physical(smbase + 0x8000, original, smm=True)
    assert result.ok
    assert result.registers["rcx"] == 0x1122_3344
    assert result.registers["rbx"] == struct.unpack("<I", planted)[0]


def test_item06_segment_attributes_round_trip_through_compatibility_mode(
        machine: Machine) -> None:
    # 64-bit: push 0x18 ; lea rax, [rip+0x3] ; push rax ; retfq   -> 32-bit code below
    # 32-bit: mov al, 0x42 ; out 0xb2, al ; <49 c7 c6 78 56 34 12> ; push 0x8 ; call $+5 ;
    #         add dword [esp], 0x5 ; retf   -> back to 64-bit ; hlt
    # After RSM, 49 c7 c6 imm32 must decode as 32-bit `dec ecx ; mov esi, 0x12345678`,
    # not as 64-bit `mov r14, 0x12345678`.
    code = (bytes.fromhex("6a18 488d0503000000 50 48cb")
            + bytes.fromhex("b042 e6b2 49c7c678563412")
            + bytes.fromhex("6a08 e800000000 83042405 cb")
            + b"\xf4")
    result = machine.run_guest(code, regs={"rcx": 10, "rsi": 0, "r14": 0})
    assert result.stop is StopReason.HALTED
    assert result.smis[0].save_state["cs"] == 0x18
    assert result.registers["rsi"] == 0x1234_5678
    assert result.registers["rcx"] & 0xFFFF_FFFF == 9
    assert result.registers["r14"] == 0


def test_item07_rsm_leaves_cr2_and_msrs_as_smm_left_them(q35: Machine) -> None:
    # Root handler: mov ecx, 0xc0000081 (STAR) ; mov eax, 0x1234 ; mov edx, 0x5678 ; wrmsr ;
    #               mov rax, 0xc2c2 ; mov cr2, rax ; xor eax, eax ; ret
    q35.install_handler(bytes.fromhex("b9810000c0 b834120000 ba78560000 0f30"
                                      "48c7c0c2c20000 0f22d0 31c0 c3"), None)
    q35.run_guest(b"\xf4", regs={"cr2": 0x1111})
    assert q35.software_smi(0x10).ok
    assert q35.cpu.engine.reg("cr2") == 0xC2C2
    assert q35.cpu.engine.native_msr(0xC000_0081) == 0x5678_0000_1234


def test_item08_rsm_outside_smm_is_invalid_opcode(machine: Machine) -> None:
    # mov rbx, 0x1 ; rsm ; mov rbx, 0x2 ; hlt
    result = machine.run_guest(bytes.fromhex("48c7c301000000 0faa 48c7c302000000 f4"))
    assert result.stop is StopReason.GUEST_FAULT
    assert "#UD" in result.detail
    assert result.registers["rbx"] == 1
    assert not result.smis


@pytest.mark.parametrize(("slot", "value", "why"), [
    ("cr0", 0x8000_0010, "PG set with PE clear"),
    ("cr0", 0x2000_0011, "NW set with CD clear"),
    ("cr4", 0x8000, "reserved bit"),
    ("cr4", 0x0, "LMA set without PAE"),
])
def test_item09_inconsistent_rsm_image_shuts_the_cpu_down(machine: Machine, slot: str,
                                                          value: int, why: str) -> None:
    offsets = {"cr0": (0xFF58, 0xFFF8), "cr4": (0xFF48, 0xFE40)}
    address = _save_state_offset(machine, *offsets[slot])
    if slot == "cr4" and machine.profile.name == "intel":
        handler = (b"\x48\xb8" + struct.pack("<Q", address)
                   + b"\xc7\x00" + struct.pack("<I", value) + bytes.fromhex("31c0c3"))
    else:
        handler = store_qword_handler(address, value)
    machine.install_handler(handler, None)
    # mov al, 0x42 ; out 0xb2, al ; mov rbx, 0x1 ; hlt
    result = machine.run_guest(bytes.fromhex("b042 e6b2 48c7c301000000 f4"), regs={"rbx": 0})
    assert result.stop is StopReason.SHUTDOWN
    assert why in result.detail
    assert result.registers["rbx"] == 0
    assert any(f.kind == "rsm-shutdown" for f in result.findings)


def test_item11_io_restart_runs_the_out_again() -> None:
    with Machine("intel") as m:
        restart = m.profile.smbase + 0xFF00
        io_misc = m.profile.smbase + 0xFFA4
        # Root handler: arm I/O restart (0xFF) only on the first SMI, detected by a flag.
        flag = m.profile.tseg_base + 0x7F_E000
        # movabs rax, flag ; cmp byte [rax], 0 ; jne done ; mov byte [rax], 1 ;
        # movabs rax, restart ; mov word [rax], 0xff ; done: xor eax, eax ; ret
        handler = (b"\x48\xb8" + struct.pack("<Q", flag) + bytes.fromhex("803800 7512 c60001")
                   + b"\x48\xb8" + struct.pack("<Q", restart)
                   + bytes.fromhex("66c700ff00 31c0 c3"))
        m.install_handler(handler, None)
        # mov dx, 0xb2 ; mov al, 0x42 ; out dx, al ; hlt
        result = m.run_guest(bytes.fromhex("66bab200 b042 ee f4"))
        assert result.stop is StopReason.HALTED
        assert len(result.smis) == 2
        assert result.smis[0].save_state["io_misc"] == (0xB2 << 16) | (0 << 4) | (1 << 1) | 1
        assert result.smis[1].save_state["rip"] == CODE + 7
        assert int.from_bytes(m.read_physical(io_misc, 4, smm=True), "little") & 1


def test_item11_io_restart_with_an_smi_pending_enters_before_the_io_instruction() -> None:
    """RSM to an I/O restart with another SMI pending: that SMI is taken at the restarted
    I/O instruction's boundary, so its map saves the I/O instruction's RIP."""
    with Machine("intel") as m:
        restart = m.profile.smbase + 0xFF00
        flag = m.profile.tseg_base + 0x7F_E000
        # First SMI only: arm I/O restart (the handler of the test above).
        handler = (b"\x48\xb8" + struct.pack("<Q", flag) + bytes.fromhex("803800 7512 c60001")
                   + b"\x48\xb8" + struct.pack("<Q", restart)
                   + bytes.fromhex("66c700ff00 31c0 c3"))
        address = m.install_handler(handler, None)
        raised: list[bool] = []

        def raise_once(_address: int, _size: int) -> None:
            if not raised:  # another SMI arrives while the first is serviced
                raised.append(True)
                m.cpu.raise_smi()

        m.cpu.engine.on_code(address, address, raise_once)
        m.cpu.engine.invalidate_code(address, address + 1)
        # mov dx, 0xb2 ; mov al, 0x42 ; out dx, al ; hlt
        result = m.run_guest(bytes.fromhex("66bab200 b042 ee f4"))
        assert result.stop is StopReason.HALTED
        assert [smi.save_state["rip"] for smi in result.smis] == [CODE + 7, CODE + 6, CODE + 7]


def test_item11_auto_halt_left_set_halts_again() -> None:
    with Machine("intel") as m:
        # hlt ; mov rbx, 0x77 ; hlt
        m.run_guest(bytes.fromhex("f4 48c7c377000000 f4"), regs={"rbx": 0})
        result = m.send_smi_ipi()
        assert result.stop is StopReason.HALTED
        assert result.smis[0].save_state["auto_halt_restart"] == 1
        assert result.registers["rbx"] == 0


def test_item11_auto_halt_cleared_resumes_after_the_hlt() -> None:
    with Machine("intel") as m:
        m.install_handler(store_qword_handler(m.profile.smbase + 0xFF00, 0), None)
        m.run_guest(bytes.fromhex("f4 48c7c377000000 f4"), regs={"rbx": 0})
        result = m.send_smi_ipi()
        assert result.stop is StopReason.HALTED
        assert result.registers["rbx"] == 0x77


def test_item11_q35_has_no_auto_halt_restart(q35: Machine) -> None:
    q35.run_guest(bytes.fromhex("f4 48c7c377000000 f4"), regs={"rbx": 0})
    result = q35.send_smi_ipi()
    assert result.smis[0].save_state["auto_halt_restart"] == 0
    assert result.registers["rbx"] == 0x77


def test_item03_entry_state_at_the_reset_smbase(q35: Machine) -> None:
    """The relocation SMI enters at 0x38000 with CS = 0x3000, CS.base = 0x30000."""
    cpu = q35.cpu
    seen: list[tuple[int, int, int]] = []

    def on_entry(_address: int, _size: int) -> None:
        blob = cpu.engine.save_context()
        base = struct.unpack_from("<Q", blob, cpu.engine.layout.seg("cs") + 8)[0]
        seen.append((cpu.engine.reg("cs"), base, cpu.engine.reg("rip")))

    cpu.engine.on_code(0x38000, 0x38000, on_entry)
    cpu.engine.invalidate_code(0x38000, 0x38001)
    cpu.smbase = RESET_SMBASE
    relocate_smbases(q35.image, q35.memory, q35.profile, [cpu], q35.budget)
    assert seen == [(0x3000, 0x30000, 0x8000)]
    assert cpu.smbase == q35.profile.tseg_base
    assert q35.software_smi(0x10).ok


def test_item28_host_code_rewrites_are_seen_by_the_cpu(q35: Machine) -> None:
    """Unicorn keeps running stale translations after a host write (unicorn_probe.md row 14)."""
    first = q35.run_guest(bytes.fromhex("48c7c301000000"), address=0x4_0000)  # mov rbx, 1
    second = q35.run_guest(bytes.fromhex("48c7c302000000"), address=0x4_0000)  # mov rbx, 2
    assert (first.registers["rbx"], second.registers["rbx"]) == (1, 2)


def test_item06_interrupted_16_bit_code_resumes_as_16_bit(machine: Machine) -> None:
    base = 0xC000
    # 64-bit: push 0x20 ; lea rax, [rip+0x3] ; push rax ; retfq      -> 16-bit code below
    # 16-bit: mov al, 0x42 ; out 0xb2, al ; 66 b8 imm32 (o32 mov eax, 0x12345678) ;
    #         o32 push 0x8 ; o32 push <hlt> ; o32 retf              -> back to 64-bit ; hlt
    # As 32- or 64-bit code, 66 b8 78 56 would be `mov ax, 0x5678` and eax would differ.
    hlt = base + 12 + 24
    code = (bytes.fromhex("6a20 488d0503000000 50 48cb")
            + bytes.fromhex("b042 e6b2 66b878563412 66680800 0000")
            + b"\x66\x68" + struct.pack("<I", hlt) + bytes.fromhex("66cb") + b"\xf4")
    result = machine.run_guest(code, address=base, regs={"rax": 0})
    assert result.stop is StopReason.HALTED
    assert result.smis[0].save_state["cs"] == 0x20
    assert result.registers["rax"] & 0xFFFF_FFFF == 0x1234_5678
