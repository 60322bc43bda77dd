"""Text and JSON rendering shared by the commands: hex dumps, register grids, summaries.

Functions here return lines; the commands print them. JSON goes out as one
document with sorted keys, built from the result objects' ``to_json()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from smmemu.results import SmiResult
from smmemu.uefi.status import status_name

__all__ = [
    "guest_problems",
    "hexdump",
    "print_json",
    "print_lines",
    "register_grid",
    "size_text",
    "smi_summary",
    "status_text",
]


def print_json(document: Mapping[str, Any]) -> None:
    """Print ``document`` as one JSON document (sorted keys) on stdout."""
    print(json.dumps(document, sort_keys=True, indent=2))


def print_lines(lines: Iterable[str]) -> None:
    """Print each line on stdout."""
    for line in lines:
        print(line)


def status_text(value: int) -> str:
    """``EFI_NOT_FOUND (0x800000000000000e)``, or the bare hex value when it has no name."""
    name = status_name(value)
    return name if name.startswith("0x") else f"{name} ({value:#x})"


def smi_summary(smi: SmiResult) -> str:
    """``1 SMI in 0.42 ms``."""
    count = len(smi.smis)
    return f"{count} SMI{'' if count == 1 else 's'} in {smi.elapsed * 1e3:.2f} ms"


def size_text(size: int) -> str:
    """A byte count in the largest unit that divides it (``16 KiB``, ``3280 bytes``)."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} byte{'' if size == 1 else 's'}"


def hexdump(data: bytes, *, base: int = 0, indent: str = "  ") -> list[str]:
    """16 bytes a line: offset, hex (split after 8) and printable ASCII."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset:offset + 16]
        left = " ".join(f"{b:02x}" for b in chunk[:8])
        right = " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{indent}{base + offset:08x}  {left:<23}  {right:<23}  |{text}|")
    return lines


def register_grid(values: Mapping[str, int], names: Sequence[str], *, columns: int = 3,
                  digits: int = 16, marked: Iterable[str] = (), indent: str = "  ") -> list[str]:
    """``names`` present in ``values`` as ``name 0x...`` cells, ``columns`` a line.

    Names in ``marked`` get a ``*`` before them.
    """
    marks = set(marked)
    present = [name for name in names if name in values]
    width = max((len(name) for name in present), default=0)
    cells = [f"{('*' if name in marks else '') + name:>{width + 1}} {values[name]:#0{digits + 2}x}"
             for name in present]
    return [indent + "  ".join(cells[i:i + columns]) for i in range(0, len(cells), columns)]


def guest_problems(smi: SmiResult) -> list[str]:
    """What went wrong in the guest run: fault report or stop detail, SMRAM accesses, findings.

    The stop reason itself is left to the caller's summary line.
    """
    lines = []
    fault = smi.fault
    if fault is None and not smi.ok and smi.detail:
        lines.append(f"detail: {smi.detail}")
    if fault is not None:
        lines.append("fault:")
        lines.extend(f"  {line}" for line in fault.describe().splitlines())
    if smi.smram_accesses:
        lines.append("SMRAM accesses from outside SMM:")
        lines.extend(f"  {access.describe()}" for access in smi.smram_accesses)
    if smi.findings:
        lines.append("findings:")
        lines.extend(f"  {finding.kind}: {finding.message}" for finding in smi.findings)
    return lines
