"""SMI delivery, the save-state maps and RSM (reference/smm_semantics.md section 8)."""

from __future__ import annotations

import pytest
from helpers import store_qword_handler

from smmemu import Machine, StopReason
from smmemu.smm.savestate import Amd64SaveStateMap, Intel64SaveStateMap

# mov al, 0x42 ; out 0xb2, al ; mov rbx, 0x1234 ; hlt
OUT_THEN_MARKER = bytes.fromhex("b042 e6b2 48c7c334120000 f4")
CODE_ADDRESS = 0x2_0000


def test_item01_smi_taken_at_instruction_boundary_after_the_out(machine: Machine) -> None:
    result = machine.run_guest(OUT_THEN_MARKER, address=CODE_ADDRESS, regs={"rbx": 0})
    assert result.stop is StopReason.HALTED
    assert len(result.smis) == 1
    save_state = result.smis[0].save_state
    assert save_state["rip"] == CODE_ADDRESS + 4
    assert save_state["rbx"] == 0
    assert result.registers["rbx"] == 0x1234


# mov rdi, 0x30000 ; mov al, 0x42 ; out 0xb2, al ; inc qword ptr [rdi] ; hlt
OUT_THEN_INCREMENT = bytes.fromhex("48c7c700000300 b042 e6b2 48ff07 f4")


def test_item01_instruction_after_the_out_runs_once_and_only_after_rsm(
        machine: Machine) -> None:
    machine.write_physical(0x3_0000, bytes(8))
    machine.write_physical(0x0, bytes(8))

    result = machine.run_guest(OUT_THEN_INCREMENT, address=CODE_ADDRESS)

    assert result.ok
    assert len(result.smis) == 1
    assert result.smis[0].save_state["rip"] == CODE_ADDRESS + 11
    assert machine.read_physical(0x3_0000, 8) == (1).to_bytes(8, "little")
    assert machine.read_physical(0x0, 8) == bytes(8)  # [di] in the entry state: never touched


def test_item05_save_state_holds_interrupted_registers_at_profile_offsets(machine: Machine) -> None:
    regs = {name: 0x1111_0000_0000_0000 + index for index, name in enumerate(
        ("rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
         "r14", "r15"))}
    result = machine.software_smi(0x5A, 0xA5, regs=regs)
    assert result.ok
    smbase = machine.profile.smbase
    if machine.profile.name == "q35":
        struct_type: type[Amd64SaveStateMap] | type[Intel64SaveStateMap] = Amd64SaveStateMap
        map_base, revision_offset, rax_offset, rip_offset = smbase + 0xFE00, 0xFEFC, 0xFFF8, 0xFF78
    else:
        struct_type = Intel64SaveStateMap
        map_base, revision_offset, rax_offset, rip_offset = smbase + 0xFC00, 0xFEFC, 0xFF5C, 0xFFD8
    raw = machine.read_physical(map_base, 0x10000 - (map_base - smbase), smm=True)

    def field(offset: int, size: int = 8) -> int:
        return int.from_bytes(raw[offset - (map_base - smbase):][:size], "little")

    assert field(rax_offset) & 0xFFFF == 0xA55A
    assert field(revision_offset, 4) == machine.profile.smm_revision
    assert field(rip_offset) == result.save_state["rip"]
    decoded = struct_type.from_bytes(raw)
    for name, value in regs.items():
        assert getattr(decoded, name.upper()) == value
        assert result.save_state[name] == value


def test_item05_q35_map_stores_four_bytes_into_cr0_cr4_rflags_slots(q35: Machine) -> None:
    smbase = q35.profile.smbase
    for offset in (0xFF48, 0xFF58, 0xFF70, 0xFF60, 0xFF68):
        q35.write_physical(smbase + offset + 4, b"\xee\xee\xee\xee", smm=True)
    q35.software_smi(0x10)
    for offset in (0xFF48, 0xFF58, 0xFF70, 0xFF60, 0xFF68):
        assert q35.read_physical(smbase + offset + 4, 4, smm=True) == b"\xee\xee\xee\xee"


def test_item05_q35_segment_attributes_use_qemu_encoding(q35: Machine) -> None:
    save_state = q35.software_smi(0x10).save_state
    assert save_state["cs_attributes"] == 0xA09B
    assert save_state["ds_attributes"] == 0xC093
    assert save_state["cs_limit"] == 0xFFFF_FFFF


