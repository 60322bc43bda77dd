"""The host-side floor of one faithful SMI round trip, measured on bare Unicorn.

    PYTHONPATH=. /tmp/v/bin/python bench/host_floor.py [--json FILE] [--paging]
                                                         [--rounds N] [--seconds S]

About 40 s with the defaults: 21 rounds, every row one 0.05 s batch per round, rows
interleaved round by round. Short rounds on purpose: the host this was written on
switches between a fast and a ~1.9x slower phase every few seconds, so a round should
sit inside one phase; the model is therefore computed round by round too.

Question: if every piece of Python work that a faithfully emulated SMI round trip
cannot avoid were done with the cheapest binding calls, how many microseconds would
one round trip cost? The answer is a lower bound for smmemu's "SMI round trips per
second": smmemu does all of this and more (records, findings, checks, observers,
the real-mode entry). Nothing here imports smmemu. One ``Uc(UC_ARCH_X86, UC_MODE_64)``
holds both worlds, both 64-bit code (``--paging`` adds 2 MiB identity paging; off by
default, so the default has no page walks at all):

1. DXE side: ``mem_write`` of the 16 KiB comm buffer (header + payload + zeros) and of
   a 2-byte mailbox.
2. Non-SMM trampoline ``out 0xb2, al; out 0xb3, al; hlt``. The UC_HOOK_INSN(OUT)
   callback marks the SMI pending; a UC_HOOK_CODE range hook over the non-SMM code
   pages calls ``emu_stop`` when one is pending, so the run stops before ``out 0xb3``.
3. SMI entry: ``mem_protect`` opening SMRAM (first: ``mem_write`` into a region
   without write permission costs several times more, see the "SMRAM closed" piece),
   ``context_update`` of a preallocated context and ``bytes`` of it, parse of
   GPRs/RIP/RFLAGS, CR0/CR3/CR4/EFER and the six segment caches (offsets found by
   writing markers), a 512-byte save-state map (three ``pack_into``, one
   ``mem_write``), ``context_restore`` of a prepared SMM entry context,
   ``reg_write(CR0)``, a TLB flush (``ctl(UC_CTL_TLB_FLUSH)``).
4. The SMM routine (a stand-in MM core; its instructions, loads and stores are counted
   with hooks and printed) does 3 IN and 2 OUT, each a Python callback, and ends with
   ``rsm``, which reaches UC_HOOK_INSN_INVALID.
5. RSM: ``mem_read`` of the map, GPRs and RIP packed into the saved context's own
   memory (no new context object), ``context_restore``, ``mem_protect`` closing
   SMRAM, a TLB flush. Variant (a): the hook calls ``emu_stop``, a third ``emu_start``
   resumes the trampoline; variant (b): the hook does the RSM and returns True and the
   same ``emu_start`` goes on.
6. ``out 0xb3`` (it sends AL as restored from the map, which the SMM code changed: a
   check that RSM really patched the registers), ``hlt``.
7. DXE side: ``mem_read`` of the mailbox (24 bytes) and the buffer, a result object.

Before timing, one counted round trip per variant checks the claims the numbers rest
on: the SMI is taken right after ``out 0xb2``, ``out 0xb3`` runs once and sends the
patched AL, the run ends at ``hlt``, SMRAM refuses a non-SMM read afterwards, and the
callback counts equal the ones the model uses.

Rows: ``guest only`` (the SMM routine on a second ``Uc`` without hooks, ending with
``hlt``); the two faithful variants with a ~480-instruction and a ~50-instruction
routine; ``stages``, single round trips with every stage timed apart; and each
piece alone in a tight loop, net of the loop's own per-call cost (hook callbacks as
the difference between a run of 64 hooked instructions and 64 ``nop``). The model
adds the pieces as often as a round trip uses them plus the guest work; the rest is
Python control flow, the INSN_INVALID exception path and callback, TLB refills and
translation-block lookups after each context switch, and colder caches than in a
tight loop.

Left out (smmemu needs them, a floor does not): the real-mode entry and its mode
switch, RFLAGS' arithmetic flags (the context's ``eflags`` field lacks them; the
``reg_read rip`` piece shows what one register read costs), checking that the #UD
really is RSM.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise, zip_longest
from pathlib import Path
from typing import Any, NamedTuple

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from unicorn.unicorn import Uc, UcContext, UcError
from unicorn.unicorn_const import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_READ_PROT,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_NONE,
)
from unicorn.x86_const import (
    UC_X86_INS_IN,
    UC_X86_INS_OUT,
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_FS_BASE,
    UC_X86_REG_RAX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSP,
)

# -- memory map (physical = linear) ------------------------------------------------
DRAM_SIZE = 0x0020_0000
HOOKED_BEGIN = 0x0000_1000  # the UC_HOOK_CODE range: the trampoline's page and one more
HOOKED_END = 0x0000_2FFF
TRAMPOLINE = 0x0000_1000
HOOKED_NOPS = 0x0000_2000
HLT_ROUTINE = 0x0000_4000
OUT_ROUTINE = 0x0000_5000
IN_ROUTINE = 0x0000_6000
PLAIN_NOPS = 0x0000_7000
PEEK_ROUTINE = 0x0000_8000
PAGE_TABLES = 0x0001_0000  # PML4, PDPT, PD (--paging)
NON_SMM_STACK = 0x0008_0000
UNTIL = 0x0009_F000  # mapped, never executed: runs end with hlt or emu_stop
COMM = 0x0010_0000
COMM_SIZE = 0x4000
MAILBOX = 0x0010_8000
SMRAM = 0x0800_0000
SMRAM_SIZE = 0x0010_0000
SMM_STACK = SMRAM + 0x7000
SMM_ENTRY = SMRAM + 0x8000
SMM_ENTRY_SMALL = SMRAM + 0xC000
SAVE_STATE = SMRAM + 0xFE00
SAVE_STATE_SIZE = 512
SMM_DATA = SMRAM + 0x2_0000
SMM_ZEROS = SMRAM + 0x3_0000

# -- ports and values --------------------------------------------------------------
APM_CNT = 0xB2
APM_STS = 0xB3
PM1_STS = 0x404
POST = 0x80
CMOS_DATA = 0x71
POST_VALUE = 0x55
RAX_MARKER = 0x5A  # the SMM code stores it into the saved RAX; `out 0xb3, al` sends it
NON_SMM_RFLAGS = 0x3002  # IOPL 3 outside SMM, 0 inside: separate translation caches
SMM_RFLAGS = 0x0002
CR0_PG = 0x8000_0000
CR4_PAE = 0x20
MSR_EFER = 0xC000_0080
EFER_NXE = 0x800
MICRO = 64  # instructions per micro routine (hook callback costs)

# -- the save-state map (a stand-in layout of the architectural size) ---------------
SS_STATE = 0x000  # 16 GPRs, RIP, RFLAGS
SS_CRS = 0x090  # CR0, CR3, CR4, EFER
SS_SEGS = 0x0B0  # ES, CS, SS, DS, FS, GS as (selector, base, limit, flags)
SS_SMBASE = 0x1F8

_STATE = struct.Struct("<18Q")
_GPRS_RIP = struct.Struct("<17Q")
_CRS = struct.Struct("<5Q")
_SS_CRS = struct.Struct("<4Q")
_U64 = struct.Struct("<Q")
_SEGS = struct.Struct("<" + "I4xQII" * 6)
_SEG_CACHE = 24
_FS_INDEX = 4

_KS = Ks(KS_ARCH_X86, KS_MODE_64)
_CS = Cs(CS_ARCH_X86, CS_MODE_64)


def imm(value: int) -> str:
    """An immediate as capstone prints it (decimal below 10, hex otherwise)."""
    return str(value) if value < 10 else hex(value)


def assemble(lines: list[str], address: int) -> bytes:
    """Assemble 64-bit code at ``address`` and check it instruction by instruction.

    Lines are written in capstone's own syntax, so the check is exact: capstone must
    decode the bytes back into the same instructions (branches to labels are
    compared by mnemonic only). Keystone's known mis-encodings (far jumps, 32-bit
    ``lgdt``/``lidt``, 64-bit absolute memory operands) are not used, and would fail
    here if they were.
    """
    labels = {line[:-1] for line in lines if line.endswith(":")}
    source = [line for line in lines if not line.endswith(":")]
    encoding, _count = _KS.asm("\n".join(lines), address)
    code = bytes(encoding or b"")
    decoded = list(_CS.disasm(code, address))
    if len(decoded) != len(source) or sum(insn.size for insn in decoded) != len(code):
        raise RuntimeError(f"code at {address:#x}: {len(source)} lines, {len(decoded)} decoded")
    for insn, text in zip(decoded, source, strict=True):
        parts = text.split(maxsplit=1)
        if len(parts) == 2 and parts[1] in labels:
            same = insn.mnemonic == parts[0]
        else:
            same = f"{insn.mnemonic} {insn.op_str}".strip() == text
        if not same:
            raise RuntimeError(f"keystone encoded {text!r} as {insn.mnemonic} {insn.op_str}")
    return code


def smm_routine(calls: int, compare_qwords: int, last: str) -> list[str]:
    """The stand-in MM core: port reads, a loop of calls doing loads and stores, a
    compare of the buffer's tail with zeros, the saved RAX changed, port writes, RSM."""
    work = [
        "mov rax, qword ptr [rsi]",
        "mov rbx, qword ptr [rsi + 8]",
        "add rax, rbx",
        "xor rbx, qword ptr [rsi + 0x10]",
        "mov qword ptr [rdi], rax",
        "add rdx, rax",
        "mov r8, qword ptr [rdi + 8]",
        "sub r8, rbx",
        "mov qword ptr [rdi + 8], r8",
        "lea r9, [rax + rbx*2]",
        "mov r10, qword ptr [rsi + 0x18]",
        "or r10, r9",
        "and r10, rdx",
        "add rdi, 0x10",
        "ret",
    ]
    return [
        "cld",
        f"mov rsp, {imm(SMM_STACK)}",
        "push rbx",
        "push rbp",
        "push r12",
        f"mov rsi, {imm(COMM)}",
        f"mov rdi, {imm(SMM_DATA)}",
        f"in al, {imm(APM_CNT)}",
        f"mov dx, {imm(APM_STS)}",
        "in al, dx",
        f"mov dx, {imm(PM1_STS)}",
        "in eax, dx",
        "mov qword ptr [rsi + 0x18], rax",
        "mov qword ptr [rsi + 0x20], rdx",
        f"mov ecx, {imm(calls)}",
        "next:",
        "call work",
        "dec ecx",
        "jne next",
        f"mov rsi, {imm(COMM + 0x40)}",
        f"mov rdi, {imm(SMM_ZEROS)}",
        f"mov ecx, {imm(compare_qwords)}",
        "repe cmpsq qword ptr [rsi], qword ptr [rdi]",
        f"mov rdi, {imm(SAVE_STATE + SS_STATE)}",
        f"mov qword ptr [rdi], {imm(RAX_MARKER)}",
        "pop r12",
        "pop rbp",
        "pop rbx",
        f"mov al, {imm(POST_VALUE)}",
        f"out {imm(POST)}, al",
        f"mov dx, {imm(PM1_STS)}",
        "out dx, eax",
        last,
        "work:",
        *work,
    ]


