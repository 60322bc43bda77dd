"""The non-SMM world the DXE shim runs in: a flat 64-bit CPU context and tiny trampolines.

smmemu has no DXE core. What the SMI path needs from the non-SMM side is a CPU
in long mode (its own GDT and identity page tables, CPL0, as under a DXE core)
and real guest instructions that touch the chipset, because an SMI must come
from a real ``OUT 0xB2`` at an instruction boundary. The trampolines below are
that code, hand-encoded and listed with their assembly; each ends in an idle
loop, ``hlt; jmp`` back to it: the ``hlt`` ends the run, and a CPU woken from
it by an SMI or NMI goes back to waiting.

The non-SMM context runs with RFLAGS.IOPL = 3: harmless at CPL0, and it keeps
non-SMM and SMM translated code apart (unicorn_probe.md row 9, 4g).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from smmemu.cpu import Cpu
from smmemu.engine import SEGMENT_ORDER
from smmemu.memory import PhysicalMemory
from smmemu.smm.savestate import Segment

__all__ = ["DxeLayout", "DxePlatform", "Trampoline"]

GDT_ADDRESS = 0x1000
IDT_ADDRESS = 0x8000
NMI_COUNTER = 0xA000
PML4_ADDRESS = 0x2000
TRAMPOLINE_BASE = 0x9000
STACK_TOP = 0x8_0000
CODE64_SELECTOR = 0x08
DATA_SELECTOR = 0x10
NON_SMM_RFLAGS = 0x3002


@dataclass(frozen=True, slots=True)
class Trampoline:
    """A fixed piece of non-SMM guest code."""

    name: str
    code: bytes
    assembly: str


def _trampolines(pmbase: int) -> tuple[Trampoline, ...]:
    smi_en = pmbase + 0x30
    return (
        # patina QemuQ35PlatformMmControl::init: SMI_EN |= APMC_EN | GBL_SMI_EN.
        Trampoline("enable_smi",
                   b"\xba" + struct.pack("<I", smi_en) + bytes.fromhex("ed 83c821 ef f4 ebfd"),
                   f"mov edx, {smi_en:#x}; in eax, dx; or eax, 0x21; out dx, eax; hlt; jmp 0xa"),
        # patina SwMmiManager::trigger_sw_mmi: command to 0xB2 first, data to 0xB3 after.
        Trampoline("trigger_patina", bytes.fromhex("89c8 e6b2 89d0 e6b3 f4 ebfd"),
                   "mov eax, ecx; out 0xb2, al; mov eax, edx; out 0xb3, al; hlt; jmp 8"),
        # OVMF SmmControl2Dxe Trigger: data to 0xB3 first, then command to 0xB2.
        Trampoline("trigger_ovmf", bytes.fromhex("89d0 e6b3 89c8 e6b2 f4 ebfd"),
                   "mov eax, edx; out 0xb3, al; mov eax, ecx; out 0xb2, al; hlt; jmp 8"),
        # CHIPSEC-style: every GPR chosen by the caller, AX = data << 8 | command.
        Trampoline("raw_smi", bytes.fromhex("66e7b2 f4 ebfd"), "out 0xb2, ax; hlt; jmp 3"),
        # Where application processors wait, as DXE parks them: an SMI wakes them.
        Trampoline("park", bytes.fromhex("f4 ebfd"), "hlt; jmp 0"),
        # The non-SMM NMI handler (IDT vector 2): count the NMI and return.
        Trampoline("nmi_handler", bytes.fromhex("f048ff042500a00000 48cf"),
                   f"lock inc qword ptr [{NMI_COUNTER:#x}]; iretq"),
    )


@dataclass(frozen=True, slots=True)
class DxeLayout:
    """Where the non-SMM structures live in DRAM."""

    trampolines: dict[str, int]


class DxePlatform:
    """Lays out the non-SMM world in DRAM and gives each CPU its non-SMM context."""

    def __init__(self, memory: PhysicalMemory, pmbase: int) -> None:
        self._memory = memory
        self.trampolines = _trampolines(pmbase)
        self.addresses: dict[str, int] = {}
        self._install()

    def _install(self) -> None:
        memory = self._memory
        # 0x08 64-bit code, 0x10 flat data, 0x18 32-bit code, 0x20 16-bit code (for guest
        # code that runs in compatibility mode).
        gdt = struct.pack("<QQQQQ", 0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF,
                          0x00CF_9B00_0000_FFFF, 0x008F_9B00_0000_FFFF)
        memory.write(GDT_ADDRESS, gdt, smm=False)
        # Identity map 4 GiB with 2 MiB pages: PML4 -> PDPT -> 4 PDs, all RWX.
        pdpt, pd0 = PML4_ADDRESS + 0x1000, PML4_ADDRESS + 0x2000
        memory.write(PML4_ADDRESS, struct.pack("<Q", pdpt | 3), smm=False)
        memory.write(pdpt, b"".join(struct.pack("<Q", (pd0 + i * 0x1000) | 3) for i in range(4)),
                     smm=False)
        entries = b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(4 * 512))
        memory.write(pd0, entries, smm=False)
        cursor = TRAMPOLINE_BASE
        for trampoline in self.trampolines:
            memory.write(cursor, trampoline.code, smm=False)
            self.addresses[trampoline.name] = cursor
            cursor += 0x40
        # IDT: only the NMI gate (vector 2: 64-bit interrupt gate, selector 0x08).
        handler = self.addresses["nmi_handler"]
        gate = struct.pack("<HHBBHII", handler & 0xFFFF, CODE64_SELECTOR, 0, 0x8E,
                           (handler >> 16) & 0xFFFF, handler >> 32, 0)
        memory.write(IDT_ADDRESS + 2 * 16, gate, smm=False)

    @property
    def iret_sites(self) -> list[int]:
        """Addresses of the non-SMM ``iretq`` instructions (NMI unblocking)."""
        return [self.addresses["nmi_handler"] + 9]
    def prepare(self, cpu: Cpu) -> None:
        """Put ``cpu`` in the non-SMM 64-bit context (flat segments, identity paging, IOPL 3)."""
        engine = cpu.engine
        engine.set_table_reg("gdtr", 0, GDT_ADDRESS, 0x27, 0)
        engine.set_table_reg("idtr", 0, IDT_ADDRESS, 0xFFF, 0)
        engine.set_reg("cr4", 0x620)
        engine.set_reg("efer", 0xD01)
        engine.set_reg("cr3", PML4_ADDRESS)
        engine.set_reg("cr0", 0x8001_0033)
        engine.set_reg("rflags", NON_SMM_RFLAGS)
        engine.set_reg("rsp", STACK_TOP - cpu.index * 0x1000)
        layout = engine.layout
        blob = bytearray(engine.save_context())
        for name in SEGMENT_ORDER:
            if name == "cs":
                seg = Segment(CODE64_SELECTOR, 0, 0xFFFF_FFFF, 0x00AF_9B00)
            else:
                seg = Segment(DATA_SELECTOR, 0, 0xFFFF_FFFF, 0x00CF_9300)
            struct.pack_into("<I4xQII", blob, layout.seg(name), seg.selector, seg.base,
                             seg.limit, seg.flags)
        engine.restore_context(blob)
        engine.flush_tlb()
