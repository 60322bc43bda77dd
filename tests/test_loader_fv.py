"""MM driver discovery in firmware volumes: synthetic volumes built here, and Debian's OVMF.

Structures follow PI Spec 1.8 Vol. 3 (EFI_FIRMWARE_VOLUME_HEADER, EFI_FFS_FILE_HEADER,
EFI_COMMON_SECTION_HEADER). The OVMF tests need Debian's ``ovmf`` package.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
from test_loader_pe import build_pe

from smmemu.loader import (
    FvFormatError,
    PeImage,
    UnknownFormatError,
    dispatch_order,
    identify,
    scan_firmware,
)
from smmemu.loader.fv import find_volumes

FFS2 = uuid.UUID("8c8ce578-8a3d-4f1c-9935-896185c32dd3")
NV_STORE = uuid.UUID("fff12b8d-7696-4c8b-a985-2747075b4f50")
LZMA = uuid.UUID("ee4e5898-3914-4259-9d6e-dc7bd79403cf")
DRIVER_GUID = uuid.UUID("5e1f0e1a-0000-4000-8000-0000000000aa")
PROTOCOL = uuid.UUID("5e1f0e1a-0000-4000-8000-0000000000bb")
STATE_VALID, STATE_DELETED = 0xF8, 0xE8  # erase polarity 1: DATA_VALID, then DELETED set


def section(kind: int, body: bytes) -> bytes:
    """EFI_COMMON_SECTION_HEADER + body, padded to 4 bytes."""
    raw = (4 + len(body)).to_bytes(3, "little") + bytes([kind]) + body
    return raw + bytes(-len(raw) % 4)


def ui(name: str) -> bytes:
    return section(0x15, (name + "\0").encode("utf-16-le"))


def ffs(guid: uuid.UUID, kind: int, body: bytes, state: int = STATE_VALID) -> bytes:
    """EFI_FFS_FILE_HEADER (checksums per PI Vol. 3) + sections, padded to 8 bytes."""
    size = 24 + len(body)
    head = bytearray(guid.bytes_le + b"\0\0" + bytes([kind, 0]) + size.to_bytes(3, "little")
                     + b"\0")
    head[16] = -sum(head) & 0xFF  # header checksum, with State and file checksum zero
    head[17] = 0xAA  # no FFS_ATTRIB_CHECKSUM
    head[23] = state
    raw = bytes(head) + body
    return raw + b"\xff" * (-len(raw) % 8)


def volume(files: bytes, *, size: int = 0x8000, fs_guid: uuid.UUID = FFS2) -> bytes:
    """EFI_FIRMWARE_VOLUME_HEADER with one block-map run, erase polarity 1, checksummed."""
    header = bytearray(bytes(16) + fs_guid.bytes_le
                       + struct.pack("<Q4sIHHHBB", size, b"_FVH", 0x0004FEFF, 0x48, 0, 0, 0, 2)
                       + struct.pack("<IIII", size // 0x1000, 0x1000, 0, 0))
    struct.pack_into("<H", header, 0x32, -sum(struct.unpack("<36H", header)) & 0xFFFF)
    body = bytes(header) + files
    assert len(body) <= size
    return body + b"\xff" * (size - len(body))


def mm_driver(name: str = "TestSmm", guid: uuid.UUID = DRIVER_GUID, kind: int = 0x0A,
              pe: bytes | None = None) -> bytes:
    depex = bytes([0x02]) + PROTOCOL.bytes_le + bytes([0x08])
    sections = section(0x1C, depex) + (section(0x10, pe or build_pe()) if pe != b"" else b"")
    return ffs(guid, kind, sections + ui(name) + section(0x14, b"\x05\x00" +
                                                          "2.5\0".encode("utf-16-le")))


def test_synthetic_volume() -> None:
    fv = volume(mm_driver())
    (driver,) = scan_firmware(fv)
    assert (driver.guid, driver.ffs_type, driver.type_name) == (DRIVER_GUID, 0x0A, "MM")
    assert (driver.ui_name, driver.version, driver.build_number) == ("TestSmm", "2.5", 5)
    assert driver.pe == build_pe()
    assert driver.dependency is not None
    assert driver.dependency.evaluate({PROTOCOL})
    assert PeImage.parse(driver.pe).has_relocations
    assert identify(fv) == "firmware"


def test_sections_inside_uncompressed_compression_section() -> None:
    inner = section(0x10, build_pe()) + ui("Wrapped")
    wrapped = section(0x01, struct.pack("<IB", len(inner), 0) + inner)  # EFI_NOT_COMPRESSED
    (driver,) = scan_firmware(volume(ffs(DRIVER_GUID, 0x0E, wrapped)))
    assert (driver.ui_name, driver.type_name, driver.depex) == ("Wrapped", "MM_STANDALONE", None)


def test_dxe_drivers_only_when_asked() -> None:
    dxe_guid = uuid.UUID(int=7)
    dxe = ffs(dxe_guid, 0x07, section(0x13, b"\x06\x08") + section(0x10, build_pe()))
    fv = volume(mm_driver() + dxe)
    assert [d.guid for d in scan_firmware(fv)] == [DRIVER_GUID]
    drivers = scan_firmware(fv, include_dxe=True)
    assert [(d.guid, d.depex) for d in drivers] == [(DRIVER_GUID, drivers[0].depex),
                                                    (dxe_guid, b"\x06\x08")]


def test_deleted_file_is_skipped() -> None:
    deleted = ffs(uuid.UUID(int=9), 0x0A, section(0x10, build_pe()), state=STATE_DELETED)
    assert [d.guid for d in scan_firmware(volume(deleted + mm_driver()))] == [DRIVER_GUID]


def test_non_file_system_volume_has_no_drivers() -> None:
    fv = volume(b"", fs_guid=NV_STORE)
    assert [v.file_system for v in find_volumes(fv)] == [NV_STORE]
    assert scan_firmware(fv) == []


def test_volumes_inside_a_flash_image() -> None:
    flash = b"\xff" * 0x1000 + volume(mm_driver()) + b"\0" * 0x800 + volume(
        mm_driver("Second", uuid.UUID(int=2)))
    assert [v.offset for v in find_volumes(flash)] == [0x1000, 0x9800]
    assert [d.ui_name for d in scan_firmware(flash)] == ["TestSmm", "Second"]


# --- malformed input: always FvFormatError, never a parser-library exception ----------


def test_no_volume() -> None:
    with pytest.raises(FvFormatError, match="no firmware volume found"):
        scan_firmware(b"\x00" * 4096)
    with pytest.raises(UnknownFormatError, match="loaders tried: pe, firmware"):
        identify(b"\x00" * 4096)


def test_bad_header_checksum() -> None:
    fv = bytearray(volume(mm_driver()))
    fv[0x32] ^= 0xFF
    with pytest.raises(FvFormatError, match="no firmware volume found"):
        scan_firmware(bytes(fv))


def test_truncated_volume() -> None:
    with pytest.raises(FvFormatError, match=r"at offset 0x0 declares FvLength 0x8000 but only "
                                            r"0x2000 bytes remain") as info:
        scan_firmware(volume(mm_driver())[:0x2000])
    assert info.value.offset == 0


def test_corrupt_file_header() -> None:
    first, second = mm_driver(), mm_driver("Two", uuid.UUID(int=2))
    bad = bytearray(volume(first + second))
    bad[0x48 + len(first) + 20:0x48 + len(first) + 23] = b"\x03\x00\x00"  # Size = 3
    with pytest.raises(FvFormatError, match="stops at a malformed file header"):
        scan_firmware(bytes(bad))


def test_undecodable_compressed_section() -> None:
    garbage = section(0x02, LZMA.bytes_le + struct.pack("<HH", 24, 1) + b"\x5a" * 64)
    with pytest.raises(FvFormatError, match=r"encapsulation section \(type 0x02\).*could not "
                                            r"be decoded"):
        scan_firmware(volume(ffs(DRIVER_GUID, 0x0A, garbage)))


def test_driver_without_pe32() -> None:
    with pytest.raises(FvFormatError, match=r"driver file .* \(NoPe, type 0x0a\) has no PE32"):
        scan_firmware(volume(mm_driver("NoPe", pe=b"")))


# --- Debian's OVMF (apt-get install ovmf) ---------------------------------------------

OVMF_DIR = Path("/usr/share/OVMF")
OVMF_SECBOOT = OVMF_DIR / "OVMF_CODE_4M.secboot.fd"
needs_ovmf = pytest.mark.skipif(not OVMF_SECBOOT.is_file(),
                                reason=f"{OVMF_SECBOOT} absent (apt-get install ovmf)")

# peers.md section 5: the 8 SMM modules of Debian 12's OVMF_CODE_4M.secboot.fd
OVMF_MM = {
    "PiSmmCore": ("e94f54cd-81eb-47ed-aec3-856f5dc157a9", 0x0D),
    "PiSmmCpuDxeSmm": ("a3ff0ef5-0c28-42f5-b544-8c7de1e80014", 0x0A),
    "VariableSmm": ("23a089b3-eed5-4ac5-b2ab-43e3298c2343", 0x0A),
    "SmmFaultTolerantWriteDxe": ("470cb248-e8ac-473c-bb4f-81069a1fe6fd", 0x0A),
    "SmmLockBox": ("33fb3535-f15e-4c17-b303-5eb94595ecb6", 0x0A),
    "FvbServicesSmm": ("2e7db7a7-608e-4041-b45f-00359e0766c6", 0x0A),
    "CpuIo2Smm": ("a47ee2d8-f60e-42fd-8e58-7bd65ee4c29b", 0x0A),
    "CpuHotplugSmm": ("84eea114-c6be-4445-8f90-51d97863e363", 0x0A),
}


@pytest.fixture(scope="module")
def ovmf() -> bytes:
    return OVMF_SECBOOT.read_bytes()


@needs_ovmf
def test_ovmf_mm_drivers(ovmf: bytes) -> None:
    drivers = scan_firmware(ovmf)
    assert {d.ui_name: (str(d.guid), d.ffs_type) for d in drivers} == OVMF_MM
    assert identify(ovmf) == "firmware"


@needs_ovmf
def test_ovmf_images_parse_and_relocate(ovmf: bytes) -> None:
    images = {d.ui_name: PeImage.parse(d.pe, d.ui_name) for d in scan_firmware(ovmf)}
    for image in images.values():
        assert (image.machine, image.subsystem) == (0x8664, 0x0B)
    lockbox, ftw = images["SmmLockBox"], images["SmmFaultTolerantWriteDxe"]
    assert lockbox.has_relocations
    assert not ftw.has_relocations
    base = 0x7F00_0000
    moved = lockbox.relocate(base)
    for rel in lockbox.relocations:
        (before,) = struct.unpack_from("<Q", lockbox.layout, rel.rva)
        assert struct.unpack_from("<Q", moved, rel.rva)[0] == before + base - lockbox.image_base
    assert ftw.relocate(base) == ftw.layout  # ImageBase 0, no .reloc, not stripped: edk2 loads it


@needs_ovmf
def test_ovmf_depexes_and_dispatch(ovmf: bytes) -> None:
    drivers = scan_firmware(ovmf)
    depexes = {d.ui_name: d.dependency for d in drivers}
    assert depexes.pop("PiSmmCore") is None  # the MM core has no depex
    everything = set().union(*(dep.guids for dep in depexes.values() if dep))
    for dep in depexes.values():
        assert dep is not None
        assert dep.guids
        assert not dep.evaluate(set())
        assert dep.evaluate(everything)
    ordered, blocked = dispatch_order(drivers, everything, lambda d: set())
    assert [d.ui_name for d in ordered] == [d.ui_name for d in drivers]
    assert blocked == []
    ordered, blocked = dispatch_order(drivers, set(), lambda d: set())
    assert [d.ui_name for d in ordered] == ["PiSmmCore"]
    assert len(blocked) == 7


@needs_ovmf
def test_ovmf_dxe_side_and_plain_build() -> None:
    names = {d.ui_name for d in scan_firmware(OVMF_SECBOOT.read_bytes(), include_dxe=True)}
    assert {"SmmAccess2Dxe", "SmmControl2Dxe", "PiSmmIpl", "VariableSmmRuntimeDxe"} <= names
    plain = OVMF_DIR / "OVMF_CODE_4M.fd"
    if plain.is_file():
        assert scan_firmware(plain.read_bytes()) == []
