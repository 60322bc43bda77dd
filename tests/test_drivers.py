"""Loading MM drivers: entry points in SMM, the MM system table, handlers through MmiManage."""

from __future__ import annotations

import uuid

import pytest
from pe_builder import build_driver

from smmemu import Machine, StopReason
from smmemu.errors import ImageError

GUID = uuid.UUID("3e0a7f4e-9d3c-4b0f-8a41-5d7e2c1b9a60")
GUID_BYTES = ", ".join(f"{b:#x}" for b in GUID.bytes_le)

# MM_STANDALONE entry (ImageHandle, MmSt): MmiHandlerRegister(handler, &GUID, &handle).
# The handler stores 0x42 in the first payload byte and returns EFI_SUCCESS.
STANDALONE = f"""
    sub rsp, 0x28
    mov rax, rdx
    lea rcx, [rip + handler]
    lea rdx, [rip + guid]
    lea r8, [rip + dispatch_handle]
    call qword ptr [rax + 0xe0]
    add rsp, 0x28
    ret
handler:
    mov byte ptr [r8], 0x42
    xor eax, eax
    ret
guid:
    .byte {GUID_BYTES}
dispatch_handle:
    .quad 0x0
"""

# DXE_SMM_DRIVER entry (ImageHandle, SystemTable): gBS->LocateProtocol(SmmBase2),
# SmmBase2->GetSmstLocation(&smst), smst->MmiHandlerRegister(handler, &GUID, &handle).
TRADITIONAL = f"""
    push rbx
    sub rsp, 0x30
    mov rax, qword ptr [rdx + 0x60]
    lea rcx, [rip + base2_guid]
    xor edx, edx
    lea r8, [rip + base2]
    call qword ptr [rax + 0x140]
    test rax, rax
    jnz done
    mov rcx, qword ptr [rip + base2]
    lea rdx, [rip + smst]
    call qword ptr [rcx + 0x8]
    mov rbx, qword ptr [rip + smst]
    lea rcx, [rip + handler]
    lea rdx, [rip + guid]
    lea r8, [rip + dispatch_handle]
    call qword ptr [rbx + 0xe0]
done:
    add rsp, 0x30
    pop rbx
    ret
handler:
    mov byte ptr [r8], 0x77
    xor eax, eax
    ret
base2_guid:
    .byte 0xb7, 0xbf, 0xcc, 0xf4, 0xe0, 0xf6, 0xfd, 0x47
    .byte 0x9d, 0xd4, 0x10, 0xa8, 0xf1, 0x50, 0xc1, 0x91
guid:
    .byte {GUID_BYTES}
base2:
    .quad 0x0
smst:
    .quad 0x0
dispatch_handle:
    .quad 0x0
"""


def test_standalone_driver_registers_a_handler_reached_through_communicate(q35: Machine) -> None:
    image = q35.load_image(build_driver(STANDALONE), standalone=True, name="Standalone")
    assert image.status == 0
    assert q35.heap.owns(image.base)
    assert (GUID, image.base + 0x1000 + 0x1D) in [
        (g, h) for g, h in q35.handler_table() if g == GUID] or any(
        g == GUID and image.contains(h) for g, h in q35.handler_table())
    reply = q35.communicate(GUID, b"\x00abc")
    assert reply.status == 0
    assert reply.data == b"Babc"


def test_traditional_driver_finds_the_smst_through_smm_base2(machine: Machine) -> None:
    image = machine.load_image(build_driver(TRADITIONAL), name="Traditional")
    assert image.status == 0
    reply = machine.communicate(GUID, b"\x00")
    assert reply.data == b"\x77"
    assert machine.services.calls["gBS->LocateProtocol"] == 1
    assert machine.services.calls["SmmBase2->GetSmstLocation"] == 1


def test_missing_protocol_is_not_found_and_reported(q35: Machine) -> None:
    # gBS->LocateProtocol(&unknown, NULL, &out): returns EFI_NOT_FOUND as the entry status.
    source = """
    sub rsp, 0x28
    mov rax, qword ptr [rdx + 0x60]
    lea rcx, [rip + unknown]
    xor edx, edx
    lea r8, [rip + out]
    call qword ptr [rax + 0x140]
    add rsp, 0x28
    ret
unknown:
    .byte 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0x9, 0xa, 0xb, 0xc, 0xd, 0xe, 0xf, 0x1
out:
    .quad 0x0
"""
    image = q35.load_image(build_driver(source), name="Asker")
    assert image.status == 0x800000000000000E
    assert q35.services.unresolved[-1].service == "gBS->LocateProtocol"
    assert image.contains(q35.services.unresolved[-1].caller)


