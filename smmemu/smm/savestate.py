"""The architectural SMRAM save-state maps and their encoding rules.

Two maps are modelled (reference/smm_semantics.md section 2):

* :class:`Amd64SaveStateMap`: what QEMU (and Bochs) write at SMBASE+0xFE00,
  mirroring edk2 ``AMD_SMRAM_SAVE_STATE_MAP64``
  (``MdePkg/Include/Register/Amd/SmramSaveStateMap.h``) from offset 0xFE00.
  QEMU stores CR0, CR4, DR6, DR7 and RFLAGS with 4-byte stores into 8-byte
  slots and the GDTR/IDTR limits as 4 bytes; the upper halves keep whatever
  SMRAM held (``target/i386/tcg/system/smm_helper.c``).
* :class:`Intel64SaveStateMap`: the Intel 64 map at SMBASE+0xFC00, mirroring
  edk2 ``SMRAM_SAVE_STATE_MAP64`` (``MdePkg/Include/Register/Intel/SmramSaveStateMap.h``,
  SDM Vol. 3C SMM chapter). It records only selectors; the hidden descriptor
  parts are kept by the emulator, as the SDM says the CPU keeps them in
  undocumented space.

Segment attributes in the AMD64 map use QEMU's encoding
``attr = (descriptor_high_dword >> 8) & 0xF0FF`` for both save and restore
(smm_semantics.md 2.3).
"""

from __future__ import annotations

import ctypes
import operator
import struct
from dataclasses import dataclass

from smmemu.profiles import SaveStateKind
from smmemu.structs import LeStruct

__all__ = [
    "Amd64SaveStateMap",
    "CpuSnapshot",
    "Intel64SaveStateMap",
    "IoTrap",
    "RestoreImage",
    "Segment",
    "attributes_from_flags",
    "decode_save_state",
    "flags_from_attributes",
    "map_size",
    "read_restore_image",
    "write_save_state",
]

_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


def _segment_fields(name: str) -> list[tuple[str, type]]:
    return [(f"{name}Selector", _u16), (f"{name}Attributes", _u16),
            (f"{name}Limit", _u32), (f"{name}Base", _u64)]


class Amd64SaveStateMap(LeStruct):
    """``AMD_SMRAM_SAVE_STATE_MAP64`` from SMBASE+0xFE00 (512 bytes; names without the ``_``)."""

    _fields_ = [  # noqa: RUF012 - ctypes layout
        *_segment_fields("ES"), *_segment_fields("CS"), *_segment_fields("SS"),
        *_segment_fields("DS"), *_segment_fields("FS"), *_segment_fields("GS"),
        ("Reserved1", _u8 * 4), ("GDTRLimit", _u32), ("GDTRBase", _u64),
        ("LDTRSelector", _u16), ("LDTRAttributes", _u16), ("LDTRLimit", _u32), ("LDTRBase", _u64),
        ("Reserved2", _u8 * 4), ("IDTRLimit", _u32), ("IDTRBase", _u64),
        ("TRSelector", _u16), ("TRAttributes", _u16), ("TRLimit", _u32), ("TRBase", _u64),
        ("IO_RIP", _u64), ("IO_RCX", _u64), ("IO_RSI", _u64), ("IO_RDI", _u64),
        ("IO_DWord", _u32), ("Reserved3", _u8 * 4), ("IORestart", _u8), ("AutoHALTRestart", _u8),
        ("Reserved4", _u8 * 6), ("EFER", _u64), ("SVM_Guest", _u64), ("SVM_GuestVMCB", _u64),
        ("SVM_GuestVIntr", _u64), ("Reserved5", _u8 * 12), ("SMMRevId", _u32), ("SMBASE", _u32),
        ("Reserved6", _u8 * 28), ("SVM_GuestPAT", _u64), ("SVM_HostEFER", _u64),
        ("SVM_HostCR4", _u64), ("SVM_HostCR3", _u64), ("SVM_HostCR0", _u64),
        ("CR4", _u64), ("CR3", _u64), ("CR0", _u64), ("DR7", _u64), ("DR6", _u64),
        ("RFLAGS", _u64), ("RIP", _u64), ("R15", _u64), ("R14", _u64), ("R13", _u64),
        ("R12", _u64), ("R11", _u64), ("R10", _u64), ("R9", _u64), ("R8", _u64),
        ("RDI", _u64), ("RSI", _u64), ("RBP", _u64), ("RSP", _u64), ("RBX", _u64),
        ("RDX", _u64), ("RCX", _u64), ("RAX", _u64),
    ]


