"""MM drivers in firmware volumes and whole flash images, found with ``uefi-firmware``.

smmemu locates and checks the top-level volume headers itself (PI Spec 1.8, Vol. 3,
"EFI_FIRMWARE_VOLUME_HEADER": signature ``_FVH`` at offset 0x28, a 16-bit checksum over
HeaderLength bytes that sums to zero, FvLength within the input). ``uefi_firmware`` then
walks each volume's file system, decompresses LZMA/Tiano sections and descends into nested
volumes. Its failures (a status of False, an exception, a file walk that stopped on a
corrupt header) become :class:`FvFormatError`.

File and section type numbers are from PI Vol. 3, "EFI_FV_FILETYPE" and "EFI_SECTION_TYPE".
"""

from __future__ import annotations

import contextlib
import io
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from uefi_firmware import uefi  # type: ignore[import-untyped]

from smmemu.loader.depex import Depex
from smmemu.loader.errors import FvFormatError

__all__ = [
    "DXE_DRIVER_TYPE",
    "FFS_TYPE_NAMES",
    "MM_DRIVER_TYPES",
    "FirmwareDriver",
    "VolumeHeader",
    "find_volumes",
    "scan_firmware",
]

# uefi_firmware ships no annotations; its objects are handled through this alias.
_Fw: TypeAlias = Any

FFS_TYPE_NAMES = {
    0x07: "DRIVER",
    0x0A: "MM",  # EFI_FV_FILETYPE_SMM in PI 1.4 and earlier
    0x0C: "COMBINED_MM_DXE",
    0x0D: "MM_CORE",  # EFI_FV_FILETYPE_SMM_CORE
    0x0E: "MM_STANDALONE",
    0x0F: "MM_CORE_STANDALONE",
}
MM_DRIVER_TYPES = frozenset({0x0A, 0x0C, 0x0D, 0x0E, 0x0F})
DXE_DRIVER_TYPE = 0x07
SECTION_PE32, SECTION_DXE_DEPEX, SECTION_VERSION = 0x10, 0x13, 0x14
SECTION_UI, SECTION_MM_DEPEX = 0x15, 0x1C
_SECTION_GUID_DEFINED = 0x02
_FV_HEADER_SIZE = 0x38
_FV_MIN_HEADER = _FV_HEADER_SIZE + 16  # one block-map entry and the terminator
_ERASE_POLARITY = 0x00000800  # EFI_FVB2_ERASE_POLARITY
_FILE_DATA_VALID, _FILE_DELETED = 0x04, 0x10
_MAX_NESTING = 64  # volume > file system > file > section > ... levels; OVMF uses 9
_FILE_SYSTEM_GUIDS = frozenset({
    uuid.UUID("7a9354d9-0468-444a-81ce-0bf617d890df"),  # EFI_FIRMWARE_FILE_SYSTEM_GUID
    uuid.UUID("8c8ce578-8a3d-4f1c-9935-896185c32dd3"),  # EFI_FIRMWARE_FILE_SYSTEM2_GUID
    uuid.UUID("5473c07a-3dcb-4dca-bd6f-1e9689e7349a"),  # EFI_FIRMWARE_FILE_SYSTEM3_GUID
})


@dataclass(frozen=True)
class VolumeHeader:
    """A top-level firmware volume found in the input."""

    offset: int
    length: int
    header_length: int
    file_system: uuid.UUID
    attributes: int

    @property
    def is_file_system(self) -> bool:
        """True for FFS v1/v2/v3 volumes (the ones that hold drivers)."""
        return self.file_system in _FILE_SYSTEM_GUIDS


@dataclass(frozen=True)
class FirmwareDriver:
    """One driver file: its identity and the sections a loader needs."""

    guid: uuid.UUID
    ffs_type: int
    ui_name: str | None
    pe: bytes = field(repr=False)
    depex: bytes | None = field(repr=False)
    version: str | None = None
    build_number: int | None = None

    @property
    def type_name(self) -> str:
        """The EFI_FV_FILETYPE name, e.g. ``MM`` or ``MM_CORE``."""
        return FFS_TYPE_NAMES.get(self.ffs_type, f"{self.ffs_type:#04x}")

    @property
    def dependency(self) -> Depex | None:
        """The parsed depex, or None when the file has no depex section.

        Raises:
            DepexError: the depex section is malformed.
        """
        return Depex.parse(self.depex) if self.depex is not None else None