def test_item05_intel_iomisc_describes_the_out_that_raised_the_smi() -> None:
    with Machine("intel") as m:
        save_state = m.software_smi(0x10).save_state
    # port 0xB2 in 31:16, type OUT imm (8) in 7:4, length 2 (word) in 3:1, SmiFlag in bit 0
    assert save_state["io_misc"] == (0xB2 << 16) | (8 << 4) | (2 << 1) | 1


def test_item07_handler_changing_saved_rax_changes_callers_rax(machine: Machine) -> None:
    offset = 0xFFF8 if machine.profile.name == "q35" else 0xFF5C
    machine.install_handler(store_qword_handler(machine.profile.smbase + offset,
                                                0x0123_4567_89AB_CDEF), None)
    result = machine.software_smi(0x42, regs={"rax": 0x1})
    assert result.ok
    assert result.save_state["rax"] & 0xFFFF == 0x0042
    assert result.registers["rax"] == 0x0123_4567_89AB_CDEF


def test_item07_handler_changing_saved_rip_redirects_the_return(q35: Machine) -> None:
    # mov al, 0x42 ; out 0xb2, al ; mov rbx, 0x1 ; hlt ; mov rbx, 0x2 ; hlt
    code = bytes.fromhex("b042 e6b2 48c7c301000000 f4 48c7c302000000 f4")
    q35.install_handler(store_qword_handler(q35.profile.smbase + 0xFF78, CODE_ADDRESS + 12), None)
    result = q35.run_guest(code, address=CODE_ADDRESS)
    assert result.ok
    assert result.registers["rbx"] == 2


def test_item07_rsm_leaves_cr2_as_smm_left_it(q35: Machine) -> None:
    q35.run_guest(bytes.fromhex("f4"), regs={"cr2": 0xC2C2})
    result = q35.software_smi(0x10)
    assert result.ok
    assert q35.cpu.engine.reg("cr2") == 0xC2C2


@pytest.mark.parametrize("profile", ["q35", "intel"])
def test_item03_entry_state_is_architectural(profile: str) -> None:
    with Machine(profile) as m:
        seen: dict[str, int] = {}
        engine = m.cpu.engine
        entry = m.profile.smbase + 0x8000

        def on_entry(_address: int, _size: int) -> None:
            if not seen:
                for name in ("cs", "rip", "rflags", "cr0", "cr4", "efer", "dr7", "ds", "ss"):
                    seen[name] = engine.reg(name)

        engine.on_code(entry, entry, on_entry)
        engine.invalidate_code(entry, entry + 1)
        before_cr0 = engine.reg("cr0")
        assert m.software_smi(0x10).ok
    assert seen["cs"] == (m.profile.smbase >> 4) & 0xFFFF
    assert seen["rip"] == 0x8000
    assert seen["rflags"] == 0x2
    assert seen["cr0"] == before_cr0 & ~0x8000_000D
    assert (seen["cr4"], seen["efer"], seen["dr7"]) == (0, 0, 0x400)
    assert (seen["ds"], seen["ss"]) == (0, 0)


def test_runs_leave_cr2_alone_under_the_guests_own_page_tables(q35: Machine) -> None:
    # Tables at 0x10000 identity-mapping only the low 2 MiB (no TSEG, nothing at 1 GiB).
    q35.write_physical(0x1_0000, (0x1_1003).to_bytes(8, "little") + bytes(0xFF8))
    q35.write_physical(0x1_1000, (0x1_2003).to_bytes(8, "little") + bytes(0xFF8))
    q35.write_physical(0x1_2000, (0x83).to_bytes(8, "little") + bytes(0xFF8))
    # mov eax, 0x10000 ; mov cr3, rax
    assert q35.run_guest(bytes.fromhex("b800000100 0f22d8")).stop is StopReason.HALTED
    # mov al, 0x42 ; out 0xb2, al ; mov rbx, cr2 ; mov rax, [0x40000000]
    result = q35.run_guest(bytes.fromhex("b042 e6b2 0f20d3 488b042500000040"))

    assert len(result.smis) == 1
    assert result.registers["rbx"] == 0  # no earlier run or SMI left a page fault behind
    assert result.stop is StopReason.GUEST_FAULT
    assert "exception 14" in result.detail  # a #PF, not a #DF from a silent earlier fault
