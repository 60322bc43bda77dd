"""Exceptions in SMM reach the MM core's IDT and come back as fault records; budgets end hangs."""

from __future__ import annotations

import uuid

from helpers import DEAD_LOOP_HANDLER, READ_UNMAPPED_HANDLER, UD2_HANDLER

from smmemu import ECHO_HANDLER_GUID, Machine, StopReason

FAULTY = uuid.UUID("fa017fa0-0000-4000-8000-000000000001")


def test_page_fault_in_a_handler_is_reported_with_its_fault_record(machine: Machine) -> None:
    handler = machine.install_handler(READ_UNMAPPED_HANDLER, FAULTY)
    reply = machine.communicate(FAULTY, b"boom")
    fault = reply.fault
    assert reply.smi.stop is StopReason.SMM_FAULT
    assert fault is not None
    assert (fault.vector, fault.name) == (14, "#PF")
    assert fault.rip == handler
    assert fault.cr2 == 0x4000_0000
    assert fault.error_code == 0  # not present, read, supervisor
    assert fault.disassembly[0].startswith(f"{handler:#x}: movabs rax")
    assert "#PF in SMM" in fault.describe()


def test_machine_is_usable_after_a_fault(machine: Machine) -> None:
    machine.install_handler(READ_UNMAPPED_HANDLER, FAULTY)
    machine.communicate(FAULTY, b"boom")
    assert machine.communicate(ECHO_HANDLER_GUID, b"still here").data == b"still here"


def test_repeated_faults_are_not_escalated_to_double_fault(q35: Machine) -> None:
    q35.install_handler(READ_UNMAPPED_HANDLER, FAULTY)
    vectors = []
    for _ in range(4):
        fault = q35.communicate(FAULTY, b"x").fault
        assert fault is not None
        vectors.append(fault.vector)
    assert vectors == [14, 14, 14, 14]


def test_invalid_opcode_in_a_handler_is_reported(q35: Machine) -> None:
    handler = q35.install_handler(UD2_HANDLER, FAULTY)
    fault = q35.communicate(FAULTY, b"x").fault
    assert fault is not None
    assert (fault.vector, fault.rip) == (6, handler)


def test_executing_the_comm_buffer_from_smm_faults_on_nx(q35: Machine) -> None:
    address, _ = q35.comm_buffer(0)
    # movabs rax, comm_buffer ; jmp rax
    code = b"\x48\xb8" + address.to_bytes(8, "little") + b"\xff\xe0"
    q35.install_handler(code, FAULTY)
    fault = q35.communicate(FAULTY, b"x").fault
    assert fault is not None
    assert fault.vector == 14
    assert fault.cr2 == address
    assert fault.error_code & 0x11 == 0x11  # present page, instruction fetch


def test_handler_that_never_returns_exceeds_its_budget() -> None:
    with Machine("q35", budget=0.2) as m:
        handler = m.install_handler(DEAD_LOOP_HANDLER, FAULTY)
        reply = m.communicate(FAULTY, b"x")
        assert reply.smi.stop is StopReason.BUDGET_EXCEEDED
        assert f"{handler:#x}" in reply.smi.detail
        assert m.communicate(ECHO_HANDLER_GUID, b"alive").data == b"alive"


def test_virtual_budget_stops_a_dead_loop_deterministically() -> None:
    stops = []
    for _ in range(2):
        with Machine("q35", virtual_budget=0.001) as m:
            handler = m.install_handler(DEAD_LOOP_HANDLER, FAULTY)
            reply = m.communicate(FAULTY, b"x")
            assert reply.smi.stop is StopReason.BUDGET_EXCEEDED
            assert "virtual-time budget" in reply.smi.detail
            assert f"{handler:#x}" in reply.smi.detail
            stops.append((reply.smi.detail, m.clock_ns))
            assert m.communicate(ECHO_HANDLER_GUID, b"alive").data == b"alive"
    assert stops[0] == stops[1]


def test_virtual_clock_on_one_cpu_advances_with_executed_code() -> None:
    with Machine("q35", virtual_clock=True) as m:
        before = m.clock_ns
        m.communicate(ECHO_HANDLER_GUID, b"tick")
        assert m.clock_ns > before
