"""Exception delivery through the guest's 64-bit IDT, done by the host.

Unicorn never delivers exceptions through a guest IDT (unicorn_probe.md row 4);
it reports the vector to a hook. For SMM code, smmemu performs the delivery
that the CPU would (SDM Vol. 3A, "Interrupt and Exception Handling", 64-bit
mode): read the gate, switch to the IST stack if the gate names one, align the
stack to 16 bytes, push SS, RSP, RFLAGS, CS, RIP and, for vectors that have
one, the error code, clear IF for interrupt gates, and continue at the
handler. The MM core's own handler then runs natively.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ERROR_CODE_VECTORS", "Delivery", "GateError", "plan_delivery", "translate"]

ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
_IF, _TF, _NT, _RF = 1 << 9, 1 << 8, 1 << 14, 1 << 16

ReadPhys = Callable[[int, int], bytes]
ReadQword = Callable[[int], int]


class GateError(Exception):
    """The IDT has no usable gate for the vector: the CPU would shut down."""


def translate(read_qword: ReadQword, cr3: int, linear: int) -> int | None:
    """Walk 4-level page tables: the physical address of ``linear``, or None if not present.

    ``read_qword(physical)`` reads one page-table entry.
    """
    table = cr3 & 0x000F_FFFF_FFFF_F000
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = read_qword(table + ((linear >> shift) & 0x1FF) * 8)
        if not entry & 1:
            return None
        frame = entry & 0x000F_FFFF_FFFF_F000
        if level in (1, 2) and entry & 0x80:
            page_mask = (1 << shift) - 1
            return (frame & ~page_mask) | (linear & page_mask)
        table = frame
    return table | (linear & 0xFFF)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the CPU continues and what it pushes."""

    handler: int
    selector: int
    rsp: int
    rflags: int
    frame: bytes
    frame_address: int


def plan_delivery(
    read_linear: Callable[[int, int], bytes],
    *,
    vector: int,
    idtr: tuple[int, int],
    tss_base: int,
    rip: int,
    cs: int,
    rflags: int,
    rsp: int,
    ss: int,
    error_code: int,
) -> Delivery:
    """Compute the 64-bit delivery of ``vector``.

    Raises:
        GateError: if the vector is past the IDT limit or its gate is not present.
    """
    idt_base, idt_limit = idtr
    if vector * 16 + 15 > idt_limit:
        raise GateError(f"vector {vector} is beyond the IDT limit {idt_limit:#x}")
    gate = read_linear(idt_base + vector * 16, 16)
    low, selector, ist, attributes, middle, high = struct.unpack_from("<HHBBHI", gate)
    if not attributes & 0x80:
        raise GateError(f"IDT gate {vector} is not present")
    gate_type = attributes & 0xF
    if gate_type not in (0xE, 0xF):
        raise GateError(f"IDT gate {vector} has type {gate_type:#x}, not an interrupt/trap gate")
    handler = low | (middle << 16) | (high << 32)
    new_rsp = rsp
    if ist & 7:
        new_rsp = struct.unpack("<Q", read_linear(tss_base + 0x24 + ((ist & 7) - 1) * 8, 8))[0]
    new_rsp &= ~0xF
    values = [ss, rsp, rflags, cs, rip]
    if vector in ERROR_CODE_VECTORS:
        values.append(error_code)
    frame = struct.pack(f"<{len(values)}Q", *reversed(values))
    frame_address = new_rsp - len(frame)
    new_flags = rflags & ~(_TF | _NT | _RF)
    if gate_type == 0xE:
        new_flags &= ~_IF
    return Delivery(handler, selector, frame_address, new_flags, frame, frame_address)