BIG = (25, 1024)  # (calls, compared qwords): about 480 instructions, 80 stores, 2200 loads
SMALL = (1, 8)  # about 50 instructions


def programs(last: str) -> dict[int, bytes]:
    """Every routine, by address; ``last`` ends the SMM routines (``rsm`` or ``hlt``)."""
    sources = {
        TRAMPOLINE: [f"out {imm(APM_CNT)}, al", f"out {imm(APM_STS)}, al", "hlt"],
        HLT_ROUTINE: ["hlt"],
        OUT_ROUTINE: [f"out {imm(POST)}, al"] * MICRO + ["hlt"],
        IN_ROUTINE: [f"in al, {imm(CMOS_DATA)}"] * MICRO + ["hlt"],
        HOOKED_NOPS: ["nop"] * MICRO + ["hlt"],
        PLAIN_NOPS: ["nop"] * MICRO + ["hlt"],
        PEEK_ROUTINE: [f"mov rbx, {imm(SMM_DATA)}", "mov rax, qword ptr [rbx]", "hlt"],
        SMM_ENTRY: smm_routine(*BIG, last),
        SMM_ENTRY_SMALL: smm_routine(*SMALL, last),
    }
    return {address: assemble(lines, address) for address, lines in sources.items()}


def build_world(*, paging: bool, last: str, smram_prot: int) -> Uc:
    """A ``Uc`` with DRAM, SMRAM and every routine, registers in the non-SMM state."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, DRAM_SIZE, UC_PROT_ALL)
    uc.mem_map(SMRAM, SMRAM_SIZE, smram_prot)
    for address, code in programs(last).items():
        uc.mem_write(address, code)
    if paging:
        pml4, pdpt, pd = PAGE_TABLES, PAGE_TABLES + 0x1000, PAGE_TABLES + 0x2000
        uc.mem_write(pml4, _U64.pack(pdpt | 0x3))
        uc.mem_write(pdpt, _U64.pack(pd | 0x3))
        uc.mem_write(pd, b"".join(_U64.pack((index << 21) | 0x83) for index in range(512)))
        uc.reg_write(UC_X86_REG_CR3, pml4)
        uc.reg_write(UC_X86_REG_CR4, uc.reg_read(UC_X86_REG_CR4) | CR4_PAE)
        uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) | CR0_PG)
    uc.reg_write(UC_X86_REG_RSP, NON_SMM_STACK)
    uc.reg_write(UC_X86_REG_EFLAGS, NON_SMM_RFLAGS)
    return uc


# -- the context blob --------------------------------------------------------------
class ContextLayout(NamedTuple):
    """Byte offsets inside ``bytes(UcContext)``, found by writing markers."""

    size: int
    regs: int  # RAX; then the other GPRs, RIP (+128), RFLAGS (+136)
    segs: int  # ES's segment cache; six of 24 bytes
    cr: int  # CR0; CR0..CR4 as five u64
    efer: int


def _unique(raw: bytes, value: int) -> int:
    marker = _U64.pack(value)
    if raw.count(marker) != 1:
        raise RuntimeError(f"marker {value:#x} found {raw.count(marker)} times in the context")
    return raw.find(marker)


def probe_layout() -> ContextLayout:
    """Locate the fields on a throw-away engine and check the ones placed relative to others."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    ctx = uc.context_save()
    efer = uc.msr_read(MSR_EFER) ^ EFER_NXE
    before = bytes(ctx)
    uc.msr_write(MSR_EFER, efer)
    uc.context_update(ctx)
    changed = [index for index, (a, b) in enumerate(zip(before, bytes(ctx), strict=True))
               if a != b]
    efer_at = changed[0] & ~7 if changed else -1
    uc.reg_write(UC_X86_REG_RAX, 0x1122_3344_5566_7788)
    uc.reg_write(UC_X86_REG_RIP, 0x2233_4455_6677_8899)
    uc.reg_write(UC_X86_REG_FS_BASE, 0x3344_5566_7788_99AA)
    uc.reg_write(UC_X86_REG_CR3, 0x4A5B_6000)
    uc.reg_write(UC_X86_REG_EFLAGS, NON_SMM_RFLAGS)
    uc.context_update(ctx)
    raw = bytes(ctx)
    layout = ContextLayout(
        size=len(raw),
        regs=_unique(raw, 0x1122_3344_5566_7788),
        segs=_unique(raw, 0x3344_5566_7788_99AA) - 8 - _FS_INDEX * _SEG_CACHE,
        cr=_unique(raw, 0x4A5B_6000) - 3 * 8,
        efer=efer_at,
    )
    checks = {
        "rip at regs + 128": _unique(raw, 0x2233_4455_6677_8899) == layout.regs + 128,
        "IOPL in rflags at regs + 136":
            _U64.unpack_from(raw, layout.regs + 136)[0] & 0x3000 == 0x3000,
        "efer": efer_at >= 0 and _U64.unpack_from(raw, efer_at)[0] == efer,
        "cr0": _U64.unpack_from(raw, layout.cr)[0] == uc.reg_read(UC_X86_REG_CR0),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError(f"context layout checks failed: {failed}")
    return layout


# -- the faithful round trip -------------------------------------------------------
class Response(NamedTuple):
    """What the DXE side gets back."""

    status: int
    length: int
    buffer: bytearray


def make_response(mailbox: bytearray, buffer: bytearray) -> Response:
    return Response(mailbox[0], int.from_bytes(buffer[16:24], "little"), buffer)


def version_info_request() -> bytes:
    """A VERSION_INFO-sized comm buffer: GUID, length, a 40-byte payload, zeros."""
    payload = struct.pack("<IIIIQ", 0x5055_534D, 1, 3, 0, 0) + bytes(16)
    header = bytes(range(16)) + _U64.pack(len(payload))
    return (header + payload).ljust(COMM_SIZE, b"\0")


class Floor:
    """One engine with both worlds and the cheapest faithful SMI entry and RSM."""

    def __init__(self, layout: ContextLayout, *, paging: bool) -> None:
        uc = build_world(paging=paging, last="rsm", smram_prot=UC_PROT_NONE)
        self.uc = uc
        self.layout = layout
        self.request_bytes = version_info_request()
        self.command = bytes((0x01, 0x00))
        self.ports: dict[int, int] = {}
        self.smi_pending = False
        self.rsm_seen = False
        self.continue_after_rsm = False
        self.smm_entry = SMM_ENTRY
        self.interrupted: tuple[int, ...] = ()
        self.cr0 = int(uc.reg_read(UC_X86_REG_CR0))
        self.save_state = ctypes.create_string_buffer(SAVE_STATE_SIZE)
        _U64.pack_into(self.save_state, SS_SMBASE, SMRAM)
        self.saved = uc.context_save()  # the interrupted state, overwritten at each SMI
        address = ctypes.cast(self.saved.context, ctypes.c_void_p).value
        if self.saved.size != layout.size or address is None:
            raise RuntimeError("unexpected context object")
        self.saved_memory = (ctypes.c_char * self.saved.size).from_address(address)
        self.non_smm = uc.context_save()
        uc.reg_write(UC_X86_REG_RSP, SMM_STACK)
        uc.reg_write(UC_X86_REG_EFLAGS, SMM_RFLAGS)
        self.entry = uc.context_save()
        uc.context_restore(self.non_smm)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_CODE, self._on_code, None, HOOKED_BEGIN, HOOKED_END)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)

    # hooks
    def _on_out(self, uc: Uc, port: int, size: int, value: int, user: object) -> None:
        self.ports[port] = value
        if port == APM_CNT:
            self.smi_pending = True

    def _on_in(self, uc: Uc, port: int, size: int, user: object) -> int:
        return self.ports.get(port, 0xFFFF_FFFF)

    def _on_code(self, uc: Uc, address: int, size: int, user: object) -> None:
        if self.smi_pending:
            uc.emu_stop()

    def _on_invalid(self, uc: Uc, user: object) -> bool:
        self.rsm_seen = True
        if self.continue_after_rsm:
            self.rsm()
        else:
            uc.emu_stop()
        return True

    # SMI entry and RSM
    def build_map(self, raw: bytes) -> None:
        """Parse the interrupted state out of the context blob into the save-state map."""
        layout = self.layout
        state = _STATE.unpack_from(raw, layout.regs)
        cr0, _cr1, _cr2, cr3, cr4 = _CRS.unpack_from(raw, layout.cr)
        (efer,) = _U64.unpack_from(raw, layout.efer)
        segs = _SEGS.unpack_from(raw, layout.segs)
        self.interrupted = state
        self.cr0 = cr0
        buffer = self.save_state
        _STATE.pack_into(buffer, SS_STATE, *state)
        _SS_CRS.pack_into(buffer, SS_CRS, cr0, cr3, cr4, efer)
        _SEGS.pack_into(buffer, SS_SEGS, *segs)

    def patch_saved(self, image: bytearray) -> int:
        """Write the map's GPRs and RIP into the saved context, in place; return RIP."""
        values = _GPRS_RIP.unpack_from(image, SS_STATE)
        _GPRS_RIP.pack_into(self.saved_memory, self.layout.regs, *values)
        return int(values[16])

    # the stages of a round trip (public: StageClock times them one by one)
    def request(self) -> None:
        """DXE side: the comm buffer and the mailbox."""
        uc = self.uc
        uc.mem_write(COMM, self.request_bytes)
        uc.mem_write(MAILBOX, self.command)

    def run_to_smi(self) -> None:
        """The trampoline up to the instruction boundary after ``out 0xb2``."""
        self.uc.emu_start(TRAMPOLINE, UNTIL)
        if not self.smi_pending:
            raise RuntimeError("the trampoline ended without an SMI")

    def enter_smm(self) -> None:
        """SMRAM opened first: ``mem_write`` into a region without write permission
        toggles it writable and back, which costs more than the write itself."""
        uc = self.uc
        self.smi_pending = False
        uc.mem_protect(SMRAM, SMRAM_SIZE, UC_PROT_ALL)
        uc.context_update(self.saved)
        self.build_map(bytes(self.saved))
        uc.mem_write(SAVE_STATE, self.save_state)
        uc.context_restore(self.entry)
        uc.reg_write(UC_X86_REG_CR0, self.cr0)
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def run_smm(self) -> None:
        """SMM from the entry point to RSM (and, in variant (b), on to the trampoline's hlt)."""
        self.uc.emu_start(self.smm_entry, UNTIL)
        if not self.rsm_seen:
            raise RuntimeError("the SMM run ended without RSM")
        self.rsm_seen = False

    def rsm(self) -> int:
        """Back to the interrupted state as the map says; SMRAM closed. Returns RIP."""
        uc = self.uc
        rip = self.patch_saved(uc.mem_read(SAVE_STATE, SAVE_STATE_SIZE))
        uc.context_restore(self.saved)
        uc.mem_protect(SMRAM, SMRAM_SIZE, UC_PROT_NONE)
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        return rip

    def resume(self, rip: int) -> None:
        """Variant (a): the rest of the trampoline."""
        self.uc.emu_start(rip, UNTIL)

    def response(self) -> Response:
        """DXE side: mailbox and buffer read back."""
        uc = self.uc
        return make_response(uc.mem_read(MAILBOX, 24), uc.mem_read(COMM, COMM_SIZE))

    def round_trip_a(self) -> Response:
        """Three runs: to the SMI, SMM to RSM (stopped), the rest of the trampoline."""
        self.request()
        self.run_to_smi()
        self.enter_smm()
        self.run_smm()
        self.resume(self.rsm())
        return self.response()

    def round_trip_b(self) -> Response:
        """Two runs: to the SMI, then SMM, RSM inside the hook and the trampoline's rest."""
        self.request()
        self.run_to_smi()
        self.enter_smm()
        self.run_smm()
        return self.response()

    def configure(self, *, variant: str, entry: int) -> Callable[[], Response]:
        self.continue_after_rsm = variant == "b"
        self.smm_entry = entry
        return self.round_trip_b if variant == "b" else self.round_trip_a


