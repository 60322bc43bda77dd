"""The one module that imports Unicorn: a typed adapter over a single x86-64 CPU.

Everything else in smmemu talks to the CPU through :class:`Engine`. The adapter
exists for three reasons:

* Unicorn's Python binding is untyped and its failure modes are integer codes;
  here they become :class:`~smmemu.errors.EngineError` subclasses or values.
* The facts measured in ``reference/unicorn_probe.md`` shape how the CPU must be
  driven (one ``UC_MODE_64`` instance per CPU, rows 2-3; register I/O through
  the context blob because ``reg_read``/``reg_write`` cost about 2 us each,
  row 13; ``ctl_remove_cache`` after any code rewrite, row 14). Those decisions
  live here, in one place.
* The context blob is build specific. :func:`context_layout` locates the
  fields smmemu needs by writing marker values through the public register API
  and finding them in ``bytes(context)``; a build whose layout differs is
  refused at start-up instead of being silently misread.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86
from unicorn.unicorn import Uc, UcContext, UcError, uc_version
from unicorn.unicorn_const import (
    UC_ARCH_X86,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_PROT,
    UC_HOOK_MEM_READ_PROT,
    UC_HOOK_MEM_WRITE_PROT,
    UC_MODE_16,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_NONE,
    UC_PROT_READ,
    UC_PROT_WRITE,
)

# The binding's ctypes handle on the C library, for the register fast path in Engine
# (a module private to the binding: pyproject pins "unicorn>=2.1.4,<2.2").
from unicorn.unicorn_py3.unicorn import uclib as _uclib

from smmemu.errors import EngineError

__all__ = [
    "ContextLayout",
    "Engine",
    "PreparedContext",
    "Prot",
    "RunFault",
    "context_layout",
    "unicorn_version",
]

_UC_HOOK_MEM_READ: Final = uc_const.UC_HOOK_MEM_READ
_UC_HOOK_MEM_WRITE: Final = uc_const.UC_HOOK_MEM_WRITE
_UC_CTL_TLB_FLUSH: Final = uc_const.UC_CTL_TLB_FLUSH
_UC_CTL_TB_FLUSH: Final = uc_const.UC_CTL_TB_FLUSH
_UC_CTL_IO_WRITE: Final = uc_const.UC_CTL_IO_WRITE
# uc_ctl control words as UC_CTL_WRITE(type, nargs) in unicorn.h builds them, for the
# per-SMI controls called directly (the binding's generic ctl costs about 2 us more).
_CTL_TLB_FLUSH_WORD: Final = (_UC_CTL_IO_WRITE << 30) | uc_const.UC_CTL_TLB_FLUSH
_CTL_REMOVE_CACHE_WORD: Final = ((_UC_CTL_IO_WRITE << 30) | (2 << 26)
                                 | uc_const.UC_CTL_TB_REMOVE_CACHE)
# uc_err uc_vmem_read(uc_engine *uc, uint64_t address, uc_prot prot, void *bytes, size_t size)
# (unicorn.h, 2.1): not wrapped by the Python binding; bound here without touching its CDLL.
_VMEM_READ: Final = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p,
    ctypes.c_size_t)(("uc_vmem_read", _uclib))


class Prot(enum.IntFlag):
    """Host-side page permissions of a mapped physical region."""

    NONE = UC_PROT_NONE
    READ = UC_PROT_READ
    WRITE = UC_PROT_WRITE
    EXEC = UC_PROT_EXEC
    ALL = UC_PROT_ALL


class RunFault(EngineError):  # noqa: N818 - a stop reason, named as the engine reports it
    """``emu_start`` stopped on an access the host refused (protection or unmapped memory).

    Attributes:
        kind: ``"read"``, ``"write"`` or ``"fetch"``.
        unmapped: True for an access to memory that is not mapped at all.
    """

    def __init__(self, message: str, *, kind: str, unmapped: bool, code: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.unmapped = unmapped
        self.code = code


_RUN_FAULTS: Final[dict[int, tuple[str, bool]]] = {
    uc_const.UC_ERR_READ_PROT: ("read", False),
    uc_const.UC_ERR_WRITE_PROT: ("write", False),
    uc_const.UC_ERR_FETCH_PROT: ("fetch", False),
    uc_const.UC_ERR_READ_UNMAPPED: ("read", True),
    uc_const.UC_ERR_WRITE_UNMAPPED: ("write", True),
    uc_const.UC_ERR_FETCH_UNMAPPED: ("fetch", True),
}

# Register names used across smmemu, mapped to Unicorn ids.
_REGS: Final[dict[str, int]] = {
    "rax": x86.UC_X86_REG_RAX, "rbx": x86.UC_X86_REG_RBX, "rcx": x86.UC_X86_REG_RCX,
    "rdx": x86.UC_X86_REG_RDX, "rsi": x86.UC_X86_REG_RSI, "rdi": x86.UC_X86_REG_RDI,
    "rbp": x86.UC_X86_REG_RBP, "rsp": x86.UC_X86_REG_RSP, "r8": x86.UC_X86_REG_R8,
    "r9": x86.UC_X86_REG_R9, "r10": x86.UC_X86_REG_R10, "r11": x86.UC_X86_REG_R11,
    "r12": x86.UC_X86_REG_R12, "r13": x86.UC_X86_REG_R13, "r14": x86.UC_X86_REG_R14,
    "r15": x86.UC_X86_REG_R15, "rip": x86.UC_X86_REG_RIP, "rflags": x86.UC_X86_REG_RFLAGS,
    "cs": x86.UC_X86_REG_CS, "ds": x86.UC_X86_REG_DS, "es": x86.UC_X86_REG_ES,
    "fs": x86.UC_X86_REG_FS, "gs": x86.UC_X86_REG_GS, "ss": x86.UC_X86_REG_SS,
    "cr0": x86.UC_X86_REG_CR0, "cr2": x86.UC_X86_REG_CR2, "cr3": x86.UC_X86_REG_CR3,
    "cr4": x86.UC_X86_REG_CR4, "dr0": x86.UC_X86_REG_DR0, "dr1": x86.UC_X86_REG_DR1,
    "dr2": x86.UC_X86_REG_DR2, "dr3": x86.UC_X86_REG_DR3, "dr6": x86.UC_X86_REG_DR6,
    "dr7": x86.UC_X86_REG_DR7, "fs_base": x86.UC_X86_REG_FS_BASE,
    "gs_base": x86.UC_X86_REG_GS_BASE,
}
_TABLE_REGS: Final[dict[str, int]] = {
    "gdtr": x86.UC_X86_REG_GDTR, "idtr": x86.UC_X86_REG_IDTR,
    "ldtr": x86.UC_X86_REG_LDTR, "tr": x86.UC_X86_REG_TR,
}
MSR_EFER: Final = 0xC000_0080

GPR_ORDER: Final = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
"""The order of ``regs[]`` in QEMU's CPUX86State (R_EAX = 0 ... R_R15 = 15)."""

