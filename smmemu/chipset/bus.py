"""One I/O port bus fed by the engine's single IN hook and single OUT hook.

Unicorn cannot chain several IN/OUT hooks (each would have to answer every
port), so smmemu installs exactly one of each and dispatches here by port
range to one device object per register block (reference/aesthetics.md 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["PortAccess", "PortBus", "PortDevice"]


class PortDevice(Protocol):
    """A register block decoded at a fixed I/O range."""

    def port_read(self, offset: int, size: int) -> int:
        """Value of a ``size``-byte read at ``offset`` from the block's base."""

    def port_write(self, offset: int, size: int, value: int) -> None:
        """Effect of a ``size``-byte write at ``offset`` from the block's base."""


@dataclass(frozen=True, slots=True)
class PortAccess:
    """An access no device decoded (kept for reports; reads float to all-ones)."""

    port: int
    size: int
    is_write: bool
    value: int


@dataclass(slots=True)
class _Range:
    base: int
    size: int
    device: PortDevice
    name: str


@dataclass(slots=True)
class PortBus:
    """Dispatches port I/O to attached devices."""

    _ranges: list[_Range] = field(default_factory=list)
    unclaimed: list[PortAccess] = field(default_factory=list)
    _by_port: dict[int, _Range] = field(default_factory=dict)

    def attach(self, base: int, size: int, device: PortDevice, name: str) -> None:
        """Decode ports [base, base + size) to ``device``."""
        for port in range(base, base + size):
            if port in self._by_port:
                other = self._by_port[port].name
                raise ValueError(f"port {port:#x} of {name} is already decoded by {other}")
        entry = _Range(base, size, device, name)
        self._ranges.append(entry)
        for port in range(base, base + size):
            self._by_port[port] = entry

    def detach(self, name: str) -> None:
        """Stop decoding the block attached as ``name`` (to move it)."""
        for entry in [r for r in self._ranges if r.name == name]:
            self._ranges.remove(entry)
            for port in range(entry.base, entry.base + entry.size):
                del self._by_port[port]

    def devices(self) -> list[tuple[int, int, str]]:
        """(base, size, name) of every attached block, for reports."""
        return [(r.base, r.size, r.name) for r in self._ranges]

    def read(self, port: int, size: int) -> int:
        """A CPU IN: the device's value, or all-ones on an undecoded port."""
        entry = self._by_port.get(port)
        if entry is None:
            self.unclaimed.append(PortAccess(port, size, False, 0))
            return (1 << (8 * size)) - 1
        return entry.device.port_read(port - entry.base, size)

    def write(self, port: int, size: int, value: int) -> None:
        """A CPU OUT."""
        entry = self._by_port.get(port)
        if entry is None:
            self.unclaimed.append(PortAccess(port, size, True, value))
            return
        entry.device.port_write(port - entry.base, size, value)
