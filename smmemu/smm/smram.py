"""One CPU's view of TSEG: real contents in SMM, a black hole outside it.

Fast path (unicorn_probe.md rows 9-11): TSEG stays mapped from the shared host
buffer, with host permissions ALL in SMM and NONE outside (about 7 us per
toggle pair). Translated code ignores those permissions, so non-SMM code runs
with RFLAGS.IOPL = 3 and SMM code with IOPL = 0: IOPL is part of QEMU's
translation-block key, so the two code caches never mix.

A non-SMM data access to TSEG then stops the run with a protection fault. Only
then is TSEG swapped for an MMIO black hole (reads all-ones, writes dropped
and recorded, as QEMU's ``tseg-blackhole``), and the faulting instruction is
run again against it. The swap costs about 1 ms, paid only when guest code
actually touches SMRAM; the next SMM entry maps the real contents back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from smmemu.engine import Engine, Prot
from smmemu.memory import PhysicalMemory, SmramAccess

__all__ = ["SmramView"]


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    BLACKHOLE = "blackhole"


class SmramView:
    """Maps TSEG into one engine and switches it between the SMM and non-SMM views."""

    def __init__(self, engine: Engine, memory: PhysicalMemory, rip: Callable[[], int]) -> None:
        self._engine = engine
        self._memory = memory
        self._rip = rip
        engine.map_host(memory.smram_base, memory.smram_size, memory.smram.address, Prot.NONE)
        self._state = _State.CLOSED

    @property
    def state(self) -> str:
        """``open``, ``closed`` or ``blackhole``."""
        return self._state.value

    def open(self) -> None:
        """SMM entry: make the real contents visible."""
        if self._state is _State.BLACKHOLE:
            self._engine.unmap(self._memory.smram_base, self._memory.smram_size)
            self._engine.map_host(self._memory.smram_base, self._memory.smram_size,
                                  self._memory.smram.address, Prot.ALL)
        elif self._state is _State.CLOSED:
            self._engine.protect(self._memory.smram_base, self._memory.smram_size, Prot.ALL)
        self._state = _State.OPEN

    def close(self) -> None:
        """RSM (or a chipset change outside SMM): hide the contents again, if TSEG is closed.

        With TSEG open (MCH T_EN or G_SMRAME clear) non-SMM code sees the RAM itself.
        """
        if not self._memory.smram_closed:
            self.open()
            return
        if self._state is _State.OPEN:
            self._engine.protect(self._memory.smram_base, self._memory.smram_size, Prot.NONE)
        self._state = _State.CLOSED

    def to_blackhole(self) -> None:
        """After a refused non-SMM access: route TSEG accesses to the black hole."""
        if self._state is _State.BLACKHOLE:
            return
        self._engine.unmap(self._memory.smram_base, self._memory.smram_size)
        self._engine.map_mmio(self._memory.smram_base, self._memory.smram_size,
                              self._on_read, self._on_write)
        self._state = _State.BLACKHOLE

    def _on_read(self, offset: int, size: int) -> int:
        address = self._memory.smram_base + offset
        self._memory.findings.append(SmramAccess("guest", "read", address, size, None, self._rip()))
        return (1 << (8 * size)) - 1

    def _on_write(self, offset: int, size: int, value: int) -> None:
        address = self._memory.smram_base + offset
        self._memory.findings.append(SmramAccess("guest", "write", address, size, value,
                                                 self._rip()))