class Intel64SaveStateMap(LeStruct):
    """``SMRAM_SAVE_STATE_MAP64`` from SMBASE+0xFC00 (1 KiB; names without the ``_``)."""

    _fields_ = [  # noqa: RUF012 - ctypes layout
        ("Reserved1", _u8 * 0x1D0), ("GdtBaseHiDword", _u32), ("LdtBaseHiDword", _u32),
        ("IdtBaseHiDword", _u32), ("Reserved2", _u8 * 0xC), ("IO_EIP", _u64),
        ("Reserved3", _u8 * 0x50), ("CR4", _u32), ("Reserved4", _u8 * 0x48),
        ("GdtBaseLoDword", _u32), ("Reserved5", _u32), ("IdtBaseLoDword", _u32),
        ("Reserved6", _u32), ("LdtBaseLoDword", _u32), ("Reserved7", _u8 * 0x38),
        ("EptVmxControl", _u64), ("EnEptVmxControl", _u32), ("Reserved8", _u8 * 0x14),
        ("SMBASE", _u32), ("SMMRevId", _u32), ("IORestart", _u16), ("AutoHALTRestart", _u16),
        ("Reserved9", _u8 * 0x18), ("R15", _u64), ("R14", _u64), ("R13", _u64), ("R12", _u64),
        ("R11", _u64), ("R10", _u64), ("R9", _u64), ("R8", _u64), ("RAX", _u64), ("RCX", _u64),
        ("RDX", _u64), ("RBX", _u64), ("RSP", _u64), ("RBP", _u64), ("RSI", _u64), ("RDI", _u64),
        ("IOMemAddr", _u64), ("IOMisc", _u32), ("ES", _u32), ("CS", _u32), ("SS", _u32),
        ("DS", _u32), ("FS", _u32), ("GS", _u32), ("LDTR", _u32), ("TR", _u32), ("DR7", _u64),
        ("DR6", _u64), ("RIP", _u64), ("IA32_EFER", _u64), ("RFLAGS", _u64), ("CR3", _u64),
        ("CR0", _u64),
    ]


GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")


@dataclass(frozen=True, slots=True)
class Segment:
    """A segment register with its hidden part; ``flags`` is QEMU's cached descriptor high dword."""

    selector: int
    base: int
    limit: int
    flags: int


@dataclass(frozen=True, slots=True)
class IoTrap:
    """The I/O instruction that raised an SMI (for IOMisc / IO_DWord)."""

    port: int
    size: int
    is_in: bool
    uses_dx: bool
    rip: int


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """The interrupted CPU state the save-state map is written from.

    ``gprs`` is in QEMU's ``regs[]`` order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
    R8..R15); ``caches`` holds (selector, base, limit, flags) for ES, CS, SS, DS,
    FS, GS, LDTR, TR, GDTR and IDTR, in that order.
    """

    gprs: tuple[int, ...]
    rip: int
    rflags: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    dr6: int
    dr7: int
    caches: tuple[tuple[int, int, int, int], ...]

    def segment(self, index: int) -> Segment:
        """Cache ``index`` (0 ES ... 5 GS, 6 LDTR, 7 TR, 8 GDTR, 9 IDTR) as a Segment."""
        return Segment(*self.caches[index])


@dataclass(frozen=True, slots=True)
class RestoreImage:
    """The save-state fields RSM reads back, in one place for both maps."""

    gprs: tuple[int, ...]
    rip: int
    rflags: int
    cr0: int
    cr3: int
    cr4: int
    efer: int
    dr6: int
    dr7: int
    smbase: int
    revision: int
    io_restart: int = 0
    auto_halt_restart: int = 0
    io_smi: bool = False
    """IOMisc.SmiFlag (Intel map): the SMI came from the I/O instruction at ``io_rip``."""
    io_rip: int = 0


def attributes_from_flags(flags: int) -> int:
    """QEMU's save-state attribute word: access byte in 7:0, AVL/L/D/G in 15:12."""
    return (flags >> 8) & 0xF0FF


