"""PE32+ image parsing, relocation and page plans on images built here, byte by byte.

Layouts follow the PE/COFF specification (DOS stub e_lfanew at 0x3C, COFF header, PE32+
optional header with 16 data directories, 40-byte section headers, .reloc blocks).
"""

from __future__ import annotations

import struct
import uuid

import pytest

from smmemu.loader import PeFormatError, PeImage, PeRelocationError, identify
from smmemu.loader.pe import CodeView

IMAGE_BASE = 0x1000_0000
DIR64, HIGHLOW, ABSOLUTE = 10, 3, 0
DEBUG_GUID = uuid.UUID("0a0b0c0d-0e0f-4010-8111-121314151617")
TEXT = bytes.fromhex("4831c0c3")  # xor rax, rax ; ret
PTR_A, PTR_B = IMAGE_BASE + 0x1000, IMAGE_BASE + 0x2010
E_LFANEW, OPT_AT = 0x40, 0x58  # PE signature; optional header after the 20-byte COFF header
SECTION_TABLE = OPT_AT + 240
RELOC_DIR = 5


def _reloc_blocks(relocs: list[tuple[int, int]]) -> bytes:
    """IMAGE_BASE_RELOCATION blocks: one per 4 KiB page, padded with ABSOLUTE entries."""
    out = b""
    for page in sorted({rva & ~0xFFF for _, rva in relocs}):
        entries = [(kind << 12) | (rva & 0xFFF) for kind, rva in relocs if rva & ~0xFFF == page]
        entries.append(ABSOLUTE)  # padding entry, skipped by the loader
        if len(entries) % 2:
            entries.append(ABSOLUTE)
        out += struct.pack("<II", page, 8 + 2 * len(entries))
        out += struct.pack(f"<{len(entries)}H", *entries)
    return out


def _data_section(debug: str) -> bytes:
    """The .data payload: two pointers, an export directory, a debug entry and its record."""
    data = bytearray(0x200)
    struct.pack_into("<QQ", data, 0, PTR_A, PTR_B)
    # Export directory at RVA 0x2040: Name, Base, counts, then the three arrays at 0x2070.
    struct.pack_into("<IIHHIIIIIII", data, 0x40, 0, 0, 0, 0, 0x20B0, 1, 2, 2,
                     0x2070, 0x2078, 0x2080)
    struct.pack_into("<II", data, 0x70, 0x1000, 0x1002)  # AddressOfFunctions
    struct.pack_into("<II", data, 0x78, 0x2090, 0x2098)  # AddressOfNames (sorted)
    struct.pack_into("<HH", data, 0x80, 1, 0)  # AddressOfNameOrdinals: Helper is #2
    data[0x90:0x97] = b"Helper\0"
    data[0x98:0xA4] = b"ModuleEntry\0"
    data[0xB0:0xB9] = b"test.efi\0"
    if debug == "RSDS":
        record = b"RSDS" + DEBUG_GUID.bytes_le + struct.pack("<I", 7) + b"/b/Test.pdb\0"
    else:
        record = b"NB10" + struct.pack("<III", 0, 0, 3) + b"/b/Test.dll\0"
    struct.pack_into("<IIHHIIII", data, 0x100, 0, 0, 0, 0, 2, len(record), 0x2120, 0x720)
    data[0x120:0x120 + len(record)] = record
    return bytes(data)


def build_pe(*, machine: int = 0x8664, magic: int = 0x20B, subsystem: int = 0x0B,
             characteristics: int = 0x22, relocs: list[tuple[int, int]] | None = None,
             with_reloc: bool = True, debug: str = "RSDS") -> bytes:
    """A minimal edk2-like x64 image: .text, .data (with exports and debug info), .reloc."""
    relocs = [(DIR64, 0x2000), (DIR64, 0x2008)] if relocs is None else relocs
    reloc = _reloc_blocks(relocs) if with_reloc else b""
    sections = [(b".text", 0x1000, 0x10, 0x400, 0x200, 0x60000020),
                (b".data", 0x2000, 0x300, 0x600, 0x200, 0xC0000040)]
    if with_reloc:
        sections.append((b".reloc", 0x3000, len(reloc), 0x800, 0x200, 0x42000040))
    size_of_image = 0x4000 if with_reloc else 0x3000
    dirs = [(0, 0)] * 16
    dirs[0] = (0x2040, 0x70)
    dirs[6] = (0x2100, 28)
    if with_reloc:
        dirs[RELOC_DIR] = (0x3000, len(reloc))
    out = bytearray(0x400 + 0x200 * len(sections))
    out[:2] = b"MZ"
    struct.pack_into("<I", out, 0x3C, E_LFANEW)
    out[E_LFANEW:E_LFANEW + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", out, E_LFANEW + 4, machine, len(sections), 0, 0, 0, 240,
                     characteristics)
    struct.pack_into("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", out, OPT_AT, magic, 2, 30, 0x200,
                     0x400, 0, 0x1000, 0x1000, IMAGE_BASE, 0x1000, 0x200, 0, 0, 1, 2, 3, 4, 0,
                     size_of_image, 0x400, 0, subsystem, 0, 0, 0, 0, 0, 0, 16)
    for index, (rva, size) in enumerate(dirs):
        struct.pack_into("<II", out, OPT_AT + 112 + 8 * index, rva, size)
    for index, (name, rva, vsize, raw, raw_size, flags) in enumerate(sections):
        struct.pack_into("<8sIIIIIIHHI", out, SECTION_TABLE + 40 * index, name, vsize, rva,
                         raw_size, raw, 0, 0, 0, 0, flags)
    out[0x400:0x400 + len(TEXT)] = TEXT
    out[0x600:0x800] = _data_section(debug)
    out[0x800:0x800 + len(reloc)] = reloc
    return bytes(out)


