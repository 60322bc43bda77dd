"""A minimal PE32+ image around position-independent code, for driver tests."""

from __future__ import annotations

import struct

from smmemu.firmware.assembler import assemble

E_LFANEW = 0x80
TEXT_RVA = 0x1000


def build_driver(source: str, *, subsystem: int = 0x0B, size: int = 0x1000) -> bytes:
    """Assemble ``source`` (64-bit, position independent, entry at its start) into a PE32+.

    One RWX section at RVA 0x1000, no relocations (edk2 loads such images anywhere).
    """
    code = assemble(source, TEXT_RVA)
    raw_size = (len(code) + 0x1FF) & ~0x1FF
    out = bytearray(0x200 + raw_size)
    out[:2] = b"MZ"
    struct.pack_into("<I", out, 0x3C, E_LFANEW)
    out[E_LFANEW:E_LFANEW + 4] = b"PE\0\0"
    # FileHeader: x64, one section, 240-byte optional header, EXECUTABLE_IMAGE | LARGE_ADDRESS
    struct.pack_into("<HHIIIHH", out, E_LFANEW + 4, 0x8664, 1, 0, 0, 0, 240, 0x22)
    optional = E_LFANEW + 24
    struct.pack_into("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", out, optional, 0x20B, 14, 0,
                     raw_size, 0, 0, TEXT_RVA, TEXT_RVA, 0, 0x1000, 0x200, 0, 0, 0, 0, 0, 0, 0,
                     TEXT_RVA + size, 0x200, 0, subsystem, 0, 0, 0, 0, 0, 0, 16)
    section = optional + 240
    struct.pack_into("<8sIIIIIIHHI", out, section, b".text", size, TEXT_RVA, raw_size, 0x200,
                     0, 0, 0, 0, 0xE0000060)
    out[0x200:0x200 + len(code)] = code
    return bytes(out)
