"""Values passed between the debugger core and its front-ends: why the CPU stopped, what next.

A front-end (the command shell, the GDB stub) implements :class:`Frontend`:
the core calls :meth:`Frontend.stopped` with a :class:`Stop` whenever the CPU
stops, and the front-end answers with the :class:`Resume` the user chose.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from smmemu.debug.breakpoints import Breakpoint
from smmemu.results import SmiResult

__all__ = ["Frontend", "Resume", "ResumeKind", "Stop", "StopKind", "WatchHit"]


class StopKind(enum.Enum):
    """Why the CPU stopped."""

    START = "start"
    """The first instruction of the first run the debugger sees."""
    STEP = "step"
    BREAKPOINT = "breakpoint"
    WATCHPOINT = "watchpoint"
    EVENT = "event"
    """SMI entry, RSM or an exception (``detail`` says which)."""
    IO = "io"
    MSR = "msr"
    FINISH = "finish"
    UNTIL = "until"
    INTERRUPT = "interrupt"
    """Ctrl-C, gdb's interrupt, or a resume that outlived the budget (``detail``)."""
    END = "end"
    """The run is over (``result``); the CPU waits for the next request."""


@dataclass(frozen=True, slots=True)
class WatchHit:
    """One data access that hit a watchpoint (physical address; values little-endian)."""

    breakpoint: Breakpoint
    is_write: bool
    address: int
    size: int
    value: int | None
    """The value written, or the value read."""
    old: int | None = None
    """For a write: the value before it."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Where and why the CPU stopped; ``pc`` is linear (0 for END)."""

    kind: StopKind
    pc: int
    breakpoint: Breakpoint | None = None
    hits: tuple[WatchHit, ...] = ()
    detail: str = ""
    event: str | None = None
    """EVENT: ``smi-entry``, ``rsm`` or ``exception``; IO/MSR: the access."""
    event_value: int | None = None
    """EVENT: SMBASE, the RIP RSM returns to, or the vector."""
    result: SmiResult | None = None
    """END: the run's outcome."""
    run: int = 0
    """The number of the run (1 for the first request's guest run)."""


class ResumeKind(enum.Enum):
    """What the user asked the CPU to do next."""

    CONTINUE = "continue"
    STEP = "stepi"
    NEXT = "nexti"
    FINISH = "finish"
    UNTIL = "until"
    ADVANCE = "advance"
    DETACH = "detach"
    QUIT = "quit"


@dataclass(frozen=True, slots=True)
class Resume:
    """A resume request: ``count`` for stepi/nexti, ``location`` (linear) for advance."""

    kind: ResumeKind
    count: int = 1
    location: int | None = None


class Frontend(Protocol):
    """What drives the debugger: a command shell, a GDB stub."""

    def stopped(self, stop: Stop) -> Resume:
        """The CPU stopped: interact, then say how to resume."""

    def finished(self) -> None:
        """No more runs will come (the session is over)."""