def test_driver_fault_in_entry_point_is_reported_with_the_image(q35: Machine) -> None:
    # mov rax, [0x0] via a register: xor eax, eax ; mov rax, [rax] ; ret
    image = q35.load_image(build_driver("xor eax, eax\nmov rax, qword ptr [rax]\nret"),
                           standalone=True, name="Faulty")
    assert image.status is None
    assert image.error is not None
    reply = q35.communicate(GUID, b"x")  # the machine is still usable
    assert reply.status == 0x800000000000000E
    assert q35.symbolize(image.entry + 3) == "Faulty+0x1003"
    assert StopReason.SMM_FAULT


def test_pool_double_free_and_foreign_free_are_reported(q35: Machine) -> None:
    # MmAllocatePool(6, 64, &p); MmFreePool(p); MmFreePool(p); MmFreePool(0x1234)
    source = """
    push rbx
    push rsi
    sub rsp, 0x28
    mov rbx, rdx
    mov ecx, 0x6
    mov edx, 0x40
    lea r8, [rip + p]
    call qword ptr [rbx + 0x50]
    mov rcx, qword ptr [rip + p]
    call qword ptr [rbx + 0x58]
    mov rcx, qword ptr [rip + p]
    call qword ptr [rbx + 0x58]
    mov rsi, rax
    mov ecx, 0x1234
    call qword ptr [rbx + 0x58]
    mov rax, rsi
    add rsp, 0x28
    pop rsi
    pop rbx
    ret
p:
    .quad 0x0
"""
    image = q35.load_image(build_driver(source), standalone=True, name="Pool")
    assert image.status == 0x8000000000000002
    kinds = [f.kind for f in q35.services.findings]
    assert kinds == ["double-free", "foreign-free"]


def test_service_given_a_pointer_outside_ram_fails_and_the_machine_stays_usable(
        q35: Machine) -> None:
    # gBS->SetMem(0xF0000000, 16, 0): the buffer is not RAM.
    source = """
    sub rsp, 0x28
    mov rax, qword ptr [rdx + 0x60]
    mov ecx, 0xf0000000
    mov edx, 0x10
    xor r8d, r8d
    call qword ptr [rax + 0x168]
    add rsp, 0x28
    ret
"""
    image = q35.load_image(build_driver(source), name="Wild")

    assert image.status == 0x8000000000000002  # EFI_INVALID_PARAMETER
    [finding] = [f for f in q35.services.findings if f.kind == "bad-pointer"]
    assert "gBS->SetMem called from Wild+0x" in finding.message
    assert q35.communicate(uuid.UUID("12345678-1234-5678-1234-567890abcdef"), b"ok").data == b"ok"


def test_sw_dispatch_child_gets_the_dispatchers_copy_of_its_register_context(
        q35: Machine) -> None:
    # MM_STANDALONE entry: MmLocateProtocol(SwDispatch2); Register(callback, &ctx, &h) with
    # ctx = {0x6c} on the stack, then scribble over ctx. The callback stores the
    # SwSmiInputValue it sees through Context at 0x120000 (comm buffer 1, mapped in SMM).
    source = """
    push rbx
    sub rsp, 0x40
    mov rbx, rdx
    lea rcx, [rip + dispatch_guid]
    xor edx, edx
    lea r8, [rip + dispatch]
    call qword ptr [rbx + 0xd0]
    mov qword ptr [rsp + 0x30], 0x6c
    mov rcx, qword ptr [rip + dispatch]
    lea rdx, [rip + callback]
    lea r8, [rsp + 0x30]
    lea r9, [rip + handle]
    call qword ptr [rcx]
    mov qword ptr [rsp + 0x30], 0x5a5a
    add rsp, 0x40
    pop rbx
    ret
callback:
    mov rax, qword ptr [rdx]
    mov ecx, 0x120000
    mov qword ptr [rcx], rax
    xor eax, eax
    ret
dispatch_guid:
    .byte 0xdc, 0xc6, 0xa3, 0x18, 0xea, 0x5e, 0xc8, 0x48
    .byte 0xa1, 0xc1, 0xb5, 0x33, 0x89, 0xf9, 0x89, 0x99
dispatch:
    .quad 0x0
handle:
    .quad 0x0
"""
    image = q35.load_image(build_driver(source), standalone=True, name="SwChild")
    assert image.status == 0
    q35.write_physical(0x120000, bytes(8))

    q35.software_smi(0x6C)

    assert q35.read_physical(0x120000, 8) == (0x6C).to_bytes(8, "little")


def test_sw_dispatch_root_handler_is_registered_only_while_a_child_is(q35: Machine) -> None:
    root = q35.sw_dispatch.root_handler
    calls = q35.services.calls

    q35.software_smi(0x6C)

    assert (None, root) not in q35.handler_table()
    assert calls.get("SwDispatch2 root MMI handler", 0) == 0

    test_sw_dispatch_child_gets_the_dispatchers_copy_of_its_register_context(q35)

    assert (None, root) in q35.handler_table()
    before = calls["SwDispatch2 root MMI handler"]
    q35.software_smi(0x6C)
    assert calls["SwDispatch2 root MMI handler"] == before + 1


