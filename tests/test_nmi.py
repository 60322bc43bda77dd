"""NMI blocking around SMM (SDM Vol. 3C "NMI Handling While in SMM"; checklist 12)."""

from __future__ import annotations

from smmemu import Machine, StopReason

# A root handler that executes IRET in SMM (to itself) and returns EFI_SUCCESS:
# mov rax, rsp ; push 0x10 ; push rax ; pushfq ; push 0x18 ; lea rax, [rip+3] ; push rax ;
# iretq ; xor eax, eax ; ret
IRET_HANDLER = bytes.fromhex("4889e0 6a10 50 9c 6a18 488d0503000000 50 48cf 31c0 c3")
# xor eax, eax ; ret
NOP_HANDLER = bytes.fromhex("31c0c3")


def test_item12_nmi_outside_smm_is_delivered_through_the_idt(machine: Machine) -> None:
    result = machine.inject_nmi()
    assert result is not None
    assert result.stop is StopReason.HALTED
    assert machine.nmi_count == 1
    assert not machine.cpu.nmi_masked


def test_item12_nmi_during_smm_is_held_and_delivered_after_rsm(machine: Machine) -> None:
    cpu = machine.cpu
    held: list[bool] = []
    handler = machine.install_handler(NOP_HANDLER, None)
    cpu.engine.on_code(handler, handler, lambda _a, _s: held.append(cpu.inject_nmi()))
    cpu.engine.invalidate_code(handler, handler + 1)
    result = machine.software_smi(0x10)
    assert result.ok
    assert held == [False]
    assert machine.nmi_count == 1
    assert not cpu.nmi_pending
    assert not cpu.nmi_masked


def test_item12_smi_inside_an_nmi_handler_keeps_nmis_blocked_after_rsm(machine: Machine) -> None:
    cpu = machine.cpu
    frames: list[int] = []
    nmi_entry = machine.dxe_trampoline_address("nmi_handler")

    def on_nmi(_address: int, _size: int) -> None:
        frames.append(cpu.engine.reg("rsp"))
        if len(frames) == 1:
            cpu.raise_smi()

    cpu.engine.on_code(nmi_entry, nmi_entry, on_nmi)
    cpu.engine.invalidate_code(nmi_entry, nmi_entry + 1)
    handler = machine.install_handler(NOP_HANDLER, None)
    cpu.engine.on_code(handler, handler, lambda _a, _s: cpu.inject_nmi())
    cpu.engine.invalidate_code(handler, handler + 1)
    result = machine.inject_nmi()
    assert result is not None
    assert result.stop is StopReason.HALTED
    assert len(result.smis) == 1
    assert machine.nmi_count == 2
    # The held NMI came after the first handler's IRET, not nested inside it after RSM.
    assert frames[0] == frames[1]
    assert not cpu.nmi_masked


def test_item12_iret_in_smm_unblocks_nmis(machine: Machine) -> None:
    cpu = machine.cpu
    handler = machine.install_handler(IRET_HANDLER, None)
    cpu.engine.on_code(handler, handler, lambda _a, _s: cpu.inject_nmi())
    cpu.engine.invalidate_code(handler, handler + 1)
    result = machine.software_smi(0x10)
    # The held NMI is delivered in SMM right after the IRET, to the MM core's IDT.
    assert result.stop is StopReason.SMM_FAULT
    assert result.fault is not None
    assert result.fault.vector == 2
    assert result.fault.rip == handler + 0x13
