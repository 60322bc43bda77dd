"""Parsing the arguments of ``break``, ``watch``, ``x`` and ``set`` into debugger actions.

Breakpoint locations (``break`` and ``tbreak``; all may end in ``if CONDITION``)::

    break                      the current PC
    break msup_handler+0x1c    an MM core symbol, constant or DXE trampoline (+ offset)
    break *0x7808000           a linear address (any expression after ``*``)
    break handler GUID         the handler registered for GUID (or a well-known name, or root)
    break smi | rsm            SMI entry (at SMBASE+0x8000), RSM (at the interrupted code)
    break exception [VECTOR]   an exception delivered in SMM (any vector, or one)
    break io [PORT] [in|out]   before an IN/OUT/INS/OUTS on the port (any port, or one)
    break msr [INDEX] [rdmsr|wrmsr]   before an RDMSR/WRMSR of the MSR in ECX

Watchpoints (``watch`` writes, ``rwatch`` reads, ``awatch`` either)::

    watch ADDRESS [LENGTH]     a linear address (translated now), LENGTH bytes (default 8)
    watch -p ADDRESS [LENGTH]  a physical address
    watch non-smram            any access SMM code makes to memory outside SMRAM

Expressions inside these arguments must not contain spaces (``$r8+0x18``), except
after ``*`` in ``break`` and in conditions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smmemu.debug.breakpoints import Access, BreakKind, Breakpoint
from smmemu.debug.errors import DebugError
from smmemu.debug.expr import evaluate
from smmemu.debug.session import Debugger
from smmemu.debug.target import MemoryView

__all__ = ["Examine", "add_breakpoint", "add_watchpoint", "assign", "parse_examine",
           "resolve_location"]

_DEFAULT_WATCH = 8
_ACCESS_WORDS = {"in": Access.READ, "out": Access.WRITE, "rdmsr": Access.READ,
                 "wrmsr": Access.WRITE, "read": Access.READ, "write": Access.WRITE}
_STORE_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


def split_condition(text: str) -> tuple[str, str | None]:
    """``LOCATION if CONDITION`` -> (LOCATION, CONDITION or None)."""
    match = re.search(r"(?:^|\s)if\s+(.+)$", text)
    if match is None:
        return text.strip(), None
    return text[:match.start()].strip(), match.group(1).strip()


def resolve_location(debugger: Debugger, text: str) -> int:
    """A code location (``*EXPR``, ``symbol+off``, an expression) as a linear address."""
    text = text.strip()
    if not text:
        return debugger.target.pc()
    return evaluate(text.removeprefix("*"), debugger.target) & ((1 << 64) - 1)


def _number(debugger: Debugger, text: str) -> int:
    return evaluate(text, debugger.target)


def add_breakpoint(debugger: Debugger, text: str, *, temporary: bool = False) -> Breakpoint:
    """Create the breakpoint or catchpoint ``text`` describes (see the module docstring).

    Raises:
        DebugError: a malformed location or an unknown handler or symbol.
    """
    where, condition = split_condition(text)
    words = where.split()
    head = words[0].lower() if words else ""
    table = debugger.breakpoints
    if head in ("smi", "smi-entry", "rsm") and len(words) == 1:
        kind = BreakKind.RSM if head == "rsm" else BreakKind.SMI
        return table.add(kind, kind.value, condition=condition, temporary=temporary)
    if head == "exception" and len(words) <= 2:
        vector = _number(debugger, words[1]) if len(words) == 2 else None
        return table.add(BreakKind.EXCEPTION, where, value=vector, condition=condition,
                         temporary=temporary)
    if head in ("io", "msr") and len(words) <= 3:
        access = Access.ANY
        value: int | None = None
        for word in words[1:]:
            if word.lower() in _ACCESS_WORDS:
                access = _ACCESS_WORDS[word.lower()]
            else:
                value = _number(debugger, word)
        kind = BreakKind.IO if head == "io" else BreakKind.MSR
        return table.add(kind, where, value=value, access=access, condition=condition,
                         temporary=temporary)
    if head == "handler":
        if len(words) != 2:
            raise DebugError("usage: break handler GUID (or a well-known GUID name, or root)")
        address = debugger.handler_address(words[1])
        return table.add(BreakKind.CODE, where, address=address, condition=condition,
                         temporary=temporary)
    address = resolve_location(debugger, where)
    label = where or f"*{address:#x}"
    return table.add(BreakKind.CODE, label, address=address, condition=condition,
                     temporary=temporary)


def add_watchpoint(debugger: Debugger, text: str, access: Access) -> Breakpoint:
    """Create the watchpoint ``text`` describes (see the module docstring).

    Raises:
        DebugError: a malformed argument or an unmapped address.
    """
    where, condition = split_condition(text)
    words = where.split()
    physical = "-p" in words
    words = [word for word in words if word != "-p"]
    table = debugger.breakpoints
    if len(words) == 1 and words[0].lower() in ("non-smram", "outside-smram"):
        machine = debugger.machine
        low = min(base for base, _ in machine.smram)
        high = max(base + size for base, size in machine.smram)
        return table.add(BreakKind.WATCH, "non-SMRAM memory", access=access,
                         ranges=((0, low), (high, 1 << 64)), condition=condition,
                         outside_smram=True)
    if not 1 <= len(words) <= 2:
        raise DebugError("usage: watch [-p] ADDRESS [LENGTH] [if CONDITION], or watch non-smram")
    address = _number(debugger, words[0])
    length = _number(debugger, words[1]) if len(words) == 2 else _DEFAULT_WATCH
    if not 1 <= length <= 1 << 20:
        raise DebugError(f"a watchpoint covers 1 byte to 1 MiB, not {length}")
    ranges: tuple[tuple[int, int], ...]
    if physical:
        ranges = ((address, address + length),)
    else:
        ranges = tuple(debugger.target.physical_ranges(address, length))
    label = f"{'physical ' if physical else ''}{address:#x}"
    return table.add(BreakKind.WATCH, label, address=address, length=length, ranges=ranges,
                     access=access, condition=condition)


@dataclass(frozen=True, slots=True)
class Examine:
    """A parsed ``x/NFU [-p] [-s|-n] ADDRESS``."""

    count: int
    fmt: str
    unit: str
    address: int
    physical: bool
    view: MemoryView


def parse_examine(debugger: Debugger, arg: str, last: tuple[str, str]) -> Examine:
    """Parse ``x``'s argument; ``last`` is the previous (format, unit) to default to.

    Raises:
        DebugError: a malformed argument.
    """
    fmt, unit = last
    count = 1
    text = arg.strip()
    if text.startswith("/"):
        spec, _, text = text[1:].partition(" ")
        match = re.fullmatch(r"(\d*)([xducibhwg]*)", spec)
        if match is None:
            raise DebugError(f"bad format /{spec} (x/NFU: N count, F x d u c i, U b h w g)")
        count = int(match.group(1) or 1)
        for letter in match.group(2):
            if letter in "bhwg":
                unit = letter
            else:
                fmt = letter
    words = text.split()
    physical = "-p" in words
    view = MemoryView.CURRENT
    if "-s" in words:
        view = MemoryView.SMM
    if "-n" in words:
        view = MemoryView.NON_SMM
    rest = " ".join(word for word in words if word not in ("-p", "-s", "-n"))
    if not rest:
        raise DebugError("usage: x/NFU [-p] [-s|-n] ADDRESS")
    if not 1 <= count <= 4096:
        raise DebugError(f"x shows 1 to 4096 units, not {count}")
    return Examine(count, fmt, unit, _number(debugger, rest), physical, view)


def assign(debugger: Debugger, arg: str) -> str:
    """``set``: a register or memory; returns a confirmation line.

    Forms: ``$REGISTER = EXPR``, ``u8|u16|u32|u64 [-p] ADDRESS = EXPR``,
    ``bytes [-p] ADDRESS HEX``.

    Raises:
        DebugError: a malformed assignment or an unwritable target.
    """
    target = debugger.target
    words = arg.split()
    if words and words[0] in (*_STORE_SIZES, "bytes"):
        physical = "-p" in words[1:3]
        rest = arg.split(None, 2 if physical else 1)[-1].strip()
        if physical:
            rest = rest.removeprefix("-p").strip()
        if words[0] == "bytes":
            address_text, _, data_text = rest.partition(" ")
            try:
                data = bytes.fromhex(data_text)
            except ValueError:
                raise DebugError(f"not hex bytes: {data_text!r}") from None
        else:
            address_text, equals, value_text = rest.partition("=")
            if not equals:
                raise DebugError(f"usage: set {words[0]} [-p] ADDRESS = VALUE")
            size = _STORE_SIZES[words[0]]
            value = _number(debugger, value_text) & ((1 << (8 * size)) - 1)
            data = value.to_bytes(size, "little")
        address = _number(debugger, address_text)
        target.write(address, data, physical=physical)
        where = "physical " if physical else ""
        return f"wrote {len(data)} byte(s) at {where}{address:#x}: {data.hex(' ')}"
    name, equals, value_text = arg.partition("=")
    name = name.strip().removeprefix("$")
    if not equals or not name:
        raise DebugError("usage: set $REGISTER = VALUE, set u8|u16|u32|u64 [-p] ADDRESS = VALUE, "
                         "or set bytes [-p] ADDRESS HEX")
    value = _number(debugger, value_text)
    target.set_register(name, value)
    return f"{name} = {target.register(name):#x}"