def test_parse_fields() -> None:
    image = PeImage.parse(build_pe(), name="Test")
    assert (image.machine, image.subsystem, image.subsystem_name) == (
        0x8664, 0x0B, "EFI_BOOT_SERVICE_DRIVER")
    assert (image.image_base, image.size_of_image, image.entry_point_rva) == (
        IMAGE_BASE, 0x4000, 0x1000)
    assert [(s.name, s.rva, s.virtual_size) for s in image.sections] == [
        (".text", 0x1000, 0x10), (".data", 0x2000, 0x300), (".reloc", 0x3000, 16)]
    text, data = image.section(".text"), image.section(".data")
    assert (text.readable, text.writable, text.executable) == (True, False, True)
    assert (data.readable, data.writable, data.executable) == (True, True, False)
    assert text.data[:4] == TEXT
    assert image.has_relocations
    assert [(r.rva, r.type_name) for r in image.relocations] == [
        (0x2000, "DIR64"), (0x2008, "DIR64")]
    assert image.exports == {"Helper": 0x1002, "ModuleEntry": 0x1000}
    assert image.debug == CodeView("RSDS", "/b/Test.pdb", 7, DEBUG_GUID)
    v = image.versions
    assert (v.major_linker_version, v.minor_linker_version) == (2, 30)
    assert (v.major_image_version, v.minor_image_version) == (1, 2)
    assert (v.major_subsystem_version, v.minor_subsystem_version) == (3, 4)


def test_nb10_debug_record() -> None:
    assert PeImage.parse(build_pe(debug="NB10")).debug == CodeView("NB10", "/b/Test.dll", 3)


@pytest.mark.parametrize("subsystem", [0x0A, 0x0B, 0x0C, 0x0D])
def test_efi_subsystems_accepted(subsystem: int) -> None:
    assert PeImage.parse(build_pe(subsystem=subsystem)).subsystem == subsystem


def test_relocate_patches_dir64_by_delta() -> None:
    image = PeImage.parse(build_pe())
    base = 0x7F00_0000
    loaded = image.relocate(base)
    assert len(loaded) == image.size_of_image
    assert struct.unpack_from("<QQ", loaded, 0x2000) == (
        PTR_A + base - IMAGE_BASE, PTR_B + base - IMAGE_BASE)
    # everything except the two fixups is the plain layout
    assert loaded[:0x2000] == image.layout[:0x2000]
    assert loaded[0x2010:] == image.layout[0x2010:]
    assert loaded[0x1000:0x1004] == TEXT
    assert loaded[0x1004:0x2000] == bytes(0xFFC)  # gap after .text is zero
    assert loaded[0x2200:0x2300] == bytes(0x100)  # .data beyond its raw data is zero


def test_relocate_downwards_and_in_place() -> None:
    image = PeImage.parse(build_pe())
    assert image.relocate(IMAGE_BASE) == image.layout
    low = image.relocate(0x1000)
    assert struct.unpack_from("<Q", low, 0x2000)[0] == PTR_A - IMAGE_BASE + 0x1000


def test_image_without_reloc_section_moves_when_not_stripped() -> None:
    # OVMF's SmmFaultTolerantWriteDxe and CpuHotplugSmm look like this: nothing to fix up.
    image = PeImage.parse(build_pe(with_reloc=False))
    assert not image.has_relocations
    assert not image.relocations_stripped
    assert image.relocate(0x7F00_0000) == image.layout


def test_load_plan_pages_and_permissions() -> None:
    plan = PeImage.parse(build_pe()).load_plan(0x7F00_0000)
    assert [(p.start, p.size, p.readable, p.writable, p.executable, p.contents)
            for p in plan] == [
        (0x7F00_0000, 0x1000, True, False, False, ("headers",)),
        (0x7F00_1000, 0x1000, True, False, True, (".text",)),
        (0x7F00_2000, 0x1000, True, True, False, (".data",)),
        (0x7F00_3000, 0x1000, True, False, False, (".reloc",)),
    ]


def test_identify_pe() -> None:
    assert identify(build_pe()) == "pe"


# --- one test per error ---------------------------------------------------------------


def _patch(data: bytes, offset: int, fmt: str, *values: int | bytes) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def test_bad_mz() -> None:
    with pytest.raises(PeFormatError, match=r"bad DOS signature b'ZM' at offset 0x0") as info:
        PeImage.parse(b"ZM" + build_pe()[2:])
    assert info.value.offset == 0


