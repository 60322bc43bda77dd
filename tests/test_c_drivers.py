"""The C test drivers (firmware_blobs/drivers, docs/drivers.md) loaded and run by a Machine.

Unlike tests/test_drivers.py, whose drivers are assembled in the test, these are real
clang/lld-link PE32+ images with a .reloc section and FileAlignment 0x20, so they also prove
that the loader lays sections out by RVA and applies DIR64 relocations.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from smmemu import Machine, StopReason
from smmemu.uefi.status import EfiStatus

DRIVERS = Path(__file__).resolve().parent.parent / "firmware_blobs" / "drivers"

ECHO_GUID = uuid.UUID("3e0a7f4e-9d3c-4b0f-8a41-5d7e2c1b9a60")
COUNTER_GUID = uuid.UUID("5a1c0d2e-7f3b-4e91-b6a8-0c4d2f9e8b17")
POOL_GUID = uuid.UUID("9b7e4c12-3a5d-4f60-8e2b-1c0f7a6d5e43")
FAULTY_GUID = uuid.UUID("d0f1e2a3-b4c5-4d6e-8f70-8192a3b4c5d6")
POOL_RESULT = struct.Struct("<B7xQQQQ")  # Mode, AllocateStatus, Buffer, FreeStatus, Extra


@pytest.fixture(params=["q35", "intel"])
def machine(request: pytest.FixtureRequest) -> Machine:
    return Machine(profile=request.param)


def test_standalone_driver_guid_handler_runs_through_mmi_manage(machine: Machine) -> None:
    image = machine.load_image(DRIVERS / "StandaloneEcho.efi", standalone=True)
    assert image.status == EfiStatus.SUCCESS
    assert image.base % 0x1000 == 0
    assert image.base != image.pe.image_base

    result = machine.communicate(ECHO_GUID, b"hello, SMM!")

    assert result.status == EfiStatus.SUCCESS
    assert result.data == b"!MMS ,olleh"


def test_relocated_handler_is_registered_at_its_loaded_address(machine: Machine) -> None:
    image = machine.load_image(DRIVERS / "StandaloneEcho.efi", standalone=True)
    handlers = [address for guid, address in machine.handler_table() if guid == ECHO_GUID]

    assert len(handlers) == 1
    assert image.contains(handlers[0])
    assert (machine.symbolize(handlers[0]) or "").startswith("StandaloneEcho+0x1")


def test_traditional_driver_sw_smi_child_counts_apm_writes_of_its_value(
        machine: Machine) -> None:
    image = machine.load_image(DRIVERS / "SwSmiCounter.efi")
    assert image.status == EfiStatus.SUCCESS

    for _ in range(3):
        assert machine.software_smi(0x61).stop is StopReason.HALTED
    machine.software_smi(0x62)  # another value: not this driver's child
    result = machine.communicate(COUNTER_GUID, bytes(8))

    assert result.status == EfiStatus.SUCCESS
    assert struct.unpack("<Q", result.data[:8])[0] == 3


def test_pool_allocation_is_in_smram_and_freed_once(machine: Machine) -> None:
    machine.load_image(DRIVERS / "PoolUser.efi", standalone=True)
    in_use = machine.heap.in_use

    result = machine.communicate(POOL_GUID, bytes(40))

    mode, allocated, buffer, freed, extra = POOL_RESULT.unpack(result.data[:40])
    assert (mode, allocated, freed, extra) == (0, EfiStatus.SUCCESS, EfiStatus.SUCCESS, 0)
    assert machine.heap.owns(buffer)
    assert machine.heap.in_use == in_use
    assert machine.services.findings == []


@pytest.mark.parametrize(("mode", "kind"), [(1, "double-free"), (2, "foreign-free")])
def test_bad_pool_free_is_refused_and_reported_with_the_caller(
        machine: Machine, mode: int, kind: str) -> None:
    machine.load_image(DRIVERS / "PoolUser.efi", standalone=True)
    in_use = machine.heap.in_use

    result = machine.communicate(POOL_GUID, bytes([mode]) + bytes(39))

    _, allocated, _, freed, extra = POOL_RESULT.unpack(result.data[:40])
    assert (allocated, freed) == (EfiStatus.SUCCESS, EfiStatus.SUCCESS)
    assert extra == EfiStatus.INVALID_PARAMETER
    assert machine.heap.in_use == in_use  # the real allocation went back exactly once
    [finding] = machine.services.findings
    assert finding.kind == kind
    assert "PoolUser+0x1" in finding.message


def test_null_dereference_in_handler_is_a_fault_report_naming_image_and_offset(
        machine: Machine) -> None:
    machine.load_image(DRIVERS / "Faulty.efi", standalone=True)

    result = machine.communicate(FAULTY_GUID, bytes(8))

    assert result.smi.stop is StopReason.SMM_FAULT
    fault = result.smi.smis[-1].fault
    assert fault is not None
    assert (fault.vector, fault.cr2) == (14, 0)
    assert fault.symbol == "Faulty+0x1007"


def test_machine_stays_usable_after_a_driver_faults(machine: Machine) -> None:
    machine.load_image(DRIVERS / "StandaloneEcho.efi", standalone=True)
    machine.load_image(DRIVERS / "Faulty.efi", standalone=True)
    assert machine.communicate(FAULTY_GUID, bytes(8)).smi.stop is StopReason.SMM_FAULT

    result = machine.communicate(ECHO_GUID, b"abc")

    assert (result.status, result.data) == (EfiStatus.SUCCESS, b"cba")


def test_loaded_image_protocol_has_the_spec_layout(machine: Machine) -> None:
    image = machine.load_image(DRIVERS / "StandaloneEcho.efi", standalone=True)
    record = machine.services.db.interface(image.handle,
                                           uuid.UUID("5b1b31a1-9562-11d2-8e3f-00a0c969723b"))
    assert record is not None

    raw = machine.memory.read(record, 0x60, smm=True)  # SMRAM: the SMM view

    # UEFI 2.10 9.1: Revision @0, SystemTable @0x10, ImageBase @0x40, ImageSize @0x48,
    # ImageCodeType @0x50, ImageDataType @0x54.
    assert struct.unpack_from("<I", raw, 0)[0] == 0x1000
    assert struct.unpack_from("<QQ", raw, 0x40) == (image.base, image.size)
    assert struct.unpack_from("<II", raw, 0x50) == (5, 6)
    assert struct.unpack_from("<Q", raw, 0x10)[0] == machine.dxe_services.system_table