def flags_from_attributes(attributes: int, base: int, limit: int) -> int:
    """Rebuild a QEMU segment-cache ``flags`` word from a saved attribute word."""
    flags = (attributes & 0xF0FF) << 8
    raw_limit = limit >> 12 if attributes & 0x8000 else limit
    flags |= raw_limit & 0xF0000
    flags |= (base >> 16) & 0xFF
    flags |= base & 0xFF00_0000
    return flags


def map_size(kind: SaveStateKind) -> int:
    """Bytes from the map's start to SMBASE+0x10000."""
    return Amd64SaveStateMap.size() if kind is SaveStateKind.AMD64 else Intel64SaveStateMap.size()


def _low32(value: int) -> int:
    return value & 0xFFFF_FFFF


def _offsets(struct_type: type[Amd64SaveStateMap | Intel64SaveStateMap]) -> dict[str, int]:
    return {name: struct_type.offset_of(name) for name, *_ in struct_type._fields_}


# Offsets come from the ctypes mirrors, so the layout is stated once; looked up in a
# dict because SMI entry and RSM read them on every SMI.
_A = _offsets(Amd64SaveStateMap).__getitem__
_I = _offsets(Intel64SaveStateMap).__getitem__
_AMD_SEGMENTS = struct.Struct("<" + "HHIQ" * 6)
_AMD_SYSTEM = struct.Struct("<HHIQ")
_AMD_TABLE = struct.Struct("<IQ")
_U32, _U64, _PAIR32 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<II")
_OCTO = struct.Struct("<8Q")
# QEMU regs[] indices of R15..R8, of RDI..RAX (AMD order) and of RAX..RDI (Intel order).
_AMD_HIGH_GPRS = (15, 14, 13, 12, 11, 10, 9, 8)
_AMD_LOW_GPRS = (7, 6, 5, 4, 3, 2, 1, 0)  # RDI RSI RBP RSP RBX RDX RCX RAX
_INTEL_LOW_GPRS = (0, 1, 2, 3, 4, 5, 6, 7)  # RAX RCX RDX RBX RSP RBP RSI RDI
_AMD_HIGH_PICK = operator.itemgetter(*_AMD_HIGH_GPRS)
_AMD_LOW_PICK = operator.itemgetter(*_AMD_LOW_GPRS)
_INTEL_LOW_PICK = operator.itemgetter(*_INTEL_LOW_GPRS)
_INTEL_SELECTORS = struct.Struct("<8I")
_INTEL_TAIL = struct.Struct("<7Q")  # DR7 DR6 RIP IA32_EFER RFLAGS CR3 CR0


def _write_amd64(view: memoryview, o: int, snap: CpuSnapshot, smbase: int, revision: int,
                 io: IoTrap | None) -> None:
    caches = snap.caches
    # attributes_from_flags, inlined: this runs on every SMI.
    _AMD_SEGMENTS.pack_into(view, o + _A("ESSelector"), *(
        value for selector, base, limit, flags in caches[:6]
        for value in (selector, (flags >> 8) & 0xF0FF, limit, base)))
    for index, field_name in ((6, "LDTRSelector"), (7, "TRSelector")):
        selector, base, limit, flags = caches[index]
        _AMD_SYSTEM.pack_into(view, o + _A(field_name), selector, (flags >> 8) & 0xF0FF,
                              limit, base)
    _AMD_TABLE.pack_into(view, o + _A("GDTRLimit"), caches[8][2], caches[8][1])
    _AMD_TABLE.pack_into(view, o + _A("IDTRLimit"), caches[9][2], caches[9][1])
    _U64.pack_into(view, o + _A("EFER"), snap.efer)
    _PAIR32.pack_into(view, o + _A("SMMRevId"), revision, smbase)
    # QEMU's 4-byte stores into 8-byte slots: the upper halves keep SMRAM's old bytes.
    _U32.pack_into(view, o + _A("CR4"), snap.cr4 & 0xFFFF_FFFF)
    _U32.pack_into(view, o + _A("CR0"), snap.cr0 & 0xFFFF_FFFF)
    _U32.pack_into(view, o + _A("DR7"), snap.dr7 & 0xFFFF_FFFF)
    _U32.pack_into(view, o + _A("DR6"), snap.dr6 & 0xFFFF_FFFF)
    _U32.pack_into(view, o + _A("RFLAGS"), snap.rflags & 0xFFFF_FFFF)
    _U64.pack_into(view, o + _A("CR3"), snap.cr3)
    _U64.pack_into(view, o + _A("RIP"), snap.rip)
    gprs = snap.gprs
    _OCTO.pack_into(view, o + _A("R15"), *_AMD_HIGH_PICK(gprs))
    _OCTO.pack_into(view, o + _A("RDI"), *_AMD_LOW_PICK(gprs))
    if io is not None:
        # AMD IO_DWord: bit 0 IN, bit 1 valid, bits 4/5 byte/word, port in 31:16
        # (edk2 UefiCpuPkg/Library/MmSaveStateLib/AmdMmSaveState.c).
        width_bit = {1: 1 << 4, 2: 1 << 5}.get(io.size, 0)
        _U32.pack_into(view, o + _A("IO_DWord"),
                       (io.port << 16) | width_bit | (1 << 1) | int(io.is_in))
        _U64.pack_into(view, o + _A("IO_RIP"), io.rip)