def find_volumes(data: bytes) -> list[VolumeHeader]:
    """Top-level firmware volumes in ``data``, in order.

    Candidates are ``_FVH`` signatures at 8-byte-aligned header positions whose header
    checksum is valid; the search resumes after each volume found.

    Raises:
        FvFormatError: a valid header whose volume runs past the end of ``data``.
    """
    found: list[VolumeHeader] = []
    pos = 0
    while (sig := data.find(b"_FVH", pos + 0x28)) >= 0:
        start = sig - 0x28
        header = _check_header(data, start)
        if header is None:
            pos = start + 8 - (start % 8) if start % 8 else start + 8
            continue
        if start + header.length > len(data):
            raise FvFormatError(f"firmware volume at offset {start:#x} declares FvLength "
                                f"{header.length:#x} but only {len(data) - start:#x} bytes "
                                f"remain (truncated image?)", offset=start)
        found.append(header)
        pos = start + header.length
    return found


def _check_header(data: bytes, start: int) -> VolumeHeader | None:
    """The volume header at ``start`` if it is plausible and its checksum is right."""
    if start < 0 or start % 8 or start + _FV_HEADER_SIZE > len(data):
        return None
    fs_guid = uuid.UUID(bytes_le=data[start + 0x10:start + 0x20])
    length, _, attributes, header_length = struct.unpack_from("<Q4sIH", data, start + 0x20)
    if header_length < _FV_MIN_HEADER or header_length % 2 or header_length > length:
        return None
    if start + header_length > len(data):
        return None
    words = struct.unpack_from(f"<{header_length // 2}H", data, start)
    if sum(words) & 0xFFFF:
        return None
    return VolumeHeader(start, length, header_length, fs_guid, attributes)


def scan_firmware(data: bytes, *, include_dxe: bool = False) -> list[FirmwareDriver]:
    """Every MM driver (and, if asked, every DXE driver) in a volume or flash image.

    MM drivers are FFS types 0x0A MM (SMM), 0x0C COMBINED_MM_DXE, 0x0D MM_CORE,
    0x0E MM_STANDALONE and 0x0F MM_CORE_STANDALONE; their depex is the MM depex section
    (0x1C). DXE drivers (0x07) carry the DXE depex (0x13). Deleted files are skipped and
    identical copies of a file (same GUID, type and sections) are reported once.

    Raises:
        FvFormatError: no volume, a truncated volume, or a volume ``uefi_firmware`` could
            not walk completely; or a driver file without a PE32 section.
    """
    data = bytes(data)
    volumes = find_volumes(data)
    if not volumes:
        raise FvFormatError(f"no firmware volume found in {len(data):#x} bytes (no _FVH "
                            f"signature with a valid header checksum)")
    wanted = MM_DRIVER_TYPES | ({DXE_DRIVER_TYPE} if include_dxe else frozenset())
    drivers: list[FirmwareDriver] = []
    for header in volumes:
        if not header.is_file_system:
            continue
        volume = _parse_volume(data[header.offset:header.offset + header.length], header)
        for ffs, polarity in _files(volume, bool(header.attributes & _ERASE_POLARITY), header):
            if int(ffs.type) in wanted and _is_live(int(ffs.state), polarity):
                driver = _driver(ffs)
                if driver not in drivers:
                    drivers.append(driver)
    return drivers


def _parse_volume(blob: bytes, header: VolumeHeader) -> _Fw:
    """Run uefi_firmware over one volume, silencing its console output."""
    where = f"firmware volume at offset {header.offset:#x}"
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            volume = uefi.FirmwareVolume(blob, f"{header.offset:#x}")
            complete = bool(volume.valid_header) and volume.process()
    except Exception as err:
        raise FvFormatError(f"uefi-firmware failed on the {where}: "
                            f"{type(err).__name__}: {err}", offset=header.offset) from err
    if not volume.valid_header:
        raise FvFormatError(f"uefi-firmware rejects the header of the {where}",
                            offset=header.offset)
    if not complete:
        detail = sink.getvalue().strip().splitlines()
        hint = f" ({detail[-1]})" if detail else ""
        raise FvFormatError(f"the {where} could not be walked completely: a file, section or "
                            f"compressed stream inside is malformed{hint}",
                            offset=header.offset)
    return volume