class CountingFloor(Floor):
    """The same, counting every callback (for the checks; never timed)."""

    def __init__(self, layout: ContextLayout, *, paging: bool) -> None:
        self.calls = dict.fromkeys(("out", "in", "code", "invalid", "out 0xb3"), 0)
        super().__init__(layout, paging=paging)

    def _on_out(self, uc: Uc, port: int, size: int, value: int, user: object) -> None:
        self.calls["out"] += 1
        self.calls["out 0xb3"] += port == APM_STS
        super()._on_out(uc, port, size, value, user)

    def _on_in(self, uc: Uc, port: int, size: int, user: object) -> int:
        self.calls["in"] += 1
        return super()._on_in(uc, port, size, user)

    def _on_code(self, uc: Uc, address: int, size: int, user: object) -> None:
        self.calls["code"] += 1
        super()._on_code(uc, address, size, user)

    def _on_invalid(self, uc: Uc, user: object) -> bool:
        self.calls["invalid"] += 1
        return super()._on_invalid(uc, user)


def check_round_trip(floor: CountingFloor, variant: str) -> dict[str, int]:
    """One round trip with every claim the timing relies on checked; the callback counts."""
    trip = floor.configure(variant=variant, entry=SMM_ENTRY)
    floor.ports.clear()
    for key in floor.calls:
        floor.calls[key] = 0
    response = trip()
    calls = dict(floor.calls)
    failures = []
    if floor.interrupted[16] != TRAMPOLINE + 2:
        failures.append(f"SMI taken at {floor.interrupted[16]:#x}, not after the OUT")
    if floor.ports.get(APM_STS) != RAX_MARKER or calls["out 0xb3"] != 1:
        failures.append(f"out 0xb3 sent {floor.ports.get(APM_STS)} x{calls['out 0xb3']}")
    if floor.ports.get(POST) != POST_VALUE or response.length != 40:
        failures.append("SMM code or response wrong")
    if floor.uc.reg_read(UC_X86_REG_RIP) != TRAMPOLINE + 5:
        failures.append(f"run ended at {floor.uc.reg_read(UC_X86_REG_RIP):#x}")
    try:
        floor.uc.emu_start(PEEK_ROUTINE, UNTIL)
        failures.append("SMRAM readable after RSM")
    except UcError as error:
        if error.errno != UC_ERR_READ_PROT:
            failures.append(f"SMRAM peek: {error}")
    if failures:
        raise RuntimeError(f"variant ({variant}): " + "; ".join(failures))
    return calls


