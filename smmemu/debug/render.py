"""Text for the debugger's commands: stops, registers, memory, listings, save state, tables.

Every function returns lines and depends only on the emulated machine's state,
so a scripted session prints the same text on every run: no timings, no host
addresses, and addresses always as fixed-width hex.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from smmemu.debug.breakpoints import Access, BreakKind, Breakpoint, BreakpointTable
from smmemu.debug.errors import DebugError
from smmemu.debug.stops import Stop, StopKind, WatchHit
from smmemu.debug.target import GPRS, SEGMENTS, CpuMode, MemoryView, SegmentState, Target
from smmemu.disasm import Mode, disassemble, format_line
from smmemu.results import EXCEPTION_NAMES, SmiResult
from smmemu.smm.savestate import decode_save_state
from smmemu.uefi.guids import WELL_KNOWN

__all__ = [
    "backtrace",
    "breakpoint_table",
    "describe_breakpoint",
    "handlers",
    "here",
    "listing",
    "location",
    "memory",
    "registers",
    "run_end",
    "save_state",
    "stop_lines",
]

_RFLAGS = ((0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
           (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (21, "ID"))
_CR0 = ((0, "PE"), (1, "MP"), (2, "EM"), (3, "TS"), (4, "ET"), (5, "NE"), (16, "WP"),
        (18, "AM"), (29, "NW"), (30, "CD"), (31, "PG"))
_CR4 = ((0, "VME"), (1, "PVI"), (2, "TSD"), (3, "DE"), (4, "PSE"), (5, "PAE"), (6, "MCE"),
        (7, "PGE"), (8, "PCE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (11, "UMIP"), (12, "LA57"),
        (13, "VMXE"), (14, "SMXE"), (16, "FSGSBASE"), (17, "PCIDE"), (18, "OSXSAVE"),
        (20, "SMEP"), (21, "SMAP"), (22, "PKE"), (23, "CET"))
_EFER = ((0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE"), (12, "SVME"))
_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
_PER_LINE = {1: 8, 2: 8, 4: 4, 8: 2}
_MAX_FRAMES = 32


def _bits(value: int, names: Iterable[tuple[int, str]]) -> str:
    return " ".join(name for bit, name in names if value >> bit & 1)


def location(target: Target, linear: int) -> str:
    """``0x000000000782087a <msup_handler+0x4>`` (the symbol part only when known)."""
    symbol = target.symbolize(linear)
    return f"{linear:#018x}" + (f" <{symbol}>" if symbol else "")


def here(target: Target) -> list[str]:
    """The instruction at the PC, marked ``=>`` (or why it cannot be shown)."""
    return listing(target, target.pc(), 1, highlight=target.pc())


def listing(target: Target, address: int, count: int, *, mode: Mode | None = None,
            highlight: int | None = None) -> list[str]:
    """``count`` instructions from the linear ``address``, decoded in ``mode`` (current)."""
    size = mode or target.mode().code_size
    try:
        code = target.read(address, 15 * count)
    except DebugError:
        try:
            code = target.read(address, 0x1000 - (address & 0xFFF))
        except DebugError as err:
            return [f"   cannot read code at {address:#x}: {err}"]
    lines: list[str] = []
    offset = shown = 0
    while offset < len(code) and shown < count:
        shown += 1
        here_at = address + offset
        found = disassemble(code[offset:offset + 15], here_at, size, count=1)
        symbol = target.symbolize(here_at)
        if symbol is not None and "+" not in symbol:
            lines.append(f"<{symbol}>:")
        if not found:
            lines.append(format_line(here_at, code[offset:offset + 1], "(bad)",
                                     highlight=here_at == highlight))
            offset += 1
            continue
        insn = found[0]
        lines.append(format_line(here_at, insn.bytes, insn.text, highlight=here_at == highlight))
        offset += insn.size
    return lines


def _mode_line(target: Target) -> str:
    cpu = target.cpu
    where = f"in SMM (SMBASE {cpu.smbase:#x})" if cpu.in_smm else "outside SMM"
    return f"{target.mode().value}, {where}"


def stop_lines(target: Target, stop: Stop, previous: CpuMode | None = None) -> list[str]:
    """What the shell prints when the CPU stops."""
    if stop.kind is StopKind.END and stop.result is not None:
        return run_end(stop.run, stop.result)
    head = _stop_head(target, stop)
    lines = [head] if head else []
    lines.extend(f"  {hit_line(hit)}" for hit in stop.hits)
    mode = target.mode()
    if previous is not None and previous is not mode:
        lines.append(f"mode: {previous.value} -> {mode.value}")
    lines.append(f"{location(target, stop.pc)} ({_mode_line(target)})")
    lines.extend(here(target))
    return lines


def _stop_head(target: Target, stop: Stop) -> str:
    entry = stop.breakpoint
    number = "" if entry is None else f" {entry.number}"
    note = f" ({stop.detail})" if stop.detail else ""
    kind = stop.kind
    if kind is StopKind.START:
        return f"run {stop.run}: stopped at the first instruction"
    if kind is StopKind.BREAKPOINT:
        return f"Breakpoint{number}, {entry.label if entry else ''}{note}".rstrip()
    if kind is StopKind.WATCHPOINT:
        return f"Watchpoint{number} ({entry.label if entry else ''}){note}"
    if kind is StopKind.EVENT:
        return _event_head(target, stop, number)
    if kind in (StopKind.IO, StopKind.MSR) and stop.event_value is not None:
        what = "port" if kind is StopKind.IO else "MSR"
        return f"Breakpoint{number}, {stop.event} {what} {stop.event_value:#x} (before it)"
    if kind is StopKind.INTERRUPT:
        return ("stopped: the resume ran out of its budget" if stop.detail == "budget"
                else "interrupted")
    if kind is StopKind.FINISH:
        return f"finish: {stop.detail}" if stop.detail else "finish"
    if kind is StopKind.UNTIL:
        return f"until: {stop.detail}" if stop.detail else ""
    return note.strip(" ()")


def _event_head(target: Target, stop: Stop, number: str) -> str:
    catch = f" (catchpoint{number})" if number else ""
    value = stop.event_value or 0
    if stop.event == "smi-entry":
        return f"SMI entry{catch}: SMBASE {value:#x}, save state at {target.cpu.smbase:#x}+..."
    if stop.event == "rsm":
        return f"RSM{catch}: back to RIP {value:#x} outside SMM"
    name = EXCEPTION_NAMES.get(value, f"vector {value}")
    return f"exception {value} {name}{catch}: delivered to the MM core's handler"


def hit_line(hit: WatchHit) -> str:
    """``write of 8 bytes at 0x100018: 0x1 -> 0x2`` (values in hex)."""
    digits = 2 * hit.size
    value = "?" if hit.value is None else f"{hit.value:#0{digits + 2}x}"
    if hit.is_write:
        old = "?" if hit.old is None else f"{hit.old:#0{digits + 2}x}"
        return f"write of {hit.size} bytes at {hit.address:#x}: {old} -> {value}"
    return f"read of {hit.size} bytes at {hit.address:#x}: {value}"


def run_end(run: int, result: SmiResult) -> list[str]:
    """The end of a run: stop reason, SMIs, fault and findings."""
    smis = len(result.smis)
    rsm = sum(1 for smi in result.smis if smi.rsm)
    lines = [f"run {run} ended: {result.stop.value}, {smis} SMI{'' if smis == 1 else 's'}, "
             f"{rsm} RSM"]
    if result.fault is not None:
        lines.extend(f"  {line}" for line in result.fault.describe().splitlines())
    elif result.detail and not result.ok:
        lines.append(f"  {result.detail}")
    lines.extend(f"  finding {finding.kind}: {finding.message}" for finding in result.findings)
    return lines


def _segment_line(segment: SegmentState) -> str:
    flags = segment.flags
    kind = "code" if flags & (1 << 11) else "data"
    size = "64-bit" if flags & (1 << 21) else "32-bit" if flags & (1 << 22) else "16-bit"
    present = "" if flags & (1 << 15) else ", not present"
    return (f"{segment.name:<4} {segment.selector:#06x}  base {segment.base:#018x}  "
            f"limit {segment.limit:#010x}  attr {segment.attributes:#06x}  "
            f"{size} {kind}, DPL {flags >> 13 & 3}{present}")


def registers(target: Target) -> list[str]:
    """``regs``: mode, GPRs, RIP/RFLAGS, segments with hidden parts, tables, CRs, EFER."""
    values = {name: target.register(name) for name in (*GPRS, "rflags", "cr0", "cr2", "cr3",
                                                        "cr4", "efer")}
    lines = [f"mode {_mode_line(target)}"]
    lines.extend("  ".join(f"{name:<3} {values[name]:#018x}" for name in GPRS[row:row + 4])
                 for row in range(0, len(GPRS), 4))
    lines.append(f"rip {target.rip():#018x}  pc {location(target, target.pc())}")
    flags = values["rflags"]
    lines.append(f"rflags {flags:#010x} [{_bits(flags, _RFLAGS)}] IOPL {flags >> 12 & 3}")
    lines.extend(_segment_line(target.segment(name)) for name in (*SEGMENTS, "ldtr", "tr"))
    for name in ("gdtr", "idtr"):
        table = target.segment(name)
        lines.append(f"{name} base {table.base:#018x}  limit {table.limit:#06x}")
    lines.append(f"cr0 {values['cr0']:#018x} [{_bits(values['cr0'], _CR0)}]  "
                 f"cr2 {values['cr2']:#018x}  cr3 {values['cr3']:#018x}")
    lines.append(f"cr4 {values['cr4']:#018x} [{_bits(values['cr4'], _CR4)}]")
    lines.append(f"efer {values['efer']:#018x} [{_bits(values['efer'], _EFER)}]")
    return lines


def memory(target: Target, address: int, count: int, fmt: str, unit: str, *,
           physical: bool = False, view: MemoryView = MemoryView.CURRENT) -> list[str]:
    """``x``: ``count`` units (``b h w g``) from ``address`` as hex (``x``), ``d``, ``u`` or ``c``.

    Raises:
        DebugError: an unknown format, or unreadable memory.
    """
    if fmt == "i":
        return listing(target, address, count, highlight=target.pc())
    size = _UNITS.get(unit)
    if size is None or fmt not in "xduc" or len(fmt) != 1:
        raise DebugError(f"unknown format /{fmt}{unit} (formats x d u c i, units b h w g)")
    if fmt == "c":
        size = 1
    data = target.read(address, count * size, physical=physical, view=view)
    per_line = 16 if fmt == "c" else _PER_LINE[size]
    lines = []
    for start in range(0, count, per_line):
        chunk = data[start * size:(start + per_line) * size]
        cells = [_cell(chunk[i:i + size], fmt) for i in range(0, len(chunk), size)]
        here_at = address + start * size
        symbol = None if physical else target.symbolize(here_at)
        label = f"{here_at:#018x}" + (f" <{symbol}>" if symbol else "")
        lines.append(f"{label}:  " + "  ".join(cells))
    return lines


def _cell(raw: bytes, fmt: str) -> str:
    value = int.from_bytes(raw, "little")
    if fmt == "x":
        return f"{value:#0{2 * len(raw) + 2}x}"
    if fmt == "u":
        return str(value)
    if fmt == "d":
        return str(value - (1 << (8 * len(raw))) if value >> (8 * len(raw) - 1) else value)
    return chr(value) if 0x20 <= value < 0x7F else "."


def save_state(target: Target, entry: bytes | None) -> list[str]:
    """``savestate``: the current profile's map; fields changed since SMI entry marked ``*``."""
    machine = target.machine
    profile = machine.profile
    base = target.cpu.smbase + profile.save_state_offset
    raw = target.read(base, len(entry) if entry else 0x200, physical=True,
                      view=MemoryView.SMM)
    now = decode_save_state(profile.save_state, raw)
    before = decode_save_state(profile.save_state, entry) if entry else now
    where = "" if target.cpu.in_smm else " (the CPU is outside SMM: the last SMI's map)"
    lines = [f"{profile.save_state.value} save-state map at {base:#x} (SMBASE "
             f"{target.cpu.smbase:#x} + {profile.save_state_offset:#x}){where}; "
             "* = changed since SMI entry"]
    order = [*GPRS, "rip", "rflags", "cr0", "cr3", "cr4", "efer", "dr6", "dr7", "smbase",
             "smm_revision"]
    names = [n for n in order if n in now] + sorted(n for n in now if n not in order)
    main = [n for n in names if n in order]
    rest = [n for n in names if n not in order]
    for group, per_line in ((main, 4), (rest, 3)):
        width = max((len(name) for name in group), default=0) + 1
        cells = [f"{('*' if now[n] != before.get(n) else '') + n:>{width}} {now[n]:#x}"
                 for n in group]
        lines.extend("  ".join(f"{cell:<{width + 19}}" for cell in cells[i:i + per_line]).rstrip()
                     for i in range(0, len(cells), per_line))
    changed = [n for n in names if now[n] != before.get(n)]
    lines.append("changed: " + (", ".join(f"{n} {before[n]:#x} -> {now[n]:#x}" for n in changed)
                                if changed else "nothing"))
    return lines


