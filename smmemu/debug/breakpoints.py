"""Breakpoints, watchpoints and event catchpoints: the debugger's table of stop conditions.

Kinds (each may be temporary and carry a condition):

* ``breakpoint``: an instruction at a linear address (from an address, an MM core
  symbol, or the handler registered for a GUID);
* ``smi-entry``, ``rsm``, ``exception`` (optionally one vector): CPU events, from the
  CPU's observer;
* ``io`` (a port, or any; ``in``/``out`` or both) and ``msr`` (an index, or any;
  ``rdmsr``/``wrmsr`` or both): stop *before* the instruction that makes the access;
* ``watchpoint``: data accesses (read, write or either) to physical ranges, or any
  access SMM code makes outside SMRAM; the stop comes *after* the instruction.

The table only holds the conditions; :class:`~smmemu.debug.session.Debugger`
turns them into engine hooks.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from smmemu.debug.errors import DebugError

__all__ = ["Access", "BreakKind", "Breakpoint", "BreakpointTable"]


class BreakKind(enum.Enum):
    """What a table entry stops on."""

    CODE = "breakpoint"
    SMI = "smi-entry"
    RSM = "rsm"
    EXCEPTION = "exception"
    IO = "io"
    MSR = "msr"
    WATCH = "watchpoint"


class Access(enum.Enum):
    """Which accesses an entry stops on (I/O: in = read, out = write; MSRs: rdmsr, wrmsr)."""

    READ = "read"
    WRITE = "write"
    ANY = "access"

    def matches(self, is_write: bool) -> bool:
        """Whether an access of that direction is one of these."""
        return self is Access.ANY or (self is Access.WRITE) == is_write


@dataclass(slots=True, eq=False)
class Breakpoint:
    """One entry of the table (compared and hashed by identity)."""

    number: int
    kind: BreakKind
    label: str
    """How the user named it (``msup_handler``, ``handler 8c633b23-...``, ``*0x9040``)."""
    address: int | None = None
    """CODE: the linear address; WATCH: the linear (or physical) address given."""
    length: int = 1
    ranges: tuple[tuple[int, int], ...] = ()
    """WATCH: the physical [start, end) ranges watched."""
    value: int | None = None
    """EXCEPTION: the vector; IO: the port; MSR: the index (None: any)."""
    access: Access = Access.ANY
    condition: str | None = None
    temporary: bool = False
    enabled: bool = True
    hits: int = 0
    owner: str = "user"
    """``user`` (a command) or ``gdb`` (a Z packet)."""
    outside_smram: bool = False
    """WATCH: any access SMM code makes to memory outside SMRAM."""

    def overlaps(self, address: int, size: int) -> bool:
        """Whether a physical access [address, address + size) touches a watched range."""
        return any(address < end and address + size > start for start, end in self.ranges)


@dataclass(slots=True)
class BreakpointTable:
    """The numbered entries, in creation order."""

    entries: dict[int, Breakpoint] = field(default_factory=dict)
    _next: int = 1

    def add(self, kind: BreakKind, label: str, *, address: int | None = None, length: int = 1,
            ranges: tuple[tuple[int, int], ...] = (), value: int | None = None,
            access: Access = Access.ANY, condition: str | None = None, temporary: bool = False,
            owner: str = "user", outside_smram: bool = False) -> Breakpoint:
        """A new enabled entry with the next number (fields as in :class:`Breakpoint`)."""
        entry = Breakpoint(self._next, kind, label, address=address, length=length,
                           ranges=ranges, value=value, access=access, condition=condition,
                           temporary=temporary, owner=owner, outside_smram=outside_smram)
        self.entries[entry.number] = entry
        self._next += 1
        return entry

    def get(self, number: int) -> Breakpoint:
        """The entry ``number``.

        Raises:
            DebugError: there is none.
        """
        try:
            return self.entries[number]
        except KeyError:
            raise DebugError(f"no breakpoint number {number}") from None

    def remove(self, number: int) -> Breakpoint:
        """Delete entry ``number`` and return it.

        Raises:
            DebugError: there is none.
        """
        entry = self.get(number)
        del self.entries[number]
        return entry

    def __iter__(self) -> Iterator[Breakpoint]:
        return iter(list(self.entries.values()))

    def __len__(self) -> int:
        return len(self.entries)

    def active(self, kind: BreakKind) -> list[Breakpoint]:
        """Enabled entries of ``kind``."""
        return [e for e in self.entries.values() if e.kind is kind and e.enabled]

    def code_at(self, address: int) -> list[Breakpoint]:
        """Enabled code breakpoints at the linear ``address``."""
        return [e for e in self.active(BreakKind.CODE) if e.address == address]

    def code_addresses(self) -> set[int]:
        """Linear addresses that have an enabled code breakpoint."""
        return {e.address for e in self.active(BreakKind.CODE) if e.address is not None}

    def needs_stepping(self) -> bool:
        """Whether an enabled entry can only be checked instruction by instruction.

        Watchpoints report after the accessing instruction; I/O and MSR breakpoints
        look at each instruction before it runs.
        """
        return any(e.enabled and e.kind in (BreakKind.WATCH, BreakKind.IO, BreakKind.MSR)
                   for e in self.entries.values())

    def find(self, owner: str, kind: BreakKind, address: int, access: Access,
             length: int) -> Breakpoint | None:
        """An entry created by ``owner`` with exactly these parameters (gdb's Z/z pairs)."""
        return next((e for e in self.entries.values()
                     if e.owner == owner and e.kind is kind and e.address == address
                     and e.access is access and e.length == length), None)