SEGMENT_ORDER: Final = ("es", "cs", "ss", "ds", "fs", "gs")
"""The order of ``segs[]`` in QEMU's CPUX86State (R_ES = 0 ... R_GS = 5)."""


@dataclass(frozen=True, slots=True)
class ContextLayout:
    """Byte offsets of CPUX86State fields inside ``bytes(UcContext)``.

    A segment cache (``SegmentCache``) is 24 bytes: selector u32 at +0, base u64
    at +8, limit u32 at +16, flags u32 at +20; ``flags`` holds the descriptor's
    high dword as QEMU loads it.
    """

    size: int
    regs: int
    eip: int
    eflags: int
    cc_block: int
    cc_block_size: int
    hflags: int
    hflags2: int
    segs: int
    ldt: int
    tr: int
    gdt: int
    idt: int
    cr: int
    efer: int
    dr: int
    error_code: int
    old_exception: int

    SEGMENT_CACHE_SIZE = 24

    def seg(self, name: str) -> int:
        """Offset of a segment cache: ``es``..``gs``, ``ldt``, ``tr``, ``gdt`` or ``idt``."""
        if name in SEGMENT_ORDER:
            return self.segs + SEGMENT_ORDER.index(name) * self.SEGMENT_CACHE_SIZE
        return int(getattr(self, name))

    def gpr(self, name: str) -> int:
        """Offset of a general-purpose register."""
        return self.regs + GPR_ORDER.index(name) * 8

    def cr_offset(self, index: int) -> int:
        """Offset of ``cr[index]``."""
        return self.cr + index * 8

    def dr_offset(self, index: int) -> int:
        """Offset of ``dr[index]``."""
        return self.dr + index * 8