def backtrace(target: Target) -> list[str]:
    """``bt``: the PC, then return addresses along the RBP (or EBP) frame-pointer chain.

    Functions that keep no frame pointer do not appear.
    """
    lines = [f"#0  {location(target, target.pc())}"]
    wide = target.mode() is CpuMode.LONG64
    size = 8 if wide else 4
    frame = target.register("rbp") if wide else target.register("ebp")
    for depth in range(1, _MAX_FRAMES):
        try:
            raw = target.read(frame, 2 * size)
        except DebugError:
            break
        fmt = "<QQ" if wide else "<II"
        next_frame, ret = struct.unpack(fmt, raw)
        if ret == 0:
            break
        lines.append(f"#{depth}  {location(target, ret)}  (frame {frame:#x})")
        if next_frame <= frame:
            break
        frame = next_frame
    return lines


def handlers(target: Target) -> list[str]:
    """``handlers``: the MM core's MMI handler table."""
    table = target.machine.handler_table()
    lines = [f"{'#':>2}  {'HandlerType':<36}  {'handler':<18}  symbol"]
    for index, (guid, address) in enumerate(table):
        name = "root handler" if guid is None else WELL_KNOWN.get(guid, "")
        symbol = target.symbolize(address) or ""
        text = "(root)" if guid is None else str(guid)
        lines.append(f"{index:>2}  {text:<36}  {address:#018x}  {symbol}"
                     + (f"  ({name})" if name else ""))
    return lines