def guest_counts(*, paging: bool, entry: int) -> dict[str, int]:
    """Instructions (a ``rep`` counted once), loads and stores of one SMM routine run."""
    uc = build_world(paging=paging, last="hlt", smram_prot=UC_PROT_ALL)
    counts = {"instructions": 0, "loads": 0, "stores": 0}
    last = [-1]

    def on_code(_uc: Uc, address: int, _size: int, _user: object) -> None:
        if address != last[0]:
            counts["instructions"] += 1
        last[0] = address

    def on_read(_uc: Uc, _access: int, _address: int, _size: int, _value: int,
                _user: object) -> None:
        counts["loads"] += 1

    def on_write(_uc: Uc, _access: int, _address: int, _size: int, _value: int,
                 _user: object) -> None:
        counts["stores"] += 1

    uc.hook_add(UC_HOOK_CODE, on_code)
    uc.hook_add(UC_HOOK_MEM_READ, on_read)
    uc.hook_add(UC_HOOK_MEM_WRITE, on_write)
    uc.mem_write(COMM, version_info_request())
    uc.reg_write(UC_X86_REG_EFLAGS, SMM_RFLAGS)
    uc.emu_start(entry, UNTIL)
    return counts


# -- timing ------------------------------------------------------------------------
Batch = Callable[[int], float]
"""Runs ``n`` calls and returns the seconds they took."""