def _find_unique(blob: bytes, value: int, width: int, what: str) -> int:
    pattern = value.to_bytes(width, "little")
    first = blob.find(pattern)
    if first < 0 or blob.find(pattern, first + 1) >= 0:
        raise EngineError(
            f"cannot locate {what} in this Unicorn build's context blob; "
            f"smmemu supports unicorn 2.1.x ({unicorn_version()} installed)"
        )
    return first


@functools.cache
def context_layout() -> ContextLayout:
    """Locate the CPUX86State fields smmemu uses, by writing markers through the public API.

    The result depends only on the installed Unicorn build, so it is computed
    once per process. Raises EngineError if any field cannot be found or the
    fields are not where QEMU's structure order puts them.
    """
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    markers = {
        "rax": 0x5A5A_0001_0203_0405, "r15": 0x5A5A_0F0F_0E0E_0D0D,
        "rip": 0x5A5A_1122, "cr2": 0x5A5A_2000_0000, "cr3": 0x5A5A_3000,
        "dr6": 0x5A5A_0006, "dr7": 0x5A5A_0007,
    }
    for name, value in markers.items():
        uc.reg_write(_REGS[name], value)
    uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0x5A5A_6D70_0000, 0x3FF, 0))
    uc.reg_write(x86.UC_X86_REG_IDTR, (0, 0x5A5A_1D70_0000, 0xFFF, 0))
    uc.reg_write(x86.UC_X86_REG_TR, (0x28, 0x5A5A_7500_0000, 0x67, 0x8B00))
    uc.reg_write(x86.UC_X86_REG_LDTR, (0x30, 0x5A5A_1D00_0000, 0x1F, 0x8200))
    uc.reg_write(x86.UC_X86_REG_FS_BASE, 0x5A5A_F500_0000)
    uc.msr_write(MSR_EFER, 0xD01)
    blob = bytes(uc.context_save())

    regs = _find_unique(blob, markers["rax"], 8, "RAX")
    if _find_unique(blob, markers["r15"], 8, "R15") != regs + 15 * 8:
        raise EngineError("unexpected register order in the Unicorn context blob")
    eip = _find_unique(blob, markers["rip"], 8, "RIP")
    gdt = _find_unique(blob, 0x5A5A_6D70_0000, 8, "GDTR") - 8
    idt = _find_unique(blob, 0x5A5A_1D70_0000, 8, "IDTR") - 8
    tr = _find_unique(blob, 0x5A5A_7500_0000, 8, "TR") - 8
    ldt = _find_unique(blob, 0x5A5A_1D00_0000, 8, "LDTR") - 8
    fs = _find_unique(blob, 0x5A5A_F500_0000, 8, "FS base") - 8
    segs = fs - 4 * ContextLayout.SEGMENT_CACHE_SIZE
    cr2 = _find_unique(blob, markers["cr2"], 8, "CR2")
    dr6 = _find_unique(blob, markers["dr6"], 8, "DR6")
    efer = _find_unique(blob, 0xD01, 8, "EFER")
    hflags = segs - 8
    layout = ContextLayout(
        size=len(blob), regs=regs, eip=eip, eflags=eip + 8, cc_block=eip + 16,
        cc_block_size=hflags - (eip + 16), hflags=hflags, hflags2=hflags + 4, segs=segs,
        ldt=ldt, tr=tr, gdt=gdt, idt=idt, cr=cr2 - 16, efer=efer, dr=dr6 - 6 * 8,
        error_code=0, old_exception=0,
    )
    expected_chain = (
        layout.ldt == segs + 6 * 24 and layout.tr == layout.ldt + 24
        and layout.gdt == layout.tr + 24 and layout.idt == layout.gdt + 24
        and layout.cr == layout.idt + 24
        and _find_unique(blob, markers["cr3"], 8, "CR3") == layout.cr_offset(3)
        and _find_unique(blob, markers["dr7"], 8, "DR7") == layout.dr_offset(7)
        and struct.unpack_from("<I", blob, tr)[0] == 0x28
    )
    if not expected_chain:
        raise EngineError("the Unicorn context blob does not have QEMU's CPUX86State order")
    error_code, old_exception = _locate_exception_fields(layout)
    return ContextLayout(**{**_fields(layout), "error_code": error_code,
                            "old_exception": old_exception})


