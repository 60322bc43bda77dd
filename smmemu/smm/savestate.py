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
from collections.abc import Mapping
from dataclasses import dataclass, field

from smmemu.profiles import SaveStateKind
from smmemu.structs import LeStruct

__all__ = [
    "Amd64SaveStateMap",
    "CpuSnapshot",
    "Intel64SaveStateMap",
    "IoTrap",
    "Segment",
    "attributes_from_flags",
    "decode_save_state",
    "encode_save_state",
    "flags_from_attributes",
    "map_size",
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
    """The interrupted CPU state the save-state map is written from."""

    regs: Mapping[str, int]
    segments: Mapping[str, Segment]
    gdtr: tuple[int, int] = (0, 0)
    idtr: tuple[int, int] = (0, 0)
    ldtr: Segment = field(default_factory=lambda: Segment(0, 0, 0, 0))
    tr: Segment = field(default_factory=lambda: Segment(0, 0, 0, 0))


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


def _encode_amd64(snap: CpuSnapshot, smbase: int, revision: int, io: IoTrap | None,
                  previous: bytes) -> bytes:
    m = Amd64SaveStateMap.from_bytes(previous)
    for name in SEGMENTS:
        seg = snap.segments[name]
        upper = name.upper()
        setattr(m, f"{upper}Selector", seg.selector)
        setattr(m, f"{upper}Attributes", attributes_from_flags(seg.flags))
        setattr(m, f"{upper}Limit", seg.limit)
        setattr(m, f"{upper}Base", seg.base)
    m.GDTRBase, m.GDTRLimit = snap.gdtr
    m.IDTRBase, m.IDTRLimit = snap.idtr
    for prefix, seg in (("LDTR", snap.ldtr), ("TR", snap.tr)):
        setattr(m, f"{prefix}Selector", seg.selector)
        setattr(m, f"{prefix}Attributes", attributes_from_flags(seg.flags))
        setattr(m, f"{prefix}Limit", seg.limit)
        setattr(m, f"{prefix}Base", seg.base)
    regs = snap.regs
    m.EFER = regs["efer"]
    m.SMMRevId = revision
    m.SMBASE = smbase
    m.CR3 = regs["cr3"]
    # QEMU's 4-byte stores into 8-byte slots: the upper halves keep SMRAM's old bytes.
    for name in ("CR4", "CR0", "DR7", "DR6", "RFLAGS"):
        old = int(getattr(m, name))
        setattr(m, name, (old & ~0xFFFF_FFFF) | _low32(regs[name.lower()]))
    m.RIP = regs["rip"]
    for name in GPRS:
        setattr(m, name.upper(), regs[name])
    if io is not None:
        # AMD IO_DWord: bit 0 IN, bit 1 valid, bits 4/5 byte/word, port in 31:16
        # (edk2 UefiCpuPkg/Library/MmSaveStateLib/AmdMmSaveState.c).
        width_bit = {1: 1 << 4, 2: 1 << 5}.get(io.size, 0)
        m.IO_DWord = (io.port << 16) | width_bit | (1 << 1) | int(io.is_in)
        m.IO_RIP = io.rip
    return m.to_bytes()


def _encode_intel64(snap: CpuSnapshot, smbase: int, revision: int, io: IoTrap | None,
                    previous: bytes) -> bytes:
    m = Intel64SaveStateMap.from_bytes(previous)
    regs = snap.regs
    m.GdtBaseLoDword, m.GdtBaseHiDword = _low32(snap.gdtr[0]), snap.gdtr[0] >> 32
    m.IdtBaseLoDword, m.IdtBaseHiDword = _low32(snap.idtr[0]), snap.idtr[0] >> 32
    m.LdtBaseLoDword, m.LdtBaseHiDword = _low32(snap.ldtr.base), snap.ldtr.base >> 32
    m.CR4 = _low32(regs["cr4"])
    m.SMBASE = smbase
    m.SMMRevId = revision
    m.IORestart = 0
    m.AutoHALTRestart = 0
    for name in GPRS:
        setattr(m, name.upper(), regs[name])
    for name in SEGMENTS:
        setattr(m, name.upper(), snap.segments[name].selector)
    m.LDTR = snap.ldtr.selector
    m.TR = snap.tr.selector
    m.DR7, m.DR6, m.RIP = regs["dr7"], regs["dr6"], regs["rip"]
    m.IA32_EFER, m.RFLAGS, m.CR3, m.CR0 = regs["efer"], regs["rflags"], regs["cr3"], regs["cr0"]
    if io is None:
        m.IOMisc = 0
    else:
        # IOMisc: bit 0 SmiFlag, 3:1 length, 7:4 type, 31:16 port (edk2 SMRAM_SAVE_STATE_IOMISC).
        io_type = (1 if io.is_in else 0) | (0 if io.uses_dx else 8)
        m.IOMisc = (io.port << 16) | (io_type << 4) | (io.size << 1) | 1
        m.IO_EIP = io.rip
    return m.to_bytes()


def encode_save_state(kind: SaveStateKind, snap: CpuSnapshot, *, smbase: int, revision: int,
                      io: IoTrap | None, previous: bytes) -> bytes:
    """The save-state map bytes for ``snap``; fields the CPU does not write keep ``previous``."""
    if kind is SaveStateKind.AMD64:
        return _encode_amd64(snap, smbase, revision, io, previous)
    return _encode_intel64(snap, smbase, revision, io, previous)


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
