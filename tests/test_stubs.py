"""Stub protocols declared by the user: a GUID whose functions return a chosen status."""

from __future__ import annotations

import uuid

import pytest
from pe_builder import build_driver

from smmemu import Machine
from smmemu.errors import ConfigError
from smmemu.services.stubs import StubProtocol, parse_stub
from smmemu.uefi.status import EfiStatus

PLATFORM = uuid.UUID("01020304-0506-0708-090a-0b0c0d0e0f01")
PLATFORM_BYTES = ", ".join(f"{b:#x}" for b in PLATFORM.bytes_le)

# MM_STANDALONE entry: MmLocateProtocol(&PLATFORM, NULL, &p); then return p->Function2(p).
CALLS_FUNCTION_2 = f"""
    push rbx
    sub rsp, 0x20
    mov rax, rdx
    lea rcx, [rip + platform]
    xor edx, edx
    lea r8, [rip + interface]
    call qword ptr [rax + 0xd0]
    test rax, rax
    jnz done
    mov rcx, qword ptr [rip + interface]
    call qword ptr [rcx + 0x10]
done:
    add rsp, 0x20
    pop rbx
    ret
platform:
    .byte {PLATFORM_BYTES}
interface:
    .quad 0x0
"""


def test_without_a_stub_the_missing_protocol_is_not_found_and_reported() -> None:
    machine = Machine()

    image = machine.load_image(build_driver(CALLS_FUNCTION_2), standalone=True, name="Caller")

    assert image.status == EfiStatus.NOT_FOUND
    [request] = machine.services.unresolved
    assert (request.service, request.guid) == ("MmLocateProtocol", PLATFORM)
    assert image.contains(request.caller)


def test_stub_function_returns_the_declared_status_and_is_reported() -> None:
    machine = Machine(stubs=[StubProtocol(PLATFORM, count=4, status=EfiStatus.ACCESS_DENIED,
                                          name="gPlatformProtocol")])

    image = machine.load_image(build_driver(CALLS_FUNCTION_2), standalone=True, name="Caller")

    assert image.status == EfiStatus.ACCESS_DENIED
    assert machine.services.unresolved == []
    [finding] = machine.services.findings
    assert finding.kind == "stub-call"
    assert finding.message.startswith("gPlatformProtocol function 2 called from Caller+0x")


def test_stub_added_after_start_serves_later_drivers() -> None:
    machine = Machine()
    machine.add_stub(StubProtocol(PLATFORM, status=EfiStatus.SUCCESS, environment="mm"))

    image = machine.load_image(build_driver(CALLS_FUNCTION_2), standalone=True, name="Caller")

    assert image.status == EfiStatus.SUCCESS


def test_dxe_only_stub_is_invisible_to_mm_locate_protocol() -> None:
    machine = Machine(stubs=[StubProtocol(PLATFORM, status=EfiStatus.SUCCESS,
                                          environment="dxe")])

    image = machine.load_image(build_driver(CALLS_FUNCTION_2), standalone=True, name="Caller")

    assert image.status == EfiStatus.NOT_FOUND


@pytest.mark.parametrize(("text", "count", "status"), [
    (str(PLATFORM), 16, EfiStatus.UNSUPPORTED),
    (f"{PLATFORM}:3", 3, EfiStatus.UNSUPPORTED),
    (f"{{{PLATFORM}}}:0x4:0", 4, EfiStatus.SUCCESS),
])
def test_stub_declaration_parses_guid_count_and_status(text: str, count: int,
                                                       status: int) -> None:
    stub = parse_stub(text)

    assert (stub.guid, stub.count, stub.status) == (PLATFORM, count, status)


@pytest.mark.parametrize("text", [f"{PLATFORM}:0", f"{PLATFORM}:x", f"{PLATFORM}:1:2:3",
                                  f"{PLATFORM}:1:-1"])
def test_malformed_stub_declaration_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_stub(text)