def loop(call: Callable[[], object], before: Callable[[], object] | None = None,
         after: Callable[[], object] | None = None) -> Batch:
    """A batch of ``call`` in a tight loop (``before``/``after`` run once, untimed)."""

    def batch(count: int) -> float:
        if before is not None:
            before()
        start = time.perf_counter()
        for _ in range(count):
            call()
        elapsed = time.perf_counter() - start
        if after is not None:
            after()
        return elapsed

    return batch


@dataclass
class Row:
    """One thing timed; a sample is one batch's seconds per call."""

    name: str
    batch: Batch
    net: bool = True  # subtract the loop's own per-call cost
    size: int = 0
    samples: list[float] = field(default_factory=list)

    def calibrate(self, seconds: float) -> None:
        count = 1
        while (elapsed := self.batch(count)) < seconds / 10:
            count *= 2
        self.size = max(1, round(count * seconds / elapsed))


STAGES: dict[str, tuple[str, ...]] = {
    "a": ("DXE write", "run to SMI", "SMI entry", "SMM run", "RSM", "resume", "DXE read"),
    "b": ("DXE write", "run to SMI", "SMI entry", "SMM run + RSM + resume", "DXE read"),
}


class StageClock:
    """Single round trips (big routine) with each stage timed apart.

    Sampled as a row among the others, so its figures share their rounds; every
    batch adds one mean per stage.
    """

    def __init__(self, floor: Floor, variant: str) -> None:
        self.floor = floor
        self.variant = variant
        self.samples: dict[str, list[float]] = {name: [] for name in STAGES[variant]}

    def batch(self, count: int) -> float:
        floor = self.floor
        floor.configure(variant=self.variant, entry=SMM_ENTRY)
        separate = self.variant == "a"
        clock = time.perf_counter
        sums = [0.0] * len(self.samples)
        start = clock()
        for _ in range(count):
            marks = [clock()]
            floor.request()
            marks.append(clock())
            floor.run_to_smi()
            marks.append(clock())
            floor.enter_smm()
            marks.append(clock())
            floor.run_smm()
            marks.append(clock())
            if separate:
                rip = floor.rsm()
                marks.append(clock())
                floor.resume(rip)
                marks.append(clock())
            floor.response()
            marks.append(clock())
            for index, (begin, end) in enumerate(pairwise(marks)):
                sums[index] += end - begin
        elapsed = clock() - start
        for values, total in zip(self.samples.values(), sums, strict=True):
            values.append(total / count)
        return elapsed

    def clear(self) -> None:
        for values in self.samples.values():
            values.clear()


