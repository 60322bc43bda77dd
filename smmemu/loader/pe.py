"""PE32+ x64 images as edk2 builds them: parsing, layout, relocation, page permissions.

Header parsing and the section table come from ``pefile``; the export and debug directories
are read by RVA from the laid-out image (pefile's file-offset mapping misses them when
FileAlignment is below 0x200, as with lld-link /filealign:32). smmemu adds the policy on
top: only x64 PE32+ images with an EFI subsystem, bounds checks with offsets in every
message, and edk2's loading rules (PE/COFF spec, "Optional Header", "Section Table",
".reloc Section"; edk2 MdePkg BasePeCoffLib):

- the image occupies SizeOfImage bytes, headers at RVA 0 and each section at its RVA;
  a section copies ``min(VirtualSize, SizeOfRawData)`` bytes (all of SizeOfRawData
  when VirtualSize is 0) and the rest is zero;
- base relocations are blocks of ``PageRVA, SizeOfBlock`` followed by 16-bit entries
  (type in the top 4 bits); smmemu applies DIR64 (10) and skips ABSOLUTE (0);
- an image with no relocations is relocatable (there is nothing to fix up) unless
  IMAGE_FILE_RELOCS_STRIPPED is set, in which case it loads only at its ImageBase.
  (Debian's OVMF SMM drivers have ImageBase 0 and a .reloc section: VariableSmm has
  about 5000 DIR64 entries.)
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pefile  # type: ignore[import-untyped]

from smmemu.loader.errors import PeFormatError, PeRelocationError

__all__ = [
    "EFI_SUBSYSTEMS",
    "CodeView",
    "PageRange",
    "PeImage",
    "PeSection",
    "PeVersions",
    "Relocation",
    "looks_like_pe",
]

# pefile ships no annotations; its objects are handled through this alias.
_Pe: TypeAlias = Any
_Perm: TypeAlias = tuple[bool, bool, bool, tuple[str, ...]]  # R, W, X, contents

MACHINE_X64 = 0x8664
PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
RELOCS_STRIPPED = 0x0001
SCN_EXECUTE, SCN_READ, SCN_WRITE = 0x20000000, 0x40000000, 0x80000000
REL_ABSOLUTE, REL_DIR64 = 0, 10
PAGE_SIZE = 0x1000
MAX_IMAGE_SIZE = 256 << 20  # far above any MM driver; refuses absurd SizeOfImage values
_OPT_FIXED_SIZE = 112  # PE32+ optional header before the data directories
_DIR_EXPORT, _DIR_BASERELOC, _DIR_DEBUG = 0, 5, 6
_DEBUG_TYPE_CODEVIEW = 2

EFI_SUBSYSTEMS = {
    0x0A: "EFI_APPLICATION",
    0x0B: "EFI_BOOT_SERVICE_DRIVER",  # edk2 DXE_SMM_DRIVER / DXE_DRIVER
    0x0C: "EFI_RUNTIME_DRIVER",
    0x0D: "EFI_ROM",
}
_REL_NAMES = {0: "ABSOLUTE", 1: "HIGH", 2: "LOW", 3: "HIGHLOW", 4: "HIGHADJ",
              5: "MACHINE_SPECIFIC_5", 7: "MACHINE_SPECIFIC_7", 8: "MACHINE_SPECIFIC_8",
              9: "MACHINE_SPECIFIC_9", 10: "DIR64"}


@dataclass(frozen=True)
class PeSection:
    """One section header and its raw bytes."""

    name: str
    rva: int
    virtual_size: int
    raw_size: int
    characteristics: int
    data: bytes = field(repr=False)

    @property
    def loaded_size(self) -> int:
        """Bytes copied from the file: ``min(VirtualSize, SizeOfRawData)``, or all raw data."""
        if self.virtual_size == 0 or self.virtual_size > self.raw_size:
            return self.raw_size
        return self.virtual_size

    @property
    def memory_size(self) -> int:
        """Bytes the section spans in the image."""
        return max(self.virtual_size, self.loaded_size)

    @property
    def readable(self) -> bool:
        """IMAGE_SCN_MEM_READ."""
        return bool(self.characteristics & SCN_READ)

    @property
    def writable(self) -> bool:
        """IMAGE_SCN_MEM_WRITE."""
        return bool(self.characteristics & SCN_WRITE)

    @property
    def executable(self) -> bool:
        """IMAGE_SCN_MEM_EXECUTE."""
        return bool(self.characteristics & SCN_EXECUTE)


@dataclass(frozen=True)
class Relocation:
    """One base-relocation entry (ABSOLUTE padding entries are not kept)."""

    rva: int
    type: int

    @property
    def type_name(self) -> str:
        """IMAGE_REL_BASED_* name of the type."""
        return _REL_NAMES.get(self.type, f"RESERVED_{self.type}")


@dataclass(frozen=True)
class CodeView:
    """The CodeView record a debug-directory entry points to (the symbol file's path)."""

    signature: str  # "RSDS" (PDB 7.0) or "NB10" (PDB 2.0; edk2's GenFw writes this one)
    path: str
    age: int
    guid: uuid.UUID | None = None


@dataclass(frozen=True)
class PeVersions:
    """The version fields of the optional header."""

    major_linker_version: int
    minor_linker_version: int
    major_operating_system_version: int
    minor_operating_system_version: int
    major_image_version: int
    minor_image_version: int
    major_subsystem_version: int
    minor_subsystem_version: int


@dataclass(frozen=True)
class PageRange:
    """A run of 4 KiB pages of a loaded image with one set of permissions."""

    start: int
    size: int
    readable: bool
    writable: bool
    executable: bool
    contents: tuple[str, ...]  # section names ("headers" for the PE headers), empty for a gap


@dataclass(frozen=True, eq=False)
class PeImage:
    """A validated x64 PE32+ EFI image. Build it with :meth:`parse`."""

    name: str | None
    machine: int
    subsystem: int
    image_base: int
    size_of_image: int
    size_of_headers: int
    section_alignment: int
    entry_point_rva: int
    characteristics: int
    sections: tuple[PeSection, ...]
    relocations: tuple[Relocation, ...]
    exports: dict[str, int]
    debug: CodeView | None
    versions: PeVersions
    layout: bytes = field(repr=False)  # the image laid out at its own ImageBase

    @property
    def subsystem_name(self) -> str:
        """EFI_APPLICATION, EFI_BOOT_SERVICE_DRIVER, EFI_RUNTIME_DRIVER or EFI_ROM."""
        return EFI_SUBSYSTEMS[self.subsystem]

    @property
    def has_relocations(self) -> bool:
        """True when the image carries at least one non-ABSOLUTE base relocation."""
        return bool(self.relocations)

    @property
    def relocations_stripped(self) -> bool:
        """IMAGE_FILE_RELOCS_STRIPPED: the image may load only at its ImageBase."""
        return bool(self.characteristics & RELOCS_STRIPPED)

    @classmethod
    def parse(cls, data: bytes, name: str | None = None) -> PeImage:
        """Validate ``data`` as an x64 PE32+ EFI image and lay it out.

        Raises:
            PeFormatError: naming the problem and its file offset.
        """
        label = f"PE image {name!r}" if name else "PE image"
        data = bytes(data)
        _check_signatures(data, label, name)
        try:
            pe = pefile.PE(data=data, fast_load=True)
        except Exception as err:
            raise PeFormatError(f"{label}: pefile cannot parse the headers: {err}",
                                path=name) from err
        opt, fh = pe.OPTIONAL_HEADER, pe.FILE_HEADER
        _check_header_fields(pe, data, label, name)
        sections = _sections(pe, data, label, name)
        size = int(opt.SizeOfImage)
        layout = bytearray(size)
        layout[:int(opt.SizeOfHeaders)] = data[:int(opt.SizeOfHeaders)]
        for sec in sections:
            layout[sec.rva:sec.rva + sec.loaded_size] = sec.data[:sec.loaded_size]
        directories = list(opt.DATA_DIRECTORY)
        return cls(
            name=name, machine=int(fh.Machine), subsystem=int(opt.Subsystem),
            image_base=int(opt.ImageBase), size_of_image=size,
            size_of_headers=int(opt.SizeOfHeaders),
            section_alignment=int(opt.SectionAlignment),
            entry_point_rva=int(opt.AddressOfEntryPoint),
            characteristics=int(fh.Characteristics), sections=sections,
            relocations=_relocations(layout, directories, label, name),
            exports=_exports(bytes(layout), directories),
            debug=_codeview(bytes(layout), directories, data),
            versions=PeVersions(*(int(getattr(opt, f)) for f in (
                "MajorLinkerVersion", "MinorLinkerVersion", "MajorOperatingSystemVersion",
                "MinorOperatingSystemVersion", "MajorImageVersion", "MinorImageVersion",
                "MajorSubsystemVersion", "MinorSubsystemVersion"))),
            layout=bytes(layout),
        )

    def section(self, name: str) -> PeSection:
        """The section called ``name``; KeyError if there is none."""
        for sec in self.sections:
            if sec.name == name:
                return sec
        raise KeyError(name)

    def relocate(self, base: int) -> bytes:
        """The image laid out for loading at ``base``: SizeOfImage bytes, fixups applied.

        Raises:
            PeRelocationError: ``base`` is misaligned, the image cannot move, or it has a
                relocation type other than DIR64/ABSOLUTE.
        """
        self._check_base(base)
        image = bytearray(self.layout)
        if not self.relocations:
            if base != self.image_base and self.relocations_stripped:
                raise PeRelocationError(
                    f"{self._label()} cannot be relocated to {base:#x}: it has no base "
                    f"relocations and IMAGE_FILE_RELOCS_STRIPPED is set, so it loads only at "
                    f"its ImageBase {self.image_base:#x}", path=self.name)
            return bytes(image)
        delta = (base - self.image_base) & 0xFFFF_FFFF_FFFF_FFFF
        for rel in self.relocations:
            if rel.type != REL_DIR64:
                raise PeRelocationError(
                    f"{self._label()}: unsupported base relocation type {rel.type} "
                    f"(IMAGE_REL_BASED_{rel.type_name}) at RVA {rel.rva:#x}; only DIR64 and "
                    f"ABSOLUTE are supported", rva=rel.rva, reloc_type=rel.type, path=self.name)
            (value,) = struct.unpack_from("<Q", image, rel.rva)
            struct.pack_into("<Q", image, rel.rva, (value + delta) & 0xFFFF_FFFF_FFFF_FFFF)
        return bytes(image)

    def load_plan(self, base: int) -> tuple[PageRange, ...]:
        """Page ranges of the image loaded at ``base`` with the permissions of their sections.

        Headers are read-only; a page shared by several sections gets the union of their
        permissions; pages no section covers are read-only gaps.

        Raises:
            PeRelocationError: ``base`` is not page-aligned or the image would not fit.
        """
        self._check_base(base)
        pages: list[_Perm | None] = [None] * -(-self.size_of_image // PAGE_SIZE)
        spans = [("headers", 0, self.size_of_headers, (True, False, False))]
        spans += [(s.name, s.rva, s.memory_size, (s.readable, s.writable, s.executable))
                  for s in self.sections]
        for label, start, size, (r, w, x) in spans:
            for page in range(start // PAGE_SIZE, -(-(start + size) // PAGE_SIZE)):
                old = pages[page] or (False, False, False, ())
                names = old[3] if label in old[3] else (*old[3], label)
                pages[page] = (old[0] or r, old[1] or w, old[2] or x, names)
        perms = [p or (True, False, False, ()) for p in pages]
        ranges: list[PageRange] = []
        for page, (r, w, x, names) in enumerate(perms):
            last = ranges[-1] if ranges else None
            if last and (last.readable, last.writable, last.executable, last.contents) == (
                    r, w, x, names):
                ranges[-1] = PageRange(last.start, last.size + PAGE_SIZE, r, w, x, names)
            else:
                ranges.append(PageRange(base + page * PAGE_SIZE, PAGE_SIZE, r, w, x, names))
        return tuple(ranges)

    def _label(self) -> str:
        return f"PE image {self.name!r}" if self.name else "PE image"

    def _check_base(self, base: int) -> None:
        align = max(self.section_alignment, 1)
        if base < 0 or base % PAGE_SIZE or base % align:
            raise PeRelocationError(f"{self._label()}: load address {base:#x} is not aligned to "
                                    f"{max(align, PAGE_SIZE):#x}", path=self.name)
        if base + self.size_of_image > 1 << 64:
            raise PeRelocationError(f"{self._label()}: {self.size_of_image:#x} bytes at "
                                    f"{base:#x} pass the end of the address space",
                                    path=self.name)


def looks_like_pe(data: bytes) -> bool:
    """Cheap check: an MZ header whose e_lfanew points at a PE signature."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return False
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    return data[lfanew:lfanew + 4] == b"PE\0\0"


def _check_signatures(data: bytes, label: str, name: str | None) -> None:
    """The DOS and PE signatures (PE format: "MS-DOS Stub", "Signature"), before pefile runs."""
    if len(data) < 0x40:
        raise PeFormatError(f"{label}: truncated DOS header ({len(data)} bytes, need 64) "
                            f"at offset 0x0", offset=0, path=name)
    if data[:2] != b"MZ":
        raise PeFormatError(f"{label}: bad DOS signature {data[:2]!r} at offset 0x0 "
                            f"(expected b'MZ')", offset=0, path=name)
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if lfanew + 24 > len(data):
        raise PeFormatError(f"{label}: e_lfanew {lfanew:#x} (at offset 0x3c) points past the "
                            f"end of the file ({len(data):#x} bytes)", offset=0x3C, path=name)
    if data[lfanew:lfanew + 4] != b"PE\0\0":
        raise PeFormatError(f"{label}: bad PE signature {data[lfanew:lfanew + 4]!r} at offset "
                            f"{lfanew:#x} (expected b'PE\\x00\\x00')", offset=lfanew, path=name)


def _check_header_fields(pe: _Pe, data: bytes, label: str, name: str | None) -> None:
    """Machine, optional-header magic and size, subsystem, SizeOfImage/SizeOfHeaders."""
    fh, opt = pe.FILE_HEADER, pe.OPTIONAL_HEADER

    def fail(message: str, struct_: _Pe, fld: str) -> PeFormatError:
        at = int(struct_.get_field_absolute_offset(fld))
        return PeFormatError(f"{label}: {message} at offset {at:#x}", offset=at, path=name)

    if fh.Machine != MACHINE_X64:
        raise fail(f"machine {fh.Machine:#06x} is not x64 ({MACHINE_X64:#06x})", fh, "Machine")
    if opt.Magic == PE32_MAGIC:
        raise fail(f"optional header magic {PE32_MAGIC:#x} is PE32 (32-bit); "
                   f"expected PE32+ ({PE32PLUS_MAGIC:#x})", opt, "Magic")
    if opt.Magic != PE32PLUS_MAGIC:
        raise fail(f"unknown optional header magic {opt.Magic:#x}", opt, "Magic")
    ndirs = min(int(opt.NumberOfRvaAndSizes), 16)
    if fh.SizeOfOptionalHeader < _OPT_FIXED_SIZE + 8 * ndirs:
        raise fail(f"SizeOfOptionalHeader {fh.SizeOfOptionalHeader:#x} is too small for a "
                   f"PE32+ header with {ndirs} data directories", fh, "SizeOfOptionalHeader")
    if opt.Subsystem not in EFI_SUBSYSTEMS:
        raise fail(f"subsystem {opt.Subsystem:#x} is not an EFI subsystem (0xa-0xd)",
                   opt, "Subsystem")
    if not 0 < opt.SizeOfImage <= MAX_IMAGE_SIZE:
        raise fail(f"SizeOfImage {opt.SizeOfImage:#x} is outside 1..{MAX_IMAGE_SIZE:#x}",
                   opt, "SizeOfImage")
    if opt.SizeOfHeaders > min(opt.SizeOfImage, len(data)):
        raise fail(f"SizeOfHeaders {opt.SizeOfHeaders:#x} exceeds SizeOfImage or the file",
                   opt, "SizeOfHeaders")
    if opt.AddressOfEntryPoint >= opt.SizeOfImage:
        raise fail(f"entry point RVA {opt.AddressOfEntryPoint:#x} is outside the image",
                   opt, "AddressOfEntryPoint")
    table = int(opt.get_file_offset()) + int(fh.SizeOfOptionalHeader)
    if table + 40 * int(fh.NumberOfSections) > len(data) or (
            len(pe.sections) != fh.NumberOfSections):
        raise PeFormatError(f"{label}: section table at offset {table:#x} "
                            f"({fh.NumberOfSections} entries) is truncated", offset=table,
                            path=name)


def _sections(pe: _Pe, data: bytes, label: str, name: str | None) -> tuple[PeSection, ...]:
    """The section table, each entry checked against the file and SizeOfImage."""
    size_of_image = int(pe.OPTIONAL_HEADER.SizeOfImage)
    headers = int(pe.OPTIONAL_HEADER.SizeOfHeaders)
    out: list[PeSection] = []
    end_of_previous = headers
    for raw in pe.sections:
        sec_name = bytes(raw.Name).rstrip(b"\0").decode("ascii", "replace")
        at = int(raw.get_file_offset())
        ptr, raw_size = int(raw.PointerToRawData), int(raw.SizeOfRawData)
        if raw_size and ptr + raw_size > len(data):
            raise PeFormatError(f"{label}: section {sec_name!r} (header at offset {at:#x}) raw "
                                f"data {ptr:#x}..{ptr + raw_size:#x} extends past the end of "
                                f"the file ({len(data):#x} bytes)", offset=at, path=name)
        sec = PeSection(sec_name, int(raw.VirtualAddress), int(raw.Misc_VirtualSize), raw_size,
                        int(raw.Characteristics), data[ptr:ptr + raw_size] if raw_size else b"")
        if sec.rva < end_of_previous or sec.rva + sec.memory_size > size_of_image:
            raise PeFormatError(f"{label}: section {sec_name!r} (header at offset {at:#x}) "
                                f"spans RVA {sec.rva:#x}..{sec.rva + sec.memory_size:#x}, "
                                f"overlapping the headers or another section or past "
                                f"SizeOfImage {size_of_image:#x}", offset=at, path=name)
        end_of_previous = sec.rva + sec.memory_size
        out.append(sec)
    return tuple(out)


def _relocations(layout: bytearray, directories: list[_Pe], label: str,
                 name: str | None) -> tuple[Relocation, ...]:
    """Decode the base-relocation blocks (PE/COFF spec ".reloc Section") from the layout."""
    if len(directories) <= _DIR_BASERELOC or not directories[_DIR_BASERELOC].Size:
        return ()
    start = int(directories[_DIR_BASERELOC].VirtualAddress)
    end = start + int(directories[_DIR_BASERELOC].Size)
    if end > len(layout):
        raise PeFormatError(f"{label}: base relocation directory RVA {start:#x}..{end:#x} is "
                            f"outside the image", path=name)
    out: list[Relocation] = []
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise PeFormatError(f"{label}: truncated relocation block header at RVA {pos:#x}",
                                path=name)
        page, block = struct.unpack_from("<II", layout, pos)
        if block < 8 or block % 2 or pos + block > end:
            raise PeFormatError(f"{label}: relocation block at RVA {pos:#x} has invalid "
                                f"SizeOfBlock {block:#x}", path=name)
        for (entry,) in struct.iter_unpack("<H", layout[pos + 8:pos + block]):
            kind, rva = entry >> 12, page + (entry & 0xFFF)
            if kind == REL_ABSOLUTE:
                continue
            if kind == REL_DIR64 and rva + 8 > len(layout):
                raise PeFormatError(f"{label}: DIR64 relocation at RVA {rva:#x} (block at RVA "
                                    f"{pos:#x}) is outside the image", path=name)
            out.append(Relocation(rva, kind))
        pos += block
    return tuple(out)


def _directory(directories: list[Any], index: int, layout: bytes) -> tuple[int, int]:
    """(RVA, size) of data directory ``index``, or (0, 0) when absent or outside the image."""
    if index >= len(directories):
        return 0, 0
    rva, size = int(directories[index].VirtualAddress), int(directories[index].Size)
    if rva == 0 or size == 0 or rva + size > len(layout):
        return 0, 0
    return rva, size


def _exports(layout: bytes, directories: list[Any]) -> dict[str, int]:
    """Named exports (name -> RVA), read by RVA from the laid-out image.

    IMAGE_EXPORT_DIRECTORY (PE/COFF 6.3): NumberOfNames at +0x18, AddressOfFunctions,
    AddressOfNames and AddressOfNameOrdinals at +0x1C/+0x20/+0x24. Read from the layout,
    not through pefile, whose RVA-to-file-offset mapping misses sections placed at file
    offsets below 0x200 granularity (lld-link /filealign:32). Entries pointing outside
    the image are skipped.
    """
    rva, size = _directory(directories, _DIR_EXPORT, layout)
    if size < 0x28:
        return {}
    count_functions, count_names, functions, names, ordinals = struct.unpack_from(
        "<IIIII", layout, rva + 0x14)
    out: dict[str, int] = {}
    for index in range(min(count_names, 0x10000)):
        name_at, ordinal_at = names + 4 * index, ordinals + 2 * index
        if name_at + 4 > len(layout) or ordinal_at + 2 > len(layout):
            break
        (name_rva,) = struct.unpack_from("<I", layout, name_at)
        (ordinal,) = struct.unpack_from("<H", layout, ordinal_at)
        function_at = functions + 4 * ordinal
        if ordinal >= count_functions or function_at + 4 > len(layout) or \
                name_rva >= len(layout):
            continue
        (address,) = struct.unpack_from("<I", layout, function_at)
        out[_c_string(layout[name_rva:name_rva + 256])] = address
    return out


def _codeview(layout: bytes, directories: list[Any], data: bytes) -> CodeView | None:
    """The first CodeView (RSDS or NB10) record named by the debug directory.

    IMAGE_DEBUG_DIRECTORY entries (PE/COFF 6.1.1) are 28 bytes: Type at +12, SizeOfData
    +16, AddressOfRawData +20, PointerToRawData +24; read by RVA from the layout.
    """
    rva, size = _directory(directories, _DIR_DEBUG, layout)
    for at in range(rva, rva + size - 27, 28):
        kind, length, address, pointer = struct.unpack_from("<IIII", layout, at + 12)
        if kind != _DEBUG_TYPE_CODEVIEW:
            continue
        blob = layout[address:address + length] if address else data[pointer:pointer + length]
        if blob[:4] == b"RSDS" and len(blob) >= 24:
            guid, (age,) = uuid.UUID(bytes_le=blob[4:20]), struct.unpack_from("<I", blob, 20)
            return CodeView("RSDS", _c_string(blob[24:]), age, guid)
        if blob[:4] == b"NB10" and len(blob) >= 16:
            (age,) = struct.unpack_from("<I", blob, 12)
            return CodeView("NB10", _c_string(blob[16:]), age)
    return None


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
