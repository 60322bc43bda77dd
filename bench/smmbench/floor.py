"""The bare-Unicorn floor: the same amount of guest work, done with ``emu_start`` alone.

For a workload whose SMI executes, in SMM, D instructions (each ``rep`` string
instruction counted once) plus E extra ``rep`` iterations, with an average of L
instructions between control transfers (all counted with UC_HOOK_CODE on an
instrumented Machine, see :func:`smmbench.workloads.count_instructions`), the floor
routine is generated 64-bit code that UC_HOOK_CODE counts exactly as it counts the
SMI (D + E hook calls):

* ``mov esi, IN; mov edi, OUT`` (2 instructions);
* K loop iterations whose body is B = clamp(round(L), 4, 64) instructions: B - 2
  fillers then ``dec ecx; jnz`` (one translated block per iteration, as the MM core's
  code is a chain of short blocks). The loop runs as two segments, each started by
  ``mov ecx, n``, whose bodies differ by one store so the store total is exact;
* R straight-line fillers;
* when E > 0: ``mov edi, SCRATCH; mov ecx, E; rep stosq`` (3 instructions, E extra
  iterations: the MM core's ``rep movsq``/``rep stosq`` copies and clears);
* ``hlt``; K, R chosen so that the instruction total is D.

Fillers are ``mov [rdi+d], rdx`` stores, as many as the SMI's own writes that are not
``rep`` iterations (UC_HOOK_MEM_WRITE; pushes and calls included), spread evenly, and
otherwise ``mov rax, [rsi+d]``, ``add rdx, rax``, ``xor rbx, rax`` in turn, over a 64-byte
window. Stores matter: in this engine one costs 10-20 times an ALU instruction
(:func:`engine_calibration`).

One floor call is ``mem_write(IN, request)``, ``emu_start(CODE, UNTIL)``,
``mem_read(OUT, len(request))`` on a plain ``Uc(UC_ARCH_X86, UC_MODE_64)`` with no hooks,
no paging and translated code warm. The run ends with ``hlt``; ``UNTIL`` is a mapped
page that never holds code, so Unicorn's after-run invalidation of the block holding
``until - 1`` costs nothing (unicorn_probe.md rows 12 and 13). The request is as large
as what the workload's DXE side writes into the comm buffer (the 24-byte header plus
the payload; 64 bytes for VERSION_INFO).

The floor leaves out everything an SMM emulator must add: SMI entry and RSM (context
switches, the 16-to-64-bit mode switch, CR and MSR writes that end blocks), the
non-SMM trigger code and its port I/O hooks, SMRAM open/close, and Python per call.
``floor_with_context`` adds the cheapest possible SMI entry/exit on top (save the
interrupted context, load an entry context, restore the interrupted one).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unicorn.unicorn import Uc
from unicorn.unicorn_const import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
)
from unicorn.x86_const import UC_X86_REG_RIP

CODE = 0x0000_1000
DATA_IN = 0x0001_0000
DATA_OUT = 0x0002_0000
UNTIL = 0x0003_F000
SCRATCH = 0x0004_0000
MAX_CODE = DATA_IN - CODE
PROLOGUE = 2
WINDOW = 64


_NON_STORES = (
    lambda disp: bytes((0x48, 0x8B, 0x46, disp)),  # mov rax, [rsi + disp]
    lambda _disp: bytes((0x48, 0x01, 0xC2)),  # add rdx, rax
    lambda _disp: bytes((0x48, 0x31, 0xC3)),  # xor rbx, rax
)


def _fillers(count: int, stores: int) -> bytes:
    """``count`` filler instructions, ``stores`` of them ``mov [rdi + d], rdx``, spread evenly."""
    out = bytearray()
    others = 0
    for index in range(count):
        disp = (index * 8) % WINDOW
        if stores and (index + 1) * stores // count > index * stores // count:
            out += bytes((0x48, 0x89, 0x57, disp))  # mov [rdi + disp], rdx
        else:
            out += _NON_STORES[others % 3](disp)
            others += 1
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Routine:
    """Generated floor code and its shape."""

    code: bytes
    instructions: int
    rep_iterations: int
    body: int
    iterations: int
    tail: int
    stores: int

    @property
    def hook_calls(self) -> int:
        """What UC_HOOK_CODE reports for one run: instructions plus extra rep iterations."""
        return self.instructions + self.rep_iterations

    def to_json(self) -> dict[str, Any]:
        return {"instructions": self.instructions, "rep_iterations": self.rep_iterations,
                "stores": self.stores, "loop_body": self.body, "iterations": self.iterations,
                "tail": self.tail, "code_bytes": len(self.code)}


def build_routine(instructions: int, run_length: float, rep_iterations: int = 0,
                  stores: int | None = None) -> Routine:
    """Code executing ``instructions`` instructions (``hlt`` included) and ``rep_iterations``.

    ``stores`` is how many of the instructions write memory (besides the ``rep``
    iterations); None means a quarter of them. The loop runs in two segments whose
    bodies differ by one store, so the total comes out exact.
    """
    rep_part = 3 if rep_iterations else 0
    total = max(instructions, PROLOGUE + rep_part + 1)
    work = total - PROLOGUE - rep_part - 1  # loop segments (with their `mov ecx`) and tail
    body = min(64, max(4, round(run_length)))
    fill = body - 2
    wanted = max(0, work // 4 if stores is None else stores)
    iterations = max(0, (work - 2) // body)
    segments: list[tuple[int, int]] = []  # (iterations, stores per body)
    if iterations:
        share = min(iterations * fill, round(wanted * iterations * body / work))
        per, extra = divmod(share, iterations)
        segments = [(n, k) for n, k in ((extra, per + 1), (iterations - extra, per)) if n]
    tail = work - len(segments) - iterations * body
    tail_stores = min(tail, max(0, wanted - sum(n * k for n, k in segments)))
    code = bytearray()
    code += b"\xbe" + struct.pack("<I", DATA_IN)  # mov esi, DATA_IN
    code += b"\xbf" + struct.pack("<I", DATA_OUT)  # mov edi, DATA_OUT
    for count, body_stores in segments:
        code += b"\xb9" + struct.pack("<I", count)  # mov ecx, count
        loop = len(code)
        code += _fillers(fill, body_stores)
        code += b"\xff\xc9"  # dec ecx
        code += b"\x0f\x85" + struct.pack("<i", loop - (len(code) + 6))  # jnz loop
    code += _fillers(tail, tail_stores)
    if rep_iterations:
        code += b"\xbf" + struct.pack("<I", SCRATCH)  # mov edi, SCRATCH
        code += b"\xb9" + struct.pack("<I", rep_iterations)  # mov ecx, rep_iterations
        code += b"\xf3\x48\xab"  # rep stosq
    code += b"\xf4"  # hlt
    if len(code) > MAX_CODE:
        raise ValueError(f"floor routine of {total} instructions does not fit ({len(code)} bytes)")
    return Routine(bytes(code), total, rep_iterations, body, iterations, tail,
                   sum(n * k for n, k in segments) + tail_stores)


def _engine(routine: Routine) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    scratch = (routine.rep_iterations * 8 + 0xFFFF) & ~0xFFFF
    uc.mem_map(0, SCRATCH + scratch)
    uc.mem_write(CODE, routine.code)
    return uc


def verify(routine: Routine) -> int:
    """Run the routine once on a separate, hooked instance: its hook count and writes must match.

    Returns the UC_HOOK_CODE count.
    """
    uc = _engine(routine)
    executed = [0]
    writes = [0]

    def on_code(_uc: Uc, _address: int, _size: int, _user: object) -> None:
        executed[0] += 1

    def on_write(_uc: Uc, _access: int, _address: int, _size: int, _value: int,
                 _user: object) -> None:
        writes[0] += 1

    uc.hook_add(UC_HOOK_CODE, on_code)
    uc.hook_add(UC_HOOK_MEM_WRITE, on_write)
    uc.emu_start(CODE, UNTIL)
    rip = uc.reg_read(UC_X86_REG_RIP)
    if rip != CODE + len(routine.code):
        raise RuntimeError(f"floor routine stopped at {rip:#x}, not after its hlt")
    if executed[0] != routine.hook_calls:
        raise RuntimeError(f"UC_HOOK_CODE counted {executed[0]} for the floor routine, "
                           f"expected {routine.hook_calls}")
    if writes[0] != routine.stores + routine.rep_iterations:
        raise RuntimeError(f"the floor routine wrote {writes[0]} times, expected "
                           f"{routine.stores + routine.rep_iterations}")
    return executed[0]


def floor_batch(routine: Routine, io_bytes: int) -> Callable[[int], float]:
    """A batch function timing ``io_bytes`` in, the routine, ``io_bytes`` out (no I/O for 0)."""
    uc = _engine(routine)
    request = bytes((i * 7) & 0xFF for i in range(io_bytes))
    mem_write, mem_read, emu_start = uc.mem_write, uc.mem_read, uc.emu_start

    def batch(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            mem_write(DATA_IN, request)
            emu_start(CODE, UNTIL)
            mem_read(DATA_OUT, io_bytes)
        return time.perf_counter() - started

    def batch_no_io(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            emu_start(CODE, UNTIL)
        return time.perf_counter() - started

    chosen = batch if io_bytes else batch_no_io
    chosen(3)  # translate
    return chosen


def floor_with_context(routine: Routine, io_bytes: int) -> Callable[[int], float]:
    """The floor plus the cheapest SMI entry and exit: three context operations per call.

    With ``io_bytes`` 0 there is no comm-buffer I/O (a raw software SMI).
    """
    uc = _engine(routine)
    request = bytes((i * 7) & 0xFF for i in range(io_bytes))
    entry = uc.context_save()
    interrupted = uc.context_save()
    mem_write, mem_read, emu_start = uc.mem_write, uc.mem_read, uc.emu_start
    update, restore = uc.context_update, uc.context_restore

    def batch(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            update(interrupted)  # save the interrupted CPU state
            restore(entry)  # SMM entry state
            mem_write(DATA_IN, request)
            emu_start(CODE, UNTIL)
            mem_read(DATA_OUT, io_bytes)
            restore(interrupted)  # RSM
        return time.perf_counter() - started

    def batch_no_io(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            update(interrupted)
            restore(entry)
            emu_start(CODE, UNTIL)
            restore(interrupted)
        return time.perf_counter() - started

    chosen = batch if io_bytes else batch_no_io
    chosen(3)
    return chosen


def engine_calibration(iterations: int = 200_000) -> dict[str, float]:
    """Nanoseconds per loop iteration of a store loop and of an ALU loop, on bare Unicorn.

    Explains the floor: in this engine a guest store costs far more than an ALU or
    load instruction, so the MM core's ``rep stosq``/``rep movsq`` iterations weigh a lot.
    """
    loops = {
        "store_loop_ns": bytes.fromhex("488907ffc975f9"),  # mov [rdi], rax; dec ecx; jnz
        "load_loop_ns": bytes.fromhex("488b07ffc975f9"),  # mov rax, [rdi]; dec ecx; jnz
        "alu_loop_ns": bytes.fromhex("4801c0ffc975f9"),  # add rax, rax; dec ecx; jnz
    }
    out: dict[str, float] = {}
    for name, body in loops.items():
        code = (b"\xbf" + struct.pack("<I", DATA_OUT) + b"\xb9" + struct.pack("<I", iterations)
                + body + b"\xf4")
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, SCRATCH)
        uc.mem_write(CODE, code)
        uc.emu_start(CODE, UNTIL)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            uc.emu_start(CODE, UNTIL)
            best = min(best, time.perf_counter() - started)
        out[name] = best / iterations * 1e9
    return out