def sample(rows: list[Row], clocks: list[StageClock], rounds: int, seconds: float) -> None:
    """Round-robin: one batch of every row per round, so host noise hits all rows alike."""
    for row in rows:
        row.calibrate(seconds)
    for stage_clock in clocks:
        stage_clock.clear()
    for _ in range(rounds):
        for row in rows:
            gc.collect()
            gc.disable()
            try:
                row.samples.append(row.batch(row.size) / row.size)
            finally:
                gc.enable()


GUEST = "guest work (SMM routine)"
_ENTRY_PIECES = {"mem_protect": 1, "context_update + bytes": 1, "entry parse + map (Python)": 1,
                 "mem_write 512 B": 1, "context_restore": 1, "reg_write cr0": 1,
                 "TLB flush (ctl)": 1}
_SMM_PIECES = {"emu_start (hlt routine)": 1, GUEST: 1, "IN hook callback": 3,
               "OUT hook callback": 2}
_RSM_PIECES = {"mem_read 512 B": 1, "RSM unpack + patch (Python)": 1, "context_restore": 1,
               "mem_protect": 1, "TLB flush (ctl)": 1}
_TRAMPOLINE_HALF = {"emu_start (hlt routine)": 1, "OUT hook callback": 1,
                    "code hook callback": 2}
STAGE_PIECES: dict[str, dict[str, int]] = {
    "DXE write": {"mem_write 16 KiB": 1, "mem_write 2 B": 1},
    "run to SMI": _TRAMPOLINE_HALF,
    "SMI entry": _ENTRY_PIECES,
    "SMM run": _SMM_PIECES,
    "RSM": _RSM_PIECES,
    "resume": _TRAMPOLINE_HALF,
    "SMM run + RSM + resume": {
        name: _SMM_PIECES.get(name, 0) + _RSM_PIECES.get(name, 0)
        + _TRAMPOLINE_HALF.get(name, 0) - (name == "emu_start (hlt routine)")
        for name in {**_SMM_PIECES, **_RSM_PIECES, **_TRAMPOLINE_HALF}},
    "DXE read": {"mem_read 24 B": 1, "mem_read 16 KiB": 1, "result object (Python)": 1},
}


def per_round_trip(variant: str) -> dict[str, int]:
    """How often one round trip uses each piece (from the stages)."""
    total: dict[str, int] = {}
    for stage in STAGES[variant]:
        for name, count in STAGE_PIECES[stage].items():
            total[name] = total.get(name, 0) + count
    return total


class Stat(NamedTuple):
    """Microseconds over the samples: median, quartiles, minimum."""

    median: float
    q1: float
    q3: float
    minimum: float

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median * 1e6, q1 * 1e6, q3 * 1e6, min(samples) * 1e6)

    def to_json(self) -> dict[str, float]:
        return {"median_us": self.median, "q1_us": self.q1, "q3_us": self.q3,
                "min_us": self.minimum}


def _context_update_bytes(uc: Uc, ctx: UcContext) -> bytes:
    uc.context_update(ctx)
    return bytes(ctx)