def _fields(layout: ContextLayout) -> dict[str, int]:
    return {name: getattr(layout, name) for name in ContextLayout.__dataclass_fields__}


def _locate_exception_fields(layout: ContextLayout) -> tuple[int, int]:
    """Find ``error_code`` and ``old_exception`` by raising a #PF with a known error code.

    A write to a present, read-only page at CPL0 with CR0.WP set gives error
    code 3 (P|W); ``old_exception`` goes from -1 to 14 (unicorn_probe.md 2C).
    """
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    # PML4 @0x1000 -> PDPT @0x2000 -> PD @0x3000 -> PT @0x4000; code page 0x0 RW, page 0x5000 RO.
    uc.mem_write(0x1000, struct.pack("<Q", 0x2003))
    uc.mem_write(0x2000, struct.pack("<Q", 0x3003))
    uc.mem_write(0x3000, struct.pack("<Q", 0x4003))
    table = b"".join(struct.pack("<Q", (page << 12) | 3) for page in range(16))
    uc.mem_write(0x4000, table)
    uc.mem_write(0x4000 + 5 * 8, struct.pack("<Q", 0x5001))
    # mov dword [rax], 0x1 ; with rax = 0x5000
    uc.mem_write(0x100, bytes.fromhex("c70001000000"))
    uc.reg_write(x86.UC_X86_REG_CR3, 0x1000)
    uc.reg_write(x86.UC_X86_REG_CR4, 0x20)
    uc.reg_write(x86.UC_X86_REG_CR0, 0x8001_0011)
    uc.reg_write(x86.UC_X86_REG_RAX, 0x5000)
    before = bytes(uc.context_save())
    vectors: list[int] = []

    def on_intr(engine: Uc, vector: int, _user: object) -> None:
        vectors.append(vector)
        engine.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(0x100, 0x106)
    after = bytes(uc.context_save())
    if vectors != [14]:
        raise EngineError(f"page-fault calibration raised vectors {vectors}, expected [14]")
    old_exception = error_code = -1
    for offset in range(layout.efer + 8, len(after) - 4, 4):
        was = struct.unpack_from("<i", before, offset)[0]
        now = struct.unpack_from("<I", after, offset)[0]
        if old_exception < 0 and was == -1 and now == 14:
            old_exception = offset
        elif error_code < 0 and struct.unpack_from("<I", before, offset)[0] == 0 and now == 3:
            error_code = offset
    if old_exception < 0 or error_code < 0:
        raise EngineError("cannot locate the exception fields in the Unicorn context blob")
    return error_code, old_exception


def unicorn_version() -> str:
    """The installed Unicorn core version as ``major.minor``."""
    major, minor, _ = uc_version()
    return f"{major}.{minor}"


@dataclass(frozen=True, slots=True)
class PreparedContext:
    """A context blob as Unicorn's context object (see :meth:`Engine.prepare_context`)."""

    context: UcContext


@dataclass(frozen=True, slots=True)
class _HookIds:
    ids: tuple[int, ...]