def describe_breakpoint(entry: Breakpoint, target: Target) -> str:
    """The ``What`` column of ``info breakpoints``."""
    kind = entry.kind
    if kind is BreakKind.CODE and entry.address is not None:
        what = location(target, entry.address)
        if entry.label not in (what, target.symbolize(entry.address)):
            what += f" ({entry.label})"
    elif kind is BreakKind.WATCH:
        what = _watch_text(entry)
    elif kind in (BreakKind.IO, BreakKind.MSR):
        access = {Access.ANY: "", Access.READ: " in" if kind is BreakKind.IO else " rdmsr",
                  Access.WRITE: " out" if kind is BreakKind.IO else " wrmsr"}[entry.access]
        number = "any" if entry.value is None else f"{entry.value:#x}"
        what = f"{'port' if kind is BreakKind.IO else 'MSR'} {number}{access}"
    elif kind is BreakKind.EXCEPTION:
        what = "any vector" if entry.value is None else (
            f"vector {entry.value} {EXCEPTION_NAMES.get(entry.value, '')}".rstrip())
    else:
        what = {BreakKind.SMI: "SMI entry", BreakKind.RSM: "RSM"}.get(kind, entry.label)
    if entry.condition:
        what += f" if {entry.condition}"
    return what


def _watch_text(entry: Breakpoint) -> str:
    if entry.outside_smram:
        return f"{entry.access.value} of memory outside SMRAM from SMM"
    ranges = ", ".join(f"{start:#x}-{end - 1:#x}" for start, end in entry.ranges)
    return f"{entry.access.value} {entry.length} bytes at {entry.label} (physical {ranges})"


def breakpoint_table(table: BreakpointTable, target: Target) -> list[str]:
    """``info breakpoints``."""
    if not len(table):
        return ["no breakpoints, watchpoints or catchpoints"]
    lines = ["Num  Type         Disp  Enb  Hits  What"]
    for entry in table:
        owner = " [gdb]" if entry.owner != "user" else ""
        disposition = "del" if entry.temporary else "keep"
        enabled = "y" if entry.enabled else "n"
        lines.append(f"{entry.number:<4} {entry.kind.value:<12} {disposition:<5} {enabled:<4} "
                     f"{entry.hits:<5} {describe_breakpoint(entry, target)}{owner}")
    return lines


def columns(values: Sequence[str], width: int = 4) -> list[str]:
    """Values laid out ``width`` to a line (for completion listings and help)."""
    return ["  ".join(values[i:i + width]) for i in range(0, len(values), width)]
