"""Host-call thunks: SMRAM addresses whose ``ud2`` hands a call to Python.

A loaded driver calls a service through a function pointer, as it would call
PiSmmCore. The pointer leads to a 16-byte thunk in SMRAM that holds ``ud2``;
Unicorn reports the #UD to the CPU, which sees the address inside the thunk
area, runs the Python service with the EFIAPI arguments (RCX, RDX, R8, R9,
then the stack), puts the status in RAX and returns to the caller as ``ret``
would. One thunk costs one stop and restart of the CPU plus the Python service,
30-60 µs as measured (about 300 native calls); the choice and its cost are
recorded in docs/decisions/0013-host-implemented-services.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from smmemu.memory import PhysicalMemory

__all__ = ["THUNK_SIZE", "Service", "ThunkTable"]

THUNK_SIZE = 0x10
_THUNK_BYTES = b"\x0f\x0b" + b"\xcc" * (THUNK_SIZE - 2)


@dataclass(frozen=True, slots=True)
class Service:
    """What a thunk does: ``run(cpu)`` reads the arguments and returns the status."""

    name: str
    run: Callable[..., int]


class ThunkTable:
    """Allocates thunks in a fixed SMRAM area and maps their addresses to services."""

    def __init__(self, memory: PhysicalMemory, base: int, size: int) -> None:
        self._memory = memory
        self.base = base
        self.end = base + size
        self._next = base
        self._services: dict[int, Service] = {}

    def add(self, name: str, run: Callable[..., int]) -> int:
        """A new thunk for ``run``; returns its address.

        Raises:
            MemoryError: the thunk area is full.
        """
        if self._next + THUNK_SIZE > self.end:
            raise MemoryError("the host-call thunk area is full")
        address = self._next
        self._next += THUNK_SIZE
        self._memory.write(address, _THUNK_BYTES, smm=True)
        self._services[address] = Service(name, run)
        return address

    def lookup(self, address: int) -> Service | None:
        """The service of the thunk at ``address`` (its first byte)."""
        return self._services.get(address)

    def name_of(self, address: int) -> str | None:
        """The service name, for reports and the debugger."""
        service = self._services.get(address)
        return None if service is None else service.name