class Engine:
    """One x86-64 CPU (a ``UC_MODE_64`` Unicorn instance) and its view of physical memory.

    Memory is mapped from host buffers that the caller owns, so several engines
    (CPUs) can share RAM later. All addresses given to memory methods are
    physical; ``run`` takes RIP and a linear ``until`` address.
    """

    def __init__(self) -> None:
        self.layout = context_layout()
        self._uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self._ctx: UcContext = self._uc.context_save()
        self._hooks: list[int] = []
        self._code_ranges: dict[int, tuple[int, int]] = {}
        self._uc.ctl_exits_enabled(True)  # and no exits: see run()
        # Register fast path: uc_reg_read/uc_reg_write on one preallocated u64 cost about
        # 0.5 us against 2 us through the binding's per-register class lookup (every
        # register in _REGS is a plain integer to Unicorn).
        self._handle = self._uc._uch
        self._ctx_handle = self._ctx.context
        self._value = ctypes.c_uint64()
        self._value_ref = ctypes.byref(self._value)

    # -- memory -----------------------------------------------------------
    def map_host(self, base: int, size: int, host_address: int, prot: Prot = Prot.ALL) -> None:
        """Map ``size`` bytes at physical ``base`` onto host memory at ``host_address``."""
        self._uc.mem_map_ptr(base, size, int(prot), host_address)

    def map_mmio(
        self,
        base: int,
        size: int,
        read: Callable[[int, int], int],
        write: Callable[[int, int, int], None],
    ) -> None:
        """Map an MMIO region whose reads and writes call back into Python (offsets from base)."""

        def on_read(_uc: Uc, offset: int, size_: int, _user: object) -> int:
            return read(offset, size_)

        def on_write(_uc: Uc, offset: int, size_: int, value: int, _user: object) -> None:
            write(offset, size_, value)

        self._uc.mmio_map(base, size, on_read, None, on_write, None)

    def unmap(self, base: int, size: int) -> None:
        """Remove a mapping."""
        self._uc.mem_unmap(base, size)

    def protect(self, base: int, size: int, prot: Prot) -> None:
        """Change the host-side permissions of a mapped region."""
        self._uc.mem_protect(base, size, int(prot))

    def read(self, address: int, size: int) -> bytes:
        """Read physical memory, ignoring host-side permissions."""
        return bytes(self._uc.mem_read(address, size))

    def read_fetched(self, linear: int, size: int, *, context: bytes) -> bytes | None:
        """Read code the CPU has just fetched, through its current paging (about 1 us).

        Only for bytes the CPU fetched: a translation that fails raises a silent
        #PF inside Unicorn (CR2 and ``old_exception`` change), so on failure
        ``context`` (saved by the caller just before) is put back and None returned.
        """
        buffer = ctypes.create_string_buffer(size)
        if _VMEM_READ(self._handle, linear, UC_PROT_EXEC, buffer, size):
            self.restore_context(context)
            return None
        return buffer.raw

    def write(self, address: int, data: bytes) -> None:
        """Write physical memory, ignoring host-side permissions."""
        self._uc.mem_write(address, data)

    def invalidate_code(self, begin: int, end: int) -> None:
        """Drop translated code for [begin, end); needed after the host rewrites code."""
        status = _uclib.uc_ctl(self._handle, _CTL_REMOVE_CACHE_WORD,
                               ctypes.c_uint64(begin), ctypes.c_uint64(end))
        if status:
            raise UcError(status)

    def flush_translations(self) -> None:
        """Drop every translated block (about 50 us, then re-translation).

        Needed when switching between counted (``count``) and free runs: blocks
        translated in one mode keep that mode's instrumentation.
        """
        self._uc.ctl(_UC_CTL_TB_FLUSH, _UC_CTL_IO_WRITE)

    def flush_tlb(self) -> None:
        """Flush the software TLB (after a context restore that changed paging)."""
        status = _uclib.uc_ctl(self._handle, _CTL_TLB_FLUSH_WORD)
        if status:
            raise UcError(status)

    # -- registers --------------------------------------------------------
    def reg(self, name: str) -> int:
        """Read one register by smmemu name (``rax``, ``cr0``, ``fs_base``, ``efer``...)."""
        if name == "efer":
            return int(self._uc.msr_read(MSR_EFER))
        self._value.value = 0  # segment selectors fill only the low bytes
        status = _uclib.uc_reg_read(self._handle, _REGS[name], self._value_ref)
        if status:
            raise UcError(status)
        return int(self._value.value)

    def set_reg(self, name: str, value: int) -> None:
        """Write one register by smmemu name."""
        if name == "efer":
            self._uc.msr_write(MSR_EFER, value)
            return
        self._value.value = value & 0xFFFF_FFFF_FFFF_FFFF
        status = _uclib.uc_reg_write(self._handle, _REGS[name], self._value_ref)
        if status:
            raise UcError(status)

    def native_msr(self, msr: int) -> int:
        """An MSR as Unicorn itself holds it (the ones smmemu does not emulate)."""
        return int(self._uc.msr_read(msr))

    def table_reg(self, name: str) -> tuple[int, int, int, int]:
        """Read ``gdtr``/``idtr``/``ldtr``/``tr`` as (selector, base, limit, flags)."""
        value = self._uc.reg_read(_TABLE_REGS[name])
        selector, base, limit, flags = value
        return int(selector), int(base), int(limit), int(flags)

    def set_table_reg(self, name: str, selector: int, base: int, limit: int, flags: int) -> None:
        """Write ``gdtr``/``idtr``/``ldtr``/``tr`` including the hidden part."""
        self._uc.reg_write(_TABLE_REGS[name], (selector, base, limit, flags))

    @staticmethod
    def is_register(name: str) -> bool:
        """Whether ``name`` is a register smmemu can read and write."""
        return name in _REGS or name == "efer"

    # -- contexts ---------------------------------------------------------
    def save_context(self) -> bytes:
        """The whole CPU state as the build's context blob (see :class:`ContextLayout`)."""
        status = _uclib.uc_context_save(self._handle, self._ctx_handle)
        if status:
            raise UcError(status)
        return ctypes.string_at(self._ctx_handle, self.layout.size)

    def restore_context(self, blob: bytes | bytearray) -> None:
        """Load a context blob produced by :meth:`save_context` (possibly patched).

        The blob is copied into the engine's scratch context and loaded from there
        (about 1 us; a new context object per call costs about 5 us).
        """
        if len(blob) != self.layout.size:
            raise EngineError(f"context blob of {len(blob)} bytes, expected {self.layout.size}")
        ctypes.memmove(self._ctx_handle, bytes(blob), self.layout.size)
        status = _uclib.uc_context_restore(self._handle, self._ctx_handle)
        if status:
            raise UcError(status)

    def prepare_context(self, blob: bytes | bytearray) -> PreparedContext:
        """A context blob made into Unicorn's context object once, to load it many times.

        Loading a prepared context costs about 0.5 us; :meth:`restore_context`,
        which copies the blob into the scratch context first, about 1 us.
        """
        if len(blob) != self.layout.size:
            raise EngineError(f"context blob of {len(blob)} bytes, expected {self.layout.size}")
        ctx = UcContext.__new__(UcContext)
        ctx.__setstate__((bytes(blob), self.layout.size, UC_ARCH_X86, UC_MODE_64))
        return PreparedContext(ctx)

    def load_context(self, prepared: PreparedContext) -> None:
        """Load a context from :meth:`prepare_context` (of any engine)."""
        self._uc.context_restore(prepared.context)

    @staticmethod
    def real_mode_template(cs_selector: int) -> bytes:
        """A context blob in real mode (16-bit code, CR0.PE = 0, EFER = 0, CR4 = 0).

        It comes from a throw-away ``UC_MODE_16`` instance (unicorn_probe.md row 3):
        only such an instance computes real-mode hidden flags; the blob is then
        restored into the ``UC_MODE_64`` engine, where every register stays visible.
        """
        uc = Uc(UC_ARCH_X86, UC_MODE_16)
        uc.reg_write(x86.UC_X86_REG_CS, cs_selector)
        for seg in ("ds", "es", "ss", "fs", "gs"):
            uc.reg_write(_REGS[seg], 0)
        uc.reg_write(x86.UC_X86_REG_DR7, 0x400)
        uc.reg_write(x86.UC_X86_REG_EFLAGS, 0x2)
        return bytes(uc.context_save())

    # -- hooks ------------------------------------------------------------
    def on_port_out(self, callback: Callable[[int, int, int], None]) -> None:
        """Call ``callback(port, size, value)`` for every OUT/OUTS element."""

        def hook(_uc: Uc, port: int, size: int, value: int, _user: object) -> None:
            callback(port, size, value)

        self._hooks.append(self._uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, x86.UC_X86_INS_OUT))

    def on_port_in(self, callback: Callable[[int, int], int]) -> None:
        """Call ``callback(port, size)`` for every IN/INS element; its result is loaded."""

        def hook(_uc: Uc, port: int, size: int, _user: object) -> int:
            return callback(port, size) & ((1 << (8 * size)) - 1)

        self._hooks.append(self._uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, x86.UC_X86_INS_IN))

    def on_interrupt(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(vector)`` for exceptions and INT n (never delivered by Unicorn)."""

        def hook(_uc: Uc, vector: int, _user: object) -> None:
            callback(vector)

        self._hooks.append(self._uc.hook_add(UC_HOOK_INTR, hook))

    def on_invalid_instruction(self, callback: Callable[[], bool]) -> None:
        """Call ``callback()`` on #UD (RSM outside QEMU's SMM lands here); True = handled."""

        def hook(_uc: Uc, _user: object) -> bool:
            return callback()

        self._hooks.append(self._uc.hook_add(UC_HOOK_INSN_INVALID, hook))

    def on_code(self, begin: int, end: int, callback: Callable[[int, int], None]) -> int:
        """Call ``callback(address, size)`` before each instruction in [begin, end] (linear).

        Must be installed before the code is first translated (row 11). Returns a
        handle for :meth:`remove_hook`.
        """

        def hook(_uc: Uc, address: int, size: int, _user: object) -> None:
            callback(address, size)

        handle = self._uc.hook_add(UC_HOOK_CODE, hook, None, begin, end)
        self._hooks.append(handle)
        self._code_ranges[int(handle)] = (begin, end)
        return int(handle)

    def code_hooks_at(self, address: int) -> int:
        """How many code hooks cover the linear ``address``."""
        return sum(1 for begin, end in self._code_ranges.values() if begin <= address <= end)

    def on_block(self, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(address, size)`` before every basic block (slow: about 0.5 us each).

        Used only when CPUs are interleaved; ``stop`` in it stops before the block.
        """

        def hook(_uc: Uc, address: int, size: int, _user: object) -> None:
            callback(address, size)

        self._hooks.append(self._uc.hook_add(UC_HOOK_BLOCK, hook))

    def on_protection_fault(self, callback: Callable[[str, int, int, int], bool]) -> None:
        """Call ``callback(kind, address, size, value)`` on a host-permission violation.

        Returning False stops the run with :class:`RunFault`.
        """
        kinds = {uc_const.UC_MEM_READ_PROT: "read", uc_const.UC_MEM_WRITE_PROT: "write",
                 uc_const.UC_MEM_FETCH_PROT: "fetch"}

        def hook(_uc: Uc, access: int, address: int, size: int, value: int, _user: object) -> bool:
            return callback(kinds.get(access, "read"), address, size, value)

        mask = UC_HOOK_MEM_READ_PROT | UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_FETCH_PROT
        self._hooks.append(self._uc.hook_add(mask, hook))

    def on_memory_access(
        self, begin: int, end: int, callback: Callable[[bool, int, int, int], None]
    ) -> int:
        """Call ``callback(is_write, address, size, value)`` for data accesses in [begin, end].

        Returns a handle for :meth:`remove_hook`. Any memory hook slows every load
        (unicorn_probe.md row 10): install only for debugging or watchpoints.
        """

        def hook(_uc: Uc, access: int, address: int, size: int, value: int, _user: object) -> None:
            callback(access == uc_const.UC_MEM_WRITE, address, size, value)

        handle = self._uc.hook_add(_UC_HOOK_MEM_READ | _UC_HOOK_MEM_WRITE, hook, None, begin, end)
        self._hooks.append(handle)
        return int(handle)

    def remove_hook(self, handle: int) -> None:
        """Remove a hook returned by :meth:`on_memory_access` or :meth:`on_code`."""
        self._uc.hook_del(handle)
        self._hooks.remove(handle)
        self._code_ranges.pop(handle, None)

    # -- running ----------------------------------------------------------
    def run(self, rip: int, until: int | None = None, count: int = 0) -> None:
        """Run from ``rip`` until a stop, ``count`` instructions, or the linear address ``until``.

        Unicorn's exit list is on and empty except while ``until`` is given: with a
        plain ``until``, Unicorn looks ``until - 1`` up in the guest's page tables
        after every run, and a miss is a silent #PF (CR2 and ``old_exception``
        change, so the next real fault turns into #DF). A run can begin in one
        world and end in the other, so no single address is safe for both.

        Raises:
            RunFault: on a protection or unmapped-memory stop.
            EngineError: on any other Unicorn error.
        """
        if until is not None:
            self._uc.ctl_set_exits([until])
        try:
            self._uc.emu_start(rip, 0 if until is None else until, 0, count)
        except UcError as err:
            fault = _RUN_FAULTS.get(err.errno)
            if fault is not None:
                raise RunFault(str(err), kind=fault[0], unmapped=fault[1], code=err.errno) from err
            raise EngineError(f"emulation failed: {err}") from err
        finally:
            if until is not None:
                self._uc.ctl_set_exits([])

    def stop(self) -> None:
        """Stop the current run at the next opportunity (safe from hooks and other threads)."""
        self._uc.emu_stop()

    def close(self) -> None:
        """Release hooks; the instance is unusable afterwards."""
        for handle in self._hooks:
            self._uc.hook_del(handle)
        self._hooks.clear()
        self._code_ranges.clear()