def _protect_pair(uc: Uc) -> None:
    uc.mem_protect(SMRAM, SMRAM_SIZE, UC_PROT_ALL)
    uc.mem_protect(SMRAM, SMRAM_SIZE, UC_PROT_NONE)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    layout = probe_layout()
    paging: bool = args.paging
    checker = CountingFloor(layout, paging=paging)
    calls = {variant: check_round_trip(checker, variant) for variant in "ab"}
    for variant, counted in calls.items():  # the model must use what the engine did
        model = per_round_trip(variant)
        for kind, piece in (("out", "OUT hook callback"), ("in", "IN hook callback"),
                            ("code", "code hook callback")):
            if counted[kind] != model[piece]:
                raise RuntimeError(f"variant ({variant}): {counted[kind]} {kind} callbacks")
    counts = {name: guest_counts(paging=paging, entry=entry)
              for name, entry in (("big", SMM_ENTRY), ("small", SMM_ENTRY_SMALL))}

    floor = Floor(layout, paging=paging)
    uc = floor.uc
    guest = build_world(paging=paging, last="hlt", smram_prot=UC_PROT_ALL)
    guest.mem_write(COMM, floor.request_bytes)
    guest.reg_write(UC_X86_REG_EFLAGS, SMM_RFLAGS)
    scratch = uc.context_save()
    raw = bytes(floor.saved)
    image = bytearray(floor.save_state.raw)
    mailbox, buffer = bytearray(24), bytearray(COMM_SIZE)
    open_smram = partial(uc.mem_protect, SMRAM, SMRAM_SIZE, UC_PROT_ALL)
    close_smram = partial(uc.mem_protect, SMRAM, SMRAM_SIZE, UC_PROT_NONE)

    def trip(variant: str, entry: int) -> Row:
        label = "big" if entry == SMM_ENTRY else "small"
        call = floor.round_trip_b if variant == "b" else floor.round_trip_a
        return Row(f"round trip ({variant}) {label}", loop(
            call, before=partial(floor.configure, variant=variant, entry=entry)), net=False)

    def runs(name: str, uc_: Uc, address: int) -> Row:
        return Row(name, loop(partial(uc_.emu_start, address, UNTIL)))

    clocks = [StageClock(floor, variant) for variant in "ab"]
    rows = [
        Row("empty call", loop(lambda: None), net=False),
        Row("guest only big", loop(partial(guest.emu_start, SMM_ENTRY, UNTIL)), net=False),
        Row("guest only small", loop(partial(guest.emu_start, SMM_ENTRY_SMALL, UNTIL)),
            net=False),
        runs("guest emu_start (hlt)", guest, HLT_ROUTINE),
        trip("a", SMM_ENTRY), trip("b", SMM_ENTRY),
        trip("a", SMM_ENTRY_SMALL), trip("b", SMM_ENTRY_SMALL),
        *(Row(f"stages ({clock.variant}) big", clock.batch, net=False) for clock in clocks),
        runs("emu_start (hlt)", uc, HLT_ROUTINE),
        runs("64 OUT", uc, OUT_ROUTINE),
        runs("64 IN", uc, IN_ROUTINE),
        runs("64 nop, code hook", uc, HOOKED_NOPS),
        runs("64 nop", uc, PLAIN_NOPS),
        Row("context_update", loop(partial(uc.context_update, scratch))),
        Row("context_update + bytes", loop(partial(_context_update_bytes, uc, scratch))),
        Row("context_restore", loop(partial(uc.context_restore, floor.non_smm))),
        Row("mem_write 16 KiB", loop(partial(uc.mem_write, COMM, floor.request_bytes))),
        Row("mem_read 16 KiB", loop(partial(uc.mem_read, COMM, COMM_SIZE))),
        Row("mem_write 512 B", loop(partial(uc.mem_write, SAVE_STATE, floor.save_state),
                                    before=open_smram, after=close_smram)),
        Row("mem_write 512 B, closed", loop(partial(uc.mem_write, SAVE_STATE,
                                                    floor.save_state))),
        Row("mem_read 512 B", loop(partial(uc.mem_read, SAVE_STATE, SAVE_STATE_SIZE))),
        Row("mem_write 2 B", loop(partial(uc.mem_write, MAILBOX, floor.command))),
        Row("mem_read 24 B", loop(partial(uc.mem_read, MAILBOX, 24))),
        Row("mem_protect x2", loop(partial(_protect_pair, uc))),
        Row("TLB flush", loop(partial(uc.ctl, UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE))),
        Row("reg_write cr0", loop(partial(uc.reg_write, UC_X86_REG_CR0, floor.cr0))),
        Row("reg_read rip", loop(partial(uc.reg_read, UC_X86_REG_RIP))),
        Row("entry parse + map", loop(partial(floor.build_map, raw))),
        Row("RSM unpack + patch", loop(partial(floor.patch_saved, image))),
        Row("result object", loop(partial(make_response, mailbox, buffer))),
    ]
    for variant in "ab":  # warm every path
        for entry in (SMM_ENTRY, SMM_ENTRY_SMALL):
            run = floor.configure(variant=variant, entry=entry)
            for _ in range(200):
                run()
    sample(rows, clocks, args.rounds, args.seconds)
    uc.context_restore(floor.non_smm)
    stages = {clock.variant: clock.samples for clock in clocks}
    return summarize(rows, stages, calls, counts, paging=paging, layout=layout)


def summarize(rows: list[Row], stages: dict[str, dict[str, list[float]]],
              calls: dict[str, dict[str, int]], counts: dict[str, dict[str, int]], *,
              paging: bool, layout: ContextLayout) -> dict[str, Any]:
    by_name = {row.name: row for row in rows}
    overhead = statistics.median(by_name["empty call"].samples)

    def net(name: str, per: float = 1.0) -> list[float]:
        row = by_name[name]
        cost = overhead if row.net else 0.0
        return [(value - cost) / per for value in row.samples]

    def diff(name: str, base: str) -> list[float]:
        pairs = zip(by_name[name].samples, by_name[base].samples, strict=True)
        return [(hooked - plain) / MICRO for hooked, plain in pairs]

    pieces: dict[str, list[float]] = {
        "emu_start (hlt routine)": net("emu_start (hlt)"),
        "OUT hook callback": diff("64 OUT", "64 nop"),
        "IN hook callback": diff("64 IN", "64 nop"),
        "code hook callback": diff("64 nop, code hook", "64 nop"),
        "context_update": net("context_update"),
        "context_update + bytes": net("context_update + bytes"),
        "context_restore": net("context_restore"),
        "mem_write 16 KiB": net("mem_write 16 KiB"),
        "mem_read 16 KiB": net("mem_read 16 KiB"),
        "mem_write 512 B": net("mem_write 512 B"),
        "mem_write 512 B, SMRAM shut": net("mem_write 512 B, closed"),
        "mem_read 512 B": net("mem_read 512 B"),
        "mem_write 2 B": net("mem_write 2 B"),
        "mem_read 24 B": net("mem_read 24 B"),
        "mem_protect": net("mem_protect x2", 2.0),
        "TLB flush (ctl)": net("TLB flush"),
        "reg_write cr0": net("reg_write cr0"),
        "reg_read rip": net("reg_read rip"),
        "entry parse + map (Python)": net("entry parse + map"),
        "RSM unpack + patch (Python)": net("RSM unpack + patch"),
        "result object (Python)": net("result object"),
    }
    stats = {name: Stat.of(values) for name, values in pieces.items()}
    guest_bare = net("guest emu_start (hlt)")
    guest_work = {size: [run - bare for run, bare in zip(
        by_name[f"guest only {size}"].samples, guest_bare, strict=True)]
        for size in ("big", "small")}
    rows_out = {name: Stat.of(by_name[name].samples).to_json() for name in (
        "guest only big", "guest only small", "round trip (a) big", "round trip (b) big",
        "round trip (a) small", "round trip (b) small", "stages (a) big", "stages (b) big")}

    def modelled(uses: dict[str, int], size: str, measured: list[float]) -> dict[str, float]:
        """The model round by round (pieces and run measured in the same round), medians."""
        host = [sum(count * pieces[name][index] for name, count in uses.items()
                    if name != GUEST) for index in range(len(measured))]
        guest = [uses.get(GUEST, 0) * value for value in guest_work[size]]
        total = [piece + work for piece, work in zip(host, guest, strict=True)]
        return {"host_pieces_us": statistics.median(host) * 1e6,
                "guest_work_us": statistics.median(guest) * 1e6,
                "sum_us": statistics.median(total) * 1e6,
                "measured_us": statistics.median(measured) * 1e6,
                "rest_us": statistics.median(
                    run - model for run, model in zip(measured, total, strict=True)) * 1e6}

    result: dict[str, Any] = {
        "paging": paging, "loop_overhead_us": overhead * 1e6,
        "context_layout": layout._asdict(), "callbacks_per_round_trip": calls,
        "smm_routine": counts, "rows": rows_out, "pieces": {}, "model": {}, "stages": {},
    }
    uses = {variant: per_round_trip(variant) for variant in "ab"}
    for name, stat in stats.items():
        result["pieces"][name] = {**stat.to_json(), "per_round_trip": {
            variant: uses[variant].get(name, 0) for variant in "ab"}}
    for variant in "ab":
        for size in ("big", "small"):
            result["model"][f"({variant}) {size}"] = modelled(
                uses[variant], size, by_name[f"round trip ({variant}) {size}"].samples)
        result["stages"][variant] = {}
        for stage, values in stages[variant].items():
            model = modelled(STAGE_PIECES[stage], "big", values)
            result["stages"][variant][stage] = {
                **Stat.of(values).to_json(), "model_us": model["sum_us"],
                "rest_us": model["rest_us"]}
    return result


