"""QEMU's debug console port (0x402): what OVMF's debug library prints.

OVMF builds use ``PlatformDebugLibIoPort``, which writes each character of a
DEBUG() message to I/O port 0x402 (QEMU's ``isa-debugcon``). smmemu collects
them, so drivers' debug output shows up in the run report and the log. A read
returns 0xE9, the value QEMU's debugcon answers to tell firmware it is there.
"""

from __future__ import annotations

import logging

__all__ = ["DEBUG_PORT", "DebugPort"]

DEBUG_PORT = 0x402
log = logging.getLogger(__name__)


class DebugPort:
    """Collects the bytes written to the debug port."""

    def __init__(self) -> None:
        self._line = bytearray()
        self.lines: list[str] = []

    def port_read(self, offset: int, size: int) -> int:
        """Presence check: 0xE9."""
        del offset
        return 0xE9 & ((1 << (8 * size)) - 1)

    def port_write(self, offset: int, size: int, value: int) -> None:
        """One character (or several, for wider writes)."""
        del offset
        for byte in value.to_bytes(size, "little"):
            if byte == 0x0A:
                text = self._line.decode("latin-1").rstrip("\r")
                self.lines.append(text)
                log.info("debug port: %s", text)
                self._line.clear()
            else:
                self._line.append(byte)
