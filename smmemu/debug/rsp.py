"""Framing for the GDB Remote Serial Protocol: packets, checksums, escapes, acks, interrupts.

What travels on the socket (GDB manual, "Overview" of the remote protocol):

* a packet is ``$``, the payload, ``#`` and two hex digits: the sum of the
  payload's bytes modulo 256;
* in acknowledged mode each side answers a packet with ``+`` (accepted) or
  ``-`` (bad checksum: send it again); after ``QStartNoAckMode`` is accepted
  neither side sends them any more;
* in binary payloads (``X`` from gdb, ``qXfer`` replies from the stub) the bytes
  ``#``, ``$``, ``}`` and ``*`` are written as ``}`` followed by the byte XOR 0x20;
* a lone byte 0x03 outside a packet asks the stub to stop the target.

:class:`RspChannel` reads the socket on a thread of its own, so an interrupt
is seen while the target runs; packets wait in a queue for the stub.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from collections.abc import Callable

__all__ = ["RspChannel", "checksum", "escape", "frame", "unescape"]

log = logging.getLogger(__name__)

_INTERRUPT = 0x03
_ESCAPE = 0x7D
_SPECIAL = frozenset(b"#$}*")


def checksum(payload: bytes) -> int:
    """The modulo-256 sum of the payload's bytes."""
    return sum(payload) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape ``# $ } *`` for a binary payload."""
    out = bytearray()
    for byte in data:
        if byte in _SPECIAL:
            out += bytes((_ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo :func:`escape`."""
    out = bytearray()
    index = 0
    while index < len(data):
        byte = data[index]
        if byte == _ESCAPE and index + 1 < len(data):
            out.append(data[index + 1] ^ 0x20)
            index += 2
        else:
            out.append(byte)
            index += 1
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """``$payload#cc``; ``payload`` must already be escaped where it is binary."""
    return b"$" + payload + b"#" + f"{checksum(payload):02x}".encode()


class RspChannel:
    """One gdb connection: a reader thread queues packets and reports interrupts."""

    def __init__(self, connection: socket.socket, on_interrupt: Callable[[], None]) -> None:
        self._socket = connection
        self._on_interrupt = on_interrupt
        self._packets: queue.Queue[bytes | None] = queue.Queue()
        self._send_lock = threading.Lock()
        self.acknowledge = True
        """Whether packets are acknowledged (until QStartNoAckMode)."""
        self._reader = threading.Thread(target=self._read, name="smmemu-gdb-reader",
                                        daemon=True)
        self._reader.start()

    def receive(self) -> bytes | None:
        """The next packet's payload (unescaped), or None once gdb has gone."""
        return self._packets.get()

    def send(self, payload: bytes) -> None:
        """Send one packet (gdb's acknowledgements are read and dropped by the reader)."""
        self._write(frame(payload))

    def _write(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self._socket.sendall(data)
            except OSError:
                log.debug("gdb connection lost while sending", exc_info=True)

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()

    def _read(self) -> None:
        buffer = bytearray()
        while True:
            try:
                data = self._socket.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._packets.put(None)
                return
            buffer += data
            self._parse(buffer)

    def _parse(self, buffer: bytearray) -> None:
        while buffer:
            first = buffer[0]
            if first == _INTERRUPT:
                del buffer[0]
                self._on_interrupt()
                continue
            if first != ord("$"):
                del buffer[0]  # '+', '-' or noise between packets
                continue
            end = buffer.find(b"#")
            if end < 0 or len(buffer) < end + 3:
                return
            payload = bytes(buffer[1:end])
            digits = bytes(buffer[end + 1:end + 3])
            del buffer[:end + 3]
            try:
                good = int(digits, 16) == checksum(payload)
            except ValueError:
                good = False
            if self.acknowledge:
                self._write(b"+" if good else b"-")
            if good:
                self._packets.put(unescape(payload))