def test_truncated_dos_header() -> None:
    with pytest.raises(PeFormatError, match="truncated DOS header"):
        PeImage.parse(b"MZ" + bytes(20))


def test_e_lfanew_past_end() -> None:
    with pytest.raises(PeFormatError, match=r"e_lfanew 0xfff0 \(at offset 0x3c\) points past"):
        PeImage.parse(_patch(build_pe(), 0x3C, "<I", 0xFFF0))


def test_bad_pe_signature() -> None:
    with pytest.raises(PeFormatError, match=r"bad PE signature b'PX\\x00\\x00' at offset 0x40"):
        PeImage.parse(_patch(build_pe(), E_LFANEW, "<4s", b"PX\0\0"))


def test_pe32_rejected() -> None:
    with pytest.raises(PeFormatError, match=r"PE32 \(32-bit\).*at offset 0x58") as info:
        PeImage.parse(build_pe(magic=0x10B))
    assert info.value.offset == OPT_AT


def test_wrong_machine() -> None:
    with pytest.raises(PeFormatError, match=r"machine 0x014c is not x64 \(0x8664\) at offset "
                                            r"0x44"):
        PeImage.parse(build_pe(machine=0x014C))


def test_non_efi_subsystem() -> None:
    with pytest.raises(PeFormatError, match=r"subsystem 0x3 is not an EFI subsystem"):
        PeImage.parse(build_pe(subsystem=3))


def test_size_of_image_zero() -> None:
    with pytest.raises(PeFormatError, match="SizeOfImage 0x0"):
        PeImage.parse(_patch(build_pe(), OPT_AT + 56, "<I", 0))


def test_section_past_end_of_file() -> None:
    data = build_pe()[:0x700]  # .data's raw bytes (0x600..0x800) are cut short
    with pytest.raises(PeFormatError, match=r"section '.data' \(header at offset 0x170\) raw "
                                            r"data 0x600..0x800 extends past the end") as info:
        PeImage.parse(data)
    assert info.value.offset == SECTION_TABLE + 40


def test_section_past_size_of_image() -> None:
    data = _patch(build_pe(), SECTION_TABLE + 40 + 8, "<I", 0x5000)  # .data VirtualSize
    with pytest.raises(PeFormatError, match="past SizeOfImage 0x4000"):
        PeImage.parse(data)


def test_truncated_section_table() -> None:
    with pytest.raises(PeFormatError, match="section table"):
        PeImage.parse(_patch(build_pe(), E_LFANEW + 6, "<H", 200))


def test_bad_relocation_block_size() -> None:
    with pytest.raises(PeFormatError, match=r"relocation block at RVA 0x3000 has invalid "
                                            r"SizeOfBlock 0x4"):
        PeImage.parse(_patch(build_pe(), 0x804, "<I", 4))


def test_unsupported_relocation_type() -> None:
    image = PeImage.parse(build_pe(relocs=[(DIR64, 0x2000), (HIGHLOW, 0x2008)]))
    with pytest.raises(PeRelocationError, match=r"unsupported base relocation type 3 "
                                                r"\(IMAGE_REL_BASED_HIGHLOW\) at RVA 0x2008"
                       ) as info:
        image.relocate(0x7F00_0000)
    assert (info.value.rva, info.value.reloc_type) == (0x2008, HIGHLOW)


def test_stripped_image_without_reloc_cannot_move() -> None:
    image = PeImage.parse(build_pe(with_reloc=False, characteristics=0x23))
    assert image.relocations_stripped
    assert image.relocate(IMAGE_BASE) == image.layout
    with pytest.raises(PeRelocationError, match="cannot be relocated to 0x7f000000"):
        image.relocate(0x7F00_0000)


def test_misaligned_base() -> None:
    with pytest.raises(PeRelocationError, match="not aligned"):
        PeImage.parse(build_pe()).relocate(0x7F00_0800)


def test_directories_are_read_by_rva_when_file_alignment_is_below_0x200() -> None:
    # lld-link /filealign:32 (the C test drivers) places sections at file offsets that are
    # not multiples of 0x200; the export and debug directories must still be found by RVA.
    data = bytearray(build_pe())
    struct.pack_into("<I", data, OPT_AT + 36, 0x20)  # FileAlignment
    data_section = SECTION_TABLE + 40
    moved = bytes(data[0x600:0x800])
    struct.pack_into("<I", data, data_section + 20, 0x820)  # .data PointerToRawData
    reloc_section = SECTION_TABLE + 80
    reloc_raw = bytes(data[0x800:0xA00])
    struct.pack_into("<I", data, reloc_section + 20, 0xA20)
    data[0x600:0x800] = bytes(0x200)
    data.extend(bytes(0xC20 - len(data)))
    data[0x820:0xA20] = moved
    data[0xA20:0xC20] = reloc_raw

    image = PeImage.parse(bytes(data), "Aligned32")

    assert image.debug == CodeView("RSDS", "/b/Test.pdb", 7, DEBUG_GUID)
    assert image.exports == {"Helper": 0x1002, "ModuleEntry": 0x1000}