def report(result: dict[str, Any]) -> None:
    counts = result["smm_routine"]
    layout = result["context_layout"]
    calls = result["callbacks_per_round_trip"]["a"]
    print("host floor of one SMI round trip (bare Unicorn, both worlds 64-bit, identity "
          f"paging {'on' if result['paging'] else 'off'})")
    big, small = counts["big"], counts["small"]
    print(f"  SMM routine big: {big['instructions']} insns, {big['loads']} loads, "
          f"{big['stores']} stores; small: {small['instructions']}, {small['loads']}, "
          f"{small['stores']} (rep once; 3 IN, 2 OUT, rsm)")
    print(f"  bytes(ctx) {layout['size']} B: RAX at {layout['regs']}, RIP +128, RFLAGS +136, "
          f"segs at {layout['segs']}, CR0 at {layout['cr']}, EFER at {layout['efer']}")
    print(f"  callbacks/trip (counted; a = b): {calls['out']} OUT, {calls['in']} IN, "
          f"{calls['code']} code, {calls['invalid']} INSN_INVALID; pieces net of "
          f"{result['loop_overhead_us']:.3f} us/call\n")
    print(f"{'row':<22}{'median us':>10}{'IQR':>7}{'min':>8}{'trips/s at median':>19}")
    for name, stat in result["rows"].items():
        if name.startswith("stages"):
            continue
        print(f"{name:<22}{stat['median_us']:>10.2f}{stat['q3_us'] - stat['q1_us']:>7.2f}"
              f"{stat['min_us']:>8.2f}{1e6 / stat['median_us']:>19,.0f}")
    cells = [f"{name[:27]:<27}{piece['median_us']:>7.2f}{piece['q3_us'] - piece['q1_us']:>6.2f}"
             f"{piece['per_round_trip']['a']:>4}{piece['per_round_trip']['b']:>4}"
             for name, piece in result["pieces"].items()]
    header = f"{'piece (us)':<27}{'median':>7}{'IQR':>6}{'(a)':>4}{'(b)':>4}"
    print(f"\n{header}   {header}")
    half = (len(cells) + 1) // 2
    for left, right in zip_longest(cells[:half], cells[half:], fillvalue=""):
        print(f"{left}   {right}".rstrip())
    print(f"\n{'model, per round (us)':<21}{'pieces':>8}{'guest':>8}{'sum':>8}{'measured':>10}"
          f"{'rest':>7}")
    for name, model in result["model"].items():
        print(f"{name:<21}{model['host_pieces_us']:>8.2f}{model['guest_work_us']:>8.2f}"
              f"{model['sum_us']:>8.2f}{model['measured_us']:>10.2f}{model['rest_us']:>7.2f}")
    print(f"\n{'stages, big, timed apart (us)':<36}{'median':>8}{'IQR':>7}{'model':>8}"
          f"{'rest':>7}")
    for variant, stages in result["stages"].items():
        for stage, value in stages.items():
            if variant == "b" and stage in result["stages"]["a"]:
                continue  # the same code as in (a)
            print(f"  ({variant}) {stage:<30}{value['median_us']:>8.2f}"
                  f"{value['q3_us'] - value['q1_us']:>7.2f}{value['model_us']:>8.2f}"
                  f"{value['rest_us']:>7.2f}")
    print("  trip timed in stages: " + ", ".join(
        f"({variant}) {result['rows'][f'stages ({variant}) big']['median_us']:.2f}"
        for variant in "ab") + " (perf_counter between stages included)")
    best = min(stat["median_us"] for name, stat in result["rows"].items()
               if name.startswith("round trip"))
    print(f"\nfastest faithful round trip {best:.2f} us (median): "
          f"at most {1e6 / best:,.0f} round trips/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--paging", action="store_true", help="2 MiB identity paging on")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--seconds", type=float, default=0.05, help="per batch")
    args = parser.parse_args()
    result = measure(args)
    report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