def _write_intel64(view: memoryview, o: int, snap: CpuSnapshot, smbase: int, revision: int,
                   io: IoTrap | None, halted: bool) -> None:
    caches = snap.caches
    for base, low, high in ((caches[8][1], "GdtBaseLoDword", "GdtBaseHiDword"),
                            (caches[9][1], "IdtBaseLoDword", "IdtBaseHiDword"),
                            (caches[6][1], "LdtBaseLoDword", "LdtBaseHiDword")):
        _U32.pack_into(view, o + _I(low), _low32(base))
        _U32.pack_into(view, o + _I(high), base >> 32)
    _U32.pack_into(view, o + _I("CR4"), _low32(snap.cr4))
    _PAIR32.pack_into(view, o + _I("SMBASE"), smbase, revision)
    # I/O restart is armed by the handler; auto-HALT restart is set when the SMI woke a HLT.
    struct.pack_into("<HH", view, o + _I("IORestart"), 0, int(halted))
    gprs = snap.gprs
    _OCTO.pack_into(view, o + _I("R15"), *_AMD_HIGH_PICK(gprs))
    _OCTO.pack_into(view, o + _I("RAX"), *_INTEL_LOW_PICK(gprs))
    _INTEL_SELECTORS.pack_into(view, o + _I("ES"), *(caches[i][0] for i in range(8)))
    _INTEL_TAIL.pack_into(view, o + _I("DR7"), snap.dr7, snap.dr6, snap.rip, snap.efer,
                          snap.rflags, snap.cr3, snap.cr0)
    if io is None:
        _U32.pack_into(view, o + _I("IOMisc"), 0)
    else:
        # IOMisc: bit 0 SmiFlag, 3:1 length, 7:4 type, 31:16 port (edk2 SMRAM_SAVE_STATE_IOMISC).
        io_type = (1 if io.is_in else 0) | (0 if io.uses_dx else 8)
        _U32.pack_into(view, o + _I("IOMisc"),
                       (io.port << 16) | (io_type << 4) | (io.size << 1) | 1)
        _U64.pack_into(view, o + _I("IO_EIP"), io.rip)


def write_save_state(kind: SaveStateKind, view: memoryview, offset: int, snap: CpuSnapshot, *,
                     smbase: int, revision: int, io: IoTrap | None,
                     halted: bool = False) -> None:
    """Write the save-state map for ``snap`` in place at ``view[offset:]``.

    Fields the CPU does not store keep their old bytes, as on the CPU. QEMU's
    AMD64-style map has no I/O restart or auto-HALT restart support, so
    ``halted`` only sets the Intel map's AutoHALTRestart bit.
    """
    if kind is SaveStateKind.AMD64:
        _write_amd64(view, offset, snap, smbase, revision, io)
    else:
        _write_intel64(view, offset, snap, smbase, revision, io, halted)


