"""Loaded images get their sections' page permissions in SMM (edk2's SMM image protection)."""

from __future__ import annotations

import struct
import uuid

import pytest
from pe_builder import E_LFANEW, build_driver

from smmemu import Machine, StopReason

SECTION_FLAGS = E_LFANEW + 24 + 240 + 36  # the .text section header's Characteristics
CODE_RX = 0x6000_0020  # CNT_CODE | MEM_EXECUTE | MEM_READ
DATA_RW = 0xC000_0040  # CNT_INITIALIZED_DATA | MEM_READ | MEM_WRITE
ECHO = uuid.UUID("12345678-1234-5678-1234-567890abcdef")

# MM_STANDALONE entry that writes one byte at `target`, in its own section, then returns 0.
WRITES_ITSELF = """
    lea rax, [rip + target]
    mov byte ptr [rax], 0x90
    xor eax, eax
    ret
target:
    nop
"""


def with_flags(image: bytes, flags: int) -> bytes:
    out = bytearray(image)
    struct.pack_into("<I", out, SECTION_FLAGS, flags)
    return bytes(out)


@pytest.fixture(params=["q35", "intel"])
def machine(request: pytest.FixtureRequest) -> Machine:
    return Machine(profile=request.param)


def test_write_to_a_read_only_code_section_faults(machine: Machine) -> None:
    image = machine.load_image(with_flags(build_driver(WRITES_ITSELF), CODE_RX),
                               standalone=True, name="SelfModifying", dispatch=False)

    result = machine.dispatch_drivers()

    fault = result.fault
    assert result.smi.stop is StopReason.SMM_FAULT
    assert fault is not None
    assert (fault.vector, fault.error_code & 0x3) == (14, 0x3)  # present page, write
    assert fault.cr2 == image.entry + 0xD  # `target`, after lea (7), mov (3), xor (2), ret
    assert (fault.symbol or "").startswith("SelfModifying+0x")


def test_execution_from_a_data_section_faults(machine: Machine) -> None:
    image = machine.load_image(with_flags(build_driver(WRITES_ITSELF), DATA_RW),
                               standalone=True, name="DataExec", dispatch=False)

    result = machine.dispatch_drivers()

    fault = result.fault
    assert fault is not None
    assert fault.vector == 14
    assert fault.error_code & 0x10  # instruction fetch
    assert fault.rip == image.entry


def test_writable_executable_section_keeps_working(machine: Machine) -> None:
    image = machine.load_image(build_driver(WRITES_ITSELF), standalone=True, name="Rwx")

    assert image.status == 0
    assert machine.communicate(ECHO, b"still fine").data == b"still fine"
