"""Name the call behind a fault at a bad code address: who called, and through which table.

A driver that calls a function pointer it read from a protocol or services table that was
never filled in (NULL, or garbage) faults on the instruction fetch at the bad target, so
the fault's RIP names nothing. The return address on the stack does: it follows the
``call`` in the caller. Decoding that ``call qword ptr [base + index*scale + disp]`` with
the registers at the fault (the callee never ran, so they are the caller's) gives the slot
address; the table that holds the slot is looked up among the installed protocol
interfaces and the system/services tables, so the report reads
``SmmLockBox+0x1234 called [rcx+0x10] = 0x0: function +0x10 of gEfiSmmCpuIo2ProtocolGuid``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from smmemu.disasm import Mode, disassemble_one
from smmemu.uefi.guids import WELL_KNOWN

__all__ = ["KnownTable", "describe_bad_call", "tables_from_protocols"]

_MAX_TABLE = 0x400
"""How far past a table's start a slot may be and still be attributed to it."""
_CALL_LENGTHS = (2, 3, 4, 6, 7, 8)
"""Lengths of ``call qword ptr [...]`` encodings (ModRM, SIB, disp8/disp32, REX)."""


@dataclass(frozen=True, slots=True)
class KnownTable:
    """A table of function pointers the report can name: a protocol or a services table."""

    address: int
    name: str


def tables_from_protocols(records: Iterable[tuple[uuid.UUID, int]]) -> list[KnownTable]:
    """KnownTables for installed interfaces, named by their GUID (and well-known name)."""
    out = []
    for guid, interface in records:
        if interface:
            known = WELL_KNOWN.get(guid)
            out.append(KnownTable(interface, f"{known} ({guid})" if known else str(guid)))
    return out


def describe_bad_call(rip: int, rsp: int, registers: dict[str, int],
                      read: Callable[[int, int], bytes | None],
                      symbolize: Callable[[int], str | None],
                      tables: list[KnownTable]) -> str | None:
    """The call that jumped to ``rip``, or None when ``rip`` was not reached by a call."""
    stack = read(rsp, 8)
    if stack is None:
        return None
    ret = int.from_bytes(stack, "little")
    caller = symbolize(ret)
    if caller is None:
        return None
    for length in _CALL_LENGTHS:
        code = read(ret - length, length)
        if code is None:
            continue
        insn = disassemble_one(code, ret - length, Mode.BITS64)
        if insn is None or insn.size != length or insn.mnemonic != "call":
            continue
        site = f"{symbolize(ret - length) or hex(ret - length)}"
        memory = insn.detail.memory if insn.detail else ()
        if not memory:
            return f"{site} called {insn.op_str} = {rip:#x}"
        operand = memory[0]
        slot = _slot(operand.base, operand.index, operand.scale, operand.disp, ret, registers)
        text = f"{site} called {insn.op_str} = {rip:#x}"
        if slot is None:
            return text
        table = _owner(slot, tables)
        if table is None:
            return f"{text} (slot {slot:#x})"
        return f"{text}: function +{slot - table.address:#x} of {table.name}"
    return f"{caller} returned-to address after a call to {rip:#x}"


def _slot(base: str | None, index: str | None, scale: int, disp: int, ret: int,
          registers: dict[str, int]) -> int | None:
    if base == "rip":
        return (ret + disp) & (1 << 64) - 1
    address = disp
    for register, factor in ((base, 1), (index, scale)):
        if register is None:
            continue
        if register not in registers:
            return None
        address += registers[register] * factor
    return address & (1 << 64) - 1


def _owner(slot: int, tables: list[KnownTable]) -> KnownTable | None:
    below = [t for t in tables if t.address <= slot < t.address + _MAX_TABLE]
    return max(below, key=lambda t: t.address, default=None)