def test_pcd_get_next_token_space_is_not_found_and_not_a_read(q35: Machine) -> None:
    # gBS->LocateProtocol(&gPcdProtocolGuid, NULL, &pcd); pcd->GetNextTokenSpace(&guid_ptr).
    source = """
    sub rsp, 0x28
    mov rax, qword ptr [rdx + 0x60]
    lea rcx, [rip + pcd_guid]
    xor edx, edx
    lea r8, [rip + pcd]
    call qword ptr [rax + 0x140]
    mov rax, qword ptr [rip + pcd]
    lea rcx, [rip + space]
    call qword ptr [rax + 0xf0]
    add rsp, 0x28
    ret
pcd_guid:
    .byte 0x06, 0x40, 0xb3, 0x11, 0x5b, 0xd8, 0x0a, 0x4d
    .byte 0xa2, 0x90, 0xd5, 0xa5, 0x71, 0x31, 0x0e, 0xf7
pcd:
    .quad 0x0
space:
    .quad 0x0
"""
    image = q35.load_image(build_driver(source), name="Enumerator")

    assert image.status == 0x800000000000000E  # EFI_NOT_FOUND
    assert q35.pcd.reads == []


def test_refused_stripped_image_gives_its_heap_pages_back(q35: Machine) -> None:
    data = bytearray(build_driver("    xor eax, eax\n    ret\n"))
    e_lfanew = int.from_bytes(data[0x3C:0x40], "little")
    characteristics = int.from_bytes(data[e_lfanew + 22:e_lfanew + 24], "little")
    data[e_lfanew + 22:e_lfanew + 24] = (characteristics | 0x1).to_bytes(2, "little")
    in_use = q35.heap.in_use

    with pytest.raises(ImageError, match="cannot be relocated"):
        q35.load_image(bytes(data), name="Stripped")

    assert q35.heap.in_use == in_use
    assert q35.communicate(uuid.UUID("12345678-1234-5678-1234-567890abcdef"), b"ok").data == b"ok"


def test_boot_services_free_pool_misuse_is_reported_under_its_own_name(q35: Machine) -> None:
    # gBS->FreePool(&out): a pointer into the driver's own image, never allocated.
    source = """
    sub rsp, 0x28
    mov rax, qword ptr [rdx + 0x60]
    lea rcx, [rip + out]
    call qword ptr [rax + 0x48]
    add rsp, 0x28
    ret
out:
    .quad 0x0
"""
    image = q35.load_image(build_driver(source), name="BadFree")

    assert image.status == 0x8000000000000002  # EFI_INVALID_PARAMETER
    [finding] = q35.services.findings
    assert finding.kind == "foreign-free"
    assert finding.message.startswith("gBS->FreePool(")
    assert "BadFree+0x" in finding.message


# Handler for the zero-rest rule. Payload byte 0 = 1: fill Data[9 .. 9+0x3f00) with 0xAA
# (a dirty, unaligned stretch of the SMRAM copy, far past MessageLength). Payload byte 0 = 2:
# count the non-zero bytes in Data[8 .. 16 KiB - 24) and reply with that count (8 bytes).
SCRIBBLER = f"""
    sub rsp, 0x28
    mov rax, rdx
    lea rcx, [rip + handler]
    lea rdx, [rip + guid]
    lea r8, [rip + dispatch_handle]
    call qword ptr [rax + 0xe0]
    add rsp, 0x28
    ret
handler:
    push rdi
    cmp byte ptr [r8], 0x1
    jne count
    lea rdi, [r8 + 0x9]
    mov ecx, 0x3f00
    mov al, 0xaa
    rep stosb
    xor eax, eax
    pop rdi
    ret
count:
    lea rdi, [r8 + 0x8]
    mov ecx, 0x3fe0
    xor edx, edx
next:
    cmp byte ptr [rdi], 0x0
    je zero
    inc rdx
zero:
    inc rdi
    dec ecx
    jnz next
    mov qword ptr [r8], rdx
    mov qword ptr [r9], 0x8
    xor eax, eax
    pop rdi
    ret
guid:
    .byte {GUID_BYTES}
dispatch_handle:
    .quad 0x0
"""


def test_smram_copy_past_the_request_is_zero_for_each_request(q35: Machine) -> None:
    # edk2 StandaloneMmCore copies 24 + MessageLength bytes into its MMRAM copy and zeroes
    # the rest of it (comm_protocols.md 4.2), so a handler never sees an earlier request.
    assert q35.load_image(build_driver(SCRIBBLER), standalone=True).status == 0

    assert q35.communicate(GUID, b"\x01").status == 0
    reply = q35.communicate(GUID, b"\x02")

    assert reply.status == 0
    assert int.from_bytes(reply.data[:8], "little") == 0