def read_restore_image(kind: SaveStateKind, view: memoryview | bytes, o: int) -> RestoreImage:
    """The fields RSM restores, read from the map at ``view[o:]``."""
    gprs = [0] * 16
    if kind is SaveStateKind.AMD64:
        high = _OCTO.unpack_from(view, o + _A("R15"))
        low = _OCTO.unpack_from(view, o + _A("RDI"))
        for value, index in zip(high + low, _AMD_HIGH_GPRS + _AMD_LOW_GPRS, strict=True):
            gprs[index] = value
        revision, smbase = _PAIR32.unpack_from(view, o + _A("SMMRevId"))
        return RestoreImage(
            tuple(gprs), _U64.unpack_from(view, o + _A("RIP"))[0],
            _U32.unpack_from(view, o + _A("RFLAGS"))[0], _U32.unpack_from(view, o + _A("CR0"))[0],
            _U64.unpack_from(view, o + _A("CR3"))[0], _U32.unpack_from(view, o + _A("CR4"))[0],
            _U64.unpack_from(view, o + _A("EFER"))[0], _U32.unpack_from(view, o + _A("DR6"))[0],
            _U32.unpack_from(view, o + _A("DR7"))[0], smbase, revision,
        )
    high = _OCTO.unpack_from(view, o + _I("R15"))
    low = _OCTO.unpack_from(view, o + _I("RAX"))
    for value, index in zip(high + low, _AMD_HIGH_GPRS + _INTEL_LOW_GPRS, strict=True):
        gprs[index] = value
    dr7, dr6, rip, efer, rflags, cr3, cr0 = _INTEL_TAIL.unpack_from(view, o + _I("DR7"))
    smbase, revision = _PAIR32.unpack_from(view, o + _I("SMBASE"))
    cr4 = _U32.unpack_from(view, o + _I("CR4"))[0]
    io_restart, auto_halt = struct.unpack_from("<HH", view, o + _I("IORestart"))
    io_misc = _U32.unpack_from(view, o + _I("IOMisc"))[0]
    return RestoreImage(tuple(gprs), rip, rflags, cr0, cr3, cr4, efer, dr6, dr7, smbase, revision,
                        io_restart, auto_halt, bool(io_misc & 1),
                        _U64.unpack_from(view, o + _I("IO_EIP"))[0])


def decode_save_state(kind: SaveStateKind, raw: bytes) -> dict[str, int]:
    """Decode a save-state map into lower-case names (``rax``, ``rip``, ``cr3``, ``smbase``...)."""
    out: dict[str, int] = {}
    if kind is SaveStateKind.AMD64:
        a = Amd64SaveStateMap.from_bytes(raw)
        for name in GPRS:
            out[name] = int(getattr(a, name.upper()))
        out.update(
            rip=a.RIP, rflags=_low32(a.RFLAGS), cr0=_low32(a.CR0), cr3=a.CR3, cr4=_low32(a.CR4),
            efer=a.EFER, dr6=_low32(a.DR6), dr7=_low32(a.DR7), smbase=a.SMBASE,
            smm_revision=a.SMMRevId, gdtr_base=a.GDTRBase, gdtr_limit=a.GDTRLimit,
            idtr_base=a.IDTRBase, idtr_limit=a.IDTRLimit, io_dword=a.IO_DWord, io_rip=a.IO_RIP,
            io_restart=a.IORestart, auto_halt_restart=a.AutoHALTRestart,
        )
        for prefix in (*[s.upper() for s in SEGMENTS], "LDTR", "TR"):
            key = prefix.lower()
            out[key] = int(getattr(a, f"{prefix}Selector"))
            out[f"{key}_attributes"] = int(getattr(a, f"{prefix}Attributes"))
            out[f"{key}_limit"] = int(getattr(a, f"{prefix}Limit"))
            out[f"{key}_base"] = int(getattr(a, f"{prefix}Base"))
        return {k: int(v) for k, v in out.items()}
    i = Intel64SaveStateMap.from_bytes(raw)
    for name in GPRS:
        out[name] = int(getattr(i, name.upper()))
    for name in SEGMENTS:
        out[name] = int(getattr(i, name.upper())) & 0xFFFF
    out.update(
        rip=i.RIP, rflags=i.RFLAGS, cr0=i.CR0, cr3=i.CR3, cr4=i.CR4, efer=i.IA32_EFER,
        dr6=i.DR6, dr7=i.DR7, smbase=i.SMBASE, smm_revision=i.SMMRevId,
        ldtr=i.LDTR & 0xFFFF, tr=i.TR & 0xFFFF,
        gdtr_base=i.GdtBaseLoDword | (i.GdtBaseHiDword << 32),
        idtr_base=i.IdtBaseLoDword | (i.IdtBaseHiDword << 32),
        ldtr_base=i.LdtBaseLoDword | (i.LdtBaseHiDword << 32),
        io_misc=i.IOMisc, io_mem_addr=i.IOMemAddr, io_rip=i.IO_EIP,
        io_restart=i.IORestart, auto_halt_restart=i.AutoHALTRestart,
    )
    return {k: int(v) for k, v in out.items()}
