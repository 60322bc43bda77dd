"""The debugged CPU as the debugger sees it: mode, registers, segments, PC and memory views.

Three address kinds meet in a debugger of SMM code, and this module keeps them apart:

* **RIP** is what the CPU holds: an offset from CS.base in 16- and 32-bit code
  (``Cpu.next_rip``); in the 16-bit entry stub it is 0x8000 while the code runs at
  SMBASE+0x8000.
* **Linear** addresses are CS.base + RIP for code, the address after segmentation
  for data; every segment but CS is flat in smmemu's code, so a linear address is
  what users type. The debugger's PC, its code breakpoints and its listings are
  linear (Unicorn's code hooks report linear addresses too).
* **Physical** addresses come out of the page tables (4-level paging, the only
  paging mode an MM core or smmemu's non-SMM side uses; with CR0.PG clear,
  linear = physical). Watchpoints and ``x -p`` use them.

Memory is read in one of two views: the SMM view sees SMRAM's contents; the
non-SMM view sees what code outside SMM would (all-ones while TSEG is closed)
without recording the access as a finding. The current view follows the CPU.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from smmemu.cpu import Cpu, RunState
from smmemu.debug.errors import DebugError
from smmemu.disasm import Mode
from smmemu.errors import SmmemuError
from smmemu.machine import Machine
from smmemu.smm.delivery import translate

__all__ = [
    "GPRS",
    "SEGMENTS",
    "CpuMode",
    "MemoryView",
    "SegmentState",
    "Target",
]

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_DWORDS = {f"e{name[1:]}": name for name in GPRS[:8]} | {f"{name}d": name for name in GPRS[8:]}
_CONTROL = ("rflags", "cr0", "cr2", "cr3", "cr4", "efer", "fs_base", "gs_base",
            "dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
_MASK64 = (1 << 64) - 1
_SEG = struct.Struct("<I4xQII")
_U64 = struct.Struct("<Q")
_CR0_PE, _CR0_PG = 1 << 0, 1 << 31
_EFER_LMA = 1 << 10
_FLAG_L, _FLAG_D = 1 << 21, 1 << 22
_PAGE = 0x1000
_ENTRY_OFFSET = 0x8000


class CpuMode(enum.Enum):
    """The CPU's operating mode, from CR0.PE, EFER.LMA and the CS descriptor's L and D bits."""

    REAL = "16-bit real mode"
    PROTECTED16 = "16-bit protected mode"
    PROTECTED32 = "32-bit protected mode"
    COMPAT16 = "16-bit compatibility mode"
    COMPAT32 = "32-bit compatibility mode"
    LONG64 = "64-bit long mode"

    @property
    def code_size(self) -> Mode:
        """The size the CPU decodes instructions in."""
        if self is CpuMode.LONG64:
            return Mode.BITS64
        if self in (CpuMode.PROTECTED32, CpuMode.COMPAT32):
            return Mode.BITS32
        return Mode.BITS16


class MemoryView(enum.Enum):
    """Whose view of SMRAM a memory access takes."""

    CURRENT = "current"
    """SMM's while the CPU is in SMM, non-SMM code's otherwise."""
    SMM = "smm"
    NON_SMM = "non-smm"


@dataclass(frozen=True, slots=True)
class SegmentState:
    """A segment register with its hidden part (``flags``: QEMU's descriptor high dword)."""

    name: str
    selector: int
    base: int
    limit: int
    flags: int

    @property
    def attributes(self) -> int:
        """The 12 attribute bits as VMX and the AMD64 save-state map write them."""
        return (self.flags >> 8) & 0xF0FF


class Target:
    """Reads and changes the state of CPU 0 of a Machine for the debugger."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.cpu: Cpu = machine.cpu
        image = machine.image
        self._stub_size = image.symbols["smi_entry_end"] - image.symbols["smi_entry"]
        self._trampolines = [(machine.dxe_trampoline_address(t.name), len(t.code), t.name)
                             for t in machine.dxe_trampolines()]

    # -- segments and mode ---------------------------------------------------------------------
    def _blob(self) -> bytes:
        return self.cpu.engine.save_context()

    def segment(self, name: str) -> SegmentState:
        """``cs``..``gs`` (from the context blob), or ``ldtr``, ``tr``, ``gdtr``, ``idtr``."""
        engine = self.cpu.engine
        if name in SEGMENTS:
            return _segment_in(self._blob(), engine.layout.seg(name), name)
        if name in ("ldtr", "tr", "gdtr", "idtr"):
            selector, base, limit, flags = engine.table_reg(name)
            return SegmentState(name, selector & 0xFFFF, base, limit, flags)
        raise DebugError(f"no segment register {name!r}")

    def mode(self) -> CpuMode:
        """The operating mode now."""
        return self._mode_and_cs_base()[0]

    def _mode_and_cs_base(self) -> tuple[CpuMode, int]:
        """The mode and CS.base, from one context blob (register reads cost about 2 us each)."""
        layout = self.cpu.engine.layout
        blob = self._blob()
        cr0 = _U64.unpack_from(blob, layout.cr_offset(0))[0]
        efer = _U64.unpack_from(blob, layout.efer)[0]
        cs = _segment_in(blob, layout.seg("cs"), "cs")
        flags = cs.flags
        if not cr0 & _CR0_PE:
            mode = CpuMode.REAL
        elif efer & _EFER_LMA:
            if flags & _FLAG_L:
                mode = CpuMode.LONG64
            else:
                mode = CpuMode.COMPAT32 if flags & _FLAG_D else CpuMode.COMPAT16
        else:
            mode = CpuMode.PROTECTED32 if flags & _FLAG_D else CpuMode.PROTECTED16
        return mode, 0 if mode is CpuMode.LONG64 else cs.base

    # -- PC ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the CPU is inside a run (stopped by the debugger), not finished."""
        return self.cpu.state is RunState.RUNNING

    def rip(self) -> int:
        """RIP as the CPU holds it (an offset from CS.base outside 64-bit mode)."""
        return self.cpu.next_rip

    def cs_base(self) -> int:
        """CS.base, or 0 in 64-bit mode (where the CPU ignores it)."""
        return self._mode_and_cs_base()[1]

    def pc(self) -> int:
        """The linear address of the next instruction: CS.base + RIP."""
        return (self.cs_base() + self.rip()) & _MASK64

    def set_pc(self, linear: int) -> None:
        """Continue at the linear address ``linear`` (RIP = linear - CS.base)."""
        self.cpu.next_rip = (linear - self.cs_base()) & _MASK64

    # -- registers -----------------------------------------------------------------------------
    @staticmethod
    def register_names() -> tuple[str, ...]:
        """Every register name :meth:`register` accepts."""
        return (*GPRS, "rip", "pc", *_CONTROL, "eflags", *SEGMENTS, *_DWORDS)

    def register(self, name: str) -> int:
        """A register by name (see :meth:`register_names`; ``pc`` is linear).

        Raises:
            DebugError: an unknown register.
        """
        name = name.lower()
        engine = self.cpu.engine
        if name in GPRS or name in _CONTROL:
            return engine.reg(name)
        if name == "rip":
            return self.rip()
        if name == "pc":
            return self.pc()
        if name == "eflags":
            return engine.reg("rflags") & 0xFFFF_FFFF
        if name in SEGMENTS:
            return self.segment(name).selector
        if name in _DWORDS:
            return engine.reg(_DWORDS[name]) & 0xFFFF_FFFF
        raise DebugError(f"no register {name!r}")

    def set_register(self, name: str, value: int) -> None:
        """Write a register; segment selectors are read-only here.

        Raises:
            DebugError: an unknown or read-only register.
        """
        name = name.lower()
        value &= _MASK64
        engine = self.cpu.engine
        if name in GPRS or name in _CONTROL:
            engine.set_reg(name, value)
        elif name == "eflags":
            engine.set_reg("rflags", value & 0xFFFF_FFFF)
        elif name == "rip":
            self.cpu.next_rip = value
        elif name == "pc":
            self.set_pc(value)
        elif name in _DWORDS:
            full = _DWORDS[name]
            engine.set_reg(full, (engine.reg(full) & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF))
        elif name in SEGMENTS:
            raise DebugError(f"{name} is read-only: a selector write would not reload the "
                             "hidden descriptor part")
        else:
            raise DebugError(f"no register {name!r}")

    # -- memory --------------------------------------------------------------------------------
    def translate(self, linear: int) -> int | None:
        """The physical address of ``linear`` under the current paging, or None if unmapped."""
        engine = self.cpu.engine
        if not engine.reg("cr0") & _CR0_PG:
            return linear & 0xFFFF_FFFF
        if not engine.reg("efer") & _EFER_LMA:
            return None  # legacy 32-bit paging: no MM core or smmemu code uses it

        def read_qword(address: int) -> int:
            return int.from_bytes(self.machine.read_physical(address, 8, smm=True), "little")

        try:
            return translate(read_qword, engine.reg("cr3"), linear & _MASK64)
        except SmmemuError:
            return None

    def _pieces(self, address: int, size: int, physical: bool) -> list[tuple[int, int]]:
        """(physical address, length) pieces of [address, address + size)."""
        if physical:
            return [(address, size)]
        pieces: list[tuple[int, int]] = []
        cursor, end = address, address + size
        while cursor < end:
            length = min(end, (cursor | (_PAGE - 1)) + 1) - cursor
            frame = self.translate(cursor)
            if frame is None:
                raise DebugError(f"linear address {cursor:#x} is not mapped")
            if pieces and pieces[-1][0] + pieces[-1][1] == frame:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + length)
            else:
                pieces.append((frame, length))
            cursor += length
        return pieces

    def physical_ranges(self, address: int, size: int) -> list[tuple[int, int]]:
        """The physical [start, end) ranges behind the linear range [address, address + size).

        Raises:
            DebugError: part of the range is not mapped.
        """
        return [(frame, frame + length) for frame, length in self._pieces(address, size, False)]

    def _smm_view(self, view: MemoryView) -> bool:
        if view is MemoryView.CURRENT:
            return self.cpu.in_smm
        return view is MemoryView.SMM

    def _hidden(self, address: int, size: int, view: MemoryView) -> list[tuple[int, int]]:
        """The parts of a physical range the view sees as all-ones (closed SMRAM)."""
        if self._smm_view(view) or not self.machine.mch.tseg_closed:
            return []
        out = []
        for base, length in self.machine.smram:
            start, stop = max(address, base), min(address + size, base + length)
            if start < stop:
                out.append((start, stop - start))
        return out

    def read(self, address: int, size: int, *, physical: bool = False,
             view: MemoryView = MemoryView.CURRENT) -> bytes:
        """Read memory at a linear (default) or physical address in ``view``.

        Raises:
            DebugError: an unmapped linear address or a range outside RAM.
        """
        out = bytearray()
        for frame, length in self._pieces(address, size, physical):
            try:
                data = bytearray(self.machine.read_physical(frame, length, smm=True))
            except SmmemuError as err:
                raise DebugError(f"cannot read {length} bytes at physical {frame:#x}: "
                                 f"{err}") from err
            for start, hidden in self._hidden(frame, length, view):
                data[start - frame:start - frame + hidden] = b"\xff" * hidden
            out += data
        return bytes(out)

    def write(self, address: int, data: bytes, *, physical: bool = False,
              view: MemoryView = MemoryView.CURRENT) -> None:
        """Write memory (translated code there is invalidated).

        Raises:
            DebugError: an unmapped address, a range outside RAM, or closed SMRAM in the
                non-SMM view.
        """
        offset = 0
        for frame, length in self._pieces(address, len(data), physical):
            if self._hidden(frame, length, view):
                raise DebugError(f"{frame:#x}+{length:#x} is closed SMRAM in the non-SMM view")
            try:
                self.machine.write_physical(frame, data[offset:offset + length], smm=True)
            except SmmemuError as err:
                raise DebugError(f"cannot write {length} bytes at physical {frame:#x}: "
                                 f"{err}") from err
            offset += length

    # -- symbols -------------------------------------------------------------------------------
    def symbolize(self, linear: int) -> str | None:
        """``name+0xoff`` for the MM core, loaded drivers, the SMI entry copies and trampolines."""
        found = self.machine.symbolize(linear)
        if found is not None:
            return found
        for cpu in self.machine.cpus:
            offset = linear - (cpu.smbase + _ENTRY_OFFSET)
            if 0 <= offset < self._stub_size:
                return "smi_entry" if offset == 0 else f"smi_entry+{offset:#x}"
        for address, size, name in self._trampolines:
            if address <= linear < address + size:
                return name if linear == address else f"{name}+{linear - address:#x}"
        return None

    def lookup(self, name: str) -> int | None:
        """The address of an MM core symbol or constant, or of a DXE trampoline."""
        image = self.machine.image
        if name in image.symbols:
            return image.symbols[name]
        if name in image.constants:
            return image.constants[name]
        return next((address for address, _, t in self._trampolines if t == name), None)

    def symbol_names(self) -> list[str]:
        """Every name :meth:`lookup` knows, sorted (for completion)."""
        image = self.machine.image
        names = {*image.symbols, *image.constants, *(t for _, _, t in self._trampolines)}
        return sorted(names)


def _segment_in(blob: bytes, offset: int, name: str) -> SegmentState:
    selector, base, limit, flags = _SEG.unpack_from(blob, offset)
    return SegmentState(name, selector & 0xFFFF, base, limit, flags)
