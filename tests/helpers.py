"""Request builders and guest-code snippets shared by the tests (assembly in comments)."""

from __future__ import annotations

import struct

MSUP = 0x5055534D
EFI_SUCCESS = 0
EFI_INVALID_PARAMETER = 0x8000000000000002
EFI_UNSUPPORTED = 0x8000000000000003
EFI_NOT_FOUND = 0x800000000000000E
EFI_ACCESS_DENIED = 0x800000000000000F
EFI_ABORTED = 0x8000000000000015
EFI_SECURITY_VIOLATION = 0x800000000000001A


def supervisor(request: int, payload: bytes = b"", *, signature: int = MSUP,
               revision: int = 1) -> bytes:
    """MM_SUPERVISOR_REQUEST_HEADER (Result 0) + payload."""
    return struct.pack("<IIIIQ", signature, revision, request, 0, 0) + payload


def result_of(reply: bytes) -> int:
    """The header's Result field."""
    return int(struct.unpack_from("<Q", reply, 16)[0])


def unblock_params(start: int, pages: int, guid: bytes = b"\x11" * 16) -> bytes:
    """MM_SUPERVISOR_UNBLOCK_MEMORY_PARAMS: EFI_MEMORY_DESCRIPTOR (Type 6) + IdentifierGuid."""
    return struct.pack("<IIQQQQ", 6, 0, start, 0, pages, 0) + guid


def store_qword_handler(address: int, value: int) -> bytes:
    """An EFIAPI handler that stores ``value`` at ``address`` and returns EFI_SUCCESS.

    movabs rax, address ; movabs rcx, value ; mov [rax], rcx ; xor eax, eax ; ret
    """
    return (b"\x48\xb8" + struct.pack("<Q", address) + b"\x48\xb9" + struct.pack("<Q", value)
            + bytes.fromhex("488908 31c0 c3"))


# movabs rax, [0x40000000] ; ret   -- reads an address the MM core never maps
READ_UNMAPPED_HANDLER = bytes.fromhex("48a10000004000000000 c3")
# ud2
UD2_HANDLER = bytes.fromhex("0f0b")
# jmp $   -- a handler that never returns
DEAD_LOOP_HANDLER = bytes.fromhex("ebfe")