def _files(node: _Fw, polarity: bool, header: VolumeHeader, owner: str = "",
           depth: int = 0) -> Iterator[tuple[_Fw, bool]]:
    """Every FFS file under ``node`` (nested volumes included, post-order) and its polarity.

    Raises:
        FvFormatError: where uefi_firmware gave up without reporting it: a file list that
            stopped early, or an encapsulation section that could not be decoded.
    """
    if node is None:
        return
    if depth > _MAX_NESTING:
        raise FvFormatError(f"objects in the firmware volume at offset {header.offset:#x} are "
                            f"nested more than {_MAX_NESTING} levels deep", offset=header.offset)
    where = f"the firmware volume at offset {header.offset:#x}{owner}"
    if isinstance(node, uefi.FirmwareVolume):
        polarity = bool(int(getattr(node, "attributes", 0)) & _ERASE_POLARITY)
    elif isinstance(node, uefi.FirmwareFileSystem):
        tail = node.overflow_data
        if isinstance(tail, bytes) and tail.strip(b"\xff"):
            used = len(node._data) - len(tail)
            raise FvFormatError(f"a file list in {where} stops at a malformed file header "
                                f"{used:#x} bytes into its file system", offset=header.offset)
    elif isinstance(node, uefi.FirmwareFile):
        owner = f", file {uuid.UUID(bytes_le=bytes(node.guid))}"
    elif isinstance(node, uefi.FirmwareFileSystemSection) and _undecoded(node):
        raise FvFormatError(f"an encapsulation section (type {int(node.type):#04x}) in "
                            f"{where} could not be decoded (corrupt compressed "
                            f"data?)", offset=header.offset)
    for child in getattr(node, "objects", None) or []:
        yield from _files(child, polarity, header, owner, depth + 1)
    if isinstance(node, uefi.FirmwareFile):  # after its sections were checked
        yield node, polarity


def _undecoded(section: _Fw) -> bool:
    """True when uefi_firmware silently dropped a compression or GUID-defined section."""
    inner = section.parsed_object
    if int(section.type) == _SECTION_GUID_DEFINED:
        return inner is None  # the library sets None when decoding fails
    if isinstance(inner, uefi.CompressedSection):
        return int(inner.type) != 0 and inner.data is None
    return False


def _is_live(state: int, erase_polarity: bool) -> bool:
    """The file state's highest set bit is DATA_VALID or MARKED_FOR_UPDATE (PI Vol. 3)."""
    if erase_polarity:
        state = ~state & 0xFF
    return bool(state) and _FILE_DATA_VALID <= 1 << (state.bit_length() - 1) < _FILE_DELETED


def _leaf_sections(sections: list[_Fw]) -> Iterator[_Fw]:
    """A file's sections, looking through compression and GUID-defined encapsulation."""
    for section in sections:
        yield section
        inner = getattr(section, "parsed_object", None)
        if isinstance(inner, uefi.CompressedSection | uefi.GuidDefinedSection):
            yield from _leaf_sections([s for s in inner.subsections
                                       if isinstance(s, uefi.FirmwareFileSystemSection)])


def _driver(ffs: _Fw) -> FirmwareDriver:
    """A FirmwareDriver from one uefi_firmware file object."""
    guid = uuid.UUID(bytes_le=bytes(ffs.guid))
    ffs_type = int(ffs.type)
    depex_type = SECTION_DXE_DEPEX if ffs_type == DXE_DRIVER_TYPE else SECTION_MM_DEPEX
    found: dict[int, bytes] = {}
    for section in _leaf_sections(list(ffs.sections)):
        found.setdefault(int(section.type), bytes(section.data))
    ui = _utf16(found[SECTION_UI]) if SECTION_UI in found else None
    if SECTION_PE32 not in found:
        raise FvFormatError(f"driver file {guid} ({ui or 'no UI name'}, type "
                            f"{ffs_type:#04x}) has no PE32 section")
    version, build = None, None
    if SECTION_VERSION in found and len(found[SECTION_VERSION]) >= 2:
        raw = found[SECTION_VERSION]
        build, version = struct.unpack_from("<H", raw)[0], _utf16(raw[2:])
    return FirmwareDriver(guid, ffs_type, ui, found[SECTION_PE32], found.get(depex_type),
                          version, build)


def _utf16(raw: bytes) -> str:
    """A NUL-terminated UCS-2 string."""
    return raw[: len(raw) // 2 * 2].decode("utf-16-le", "replace").split("\0", 1)[0]
