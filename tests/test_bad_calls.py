"""A call through a NULL or unmapped function pointer: a fault report naming caller and table."""

from __future__ import annotations

import uuid

import pytest
from pe_builder import build_driver

from smmemu import Machine, StopReason
from smmemu.services.stubs import StubProtocol
from smmemu.uefi.status import EfiStatus

PLATFORM = uuid.UUID("01020304-0506-0708-090a-0b0c0d0e0f01")
PLATFORM_BYTES = ", ".join(f"{b:#x}" for b in PLATFORM.bytes_le)

# MM_STANDALONE entry: MmLocateProtocol(&PLATFORM, NULL, &p); p->Function1 = NULL (the
# driver's own bug); then call p->Function1(p): a fetch from address 0.
CALLS_NULL_SLOT = f"""
    sub rsp, 0x28
    mov rax, rdx
    lea rcx, [rip + platform]
    xor edx, edx
    lea r8, [rip + interface]
    call qword ptr [rax + 0xd0]
    mov rcx, qword ptr [rip + interface]
    mov qword ptr [rcx + 0x8], 0
    call qword ptr [rcx + 0x8]
    add rsp, 0x28
    ret
platform:
    .byte {PLATFORM_BYTES}
interface:
    .quad 0x0
"""

# MM_STANDALONE entry: call through MMST+0x200, past the table's end (garbage: zero).
CALLS_PAST_MMST = """
    sub rsp, 0x28
    call qword ptr [rdx + 0x200]
    add rsp, 0x28
    ret
"""


@pytest.fixture
def machine() -> Machine:
    return Machine(stubs=[StubProtocol(PLATFORM, count=4, status=EfiStatus.SUCCESS,
                                       name="gPlatformProtocol")])


def test_null_protocol_function_call_names_caller_operand_and_protocol(
        machine: Machine) -> None:
    image = machine.load_image(build_driver(CALLS_NULL_SLOT), standalone=True, name="Caller")

    assert image.status is None
    result = machine.dispatch_drivers()  # nothing pending: the fault stays in the image error
    assert result.smi.stop is StopReason.HALTED
    assert image.error is not None
    assert "Caller+0x" in image.error
    assert "called qword ptr [rcx + 8] = 0x0" in image.error
    assert f"function +0x8 of {PLATFORM}" in image.error


def test_bad_call_fault_record_carries_the_call_site(machine: Machine) -> None:
    image = machine.load_image(build_driver(CALLS_PAST_MMST), standalone=True, name="Caller",
                               dispatch=False)

    result = machine.dispatch_drivers()

    fault = result.fault
    assert fault is not None
    assert fault.symbol is None  # the RIP itself names nothing
    assert fault.call_site is not None
    assert fault.call_site.startswith(f"Caller+0x{0x1000 + 4:x} called qword ptr [rdx + 0x200]")
    assert "EFI_MM_SYSTEM_TABLE" in fault.call_site
    assert image.status is None
