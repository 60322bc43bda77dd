"""The DXE-side MM communicator, modelled on patina_mm's ``MmCommunicator``.

Sequence (reference/comm_protocols.md 2.2-2.4, patina ``communicator.rs`` and
``config.rs``): find the enabled buffer with the requested id; reject an empty
payload or one that does not fit after the 24-byte header; zero the whole
buffer; write the header (GUID, MessageLength) and the payload, and check the
header against private shadow copies; set the mailbox's IsCommBufferValid
(byte 0 = 1, byte 1 = 0, ReturnStatus/ReturnBufferSize left alone); trigger
the software SMI; read ReturnStatus and ReturnBufferSize; check that GUID and
MessageLength are unchanged (patina's "InvalidResponse").

The communicator knows nothing about Unicorn or the Machine: it writes through
a :class:`PhysicalWriter` and triggers through a :class:`SwSmiTrigger`, so it
can be tested with fakes (patina's ``MockSwMmiTrigger`` pattern).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Protocol

from smmemu.errors import CommBufferError
from smmemu.results import CommResult, SmiResult
from smmemu.uefi.communicate import COMM_HEADER_SIZE, MmCommBufferStatus, communicate_header

__all__ = [
    "CommError",
    "CommunicateBuffer",
    "MmCommunicator",
    "PhysicalWriter",
    "SwSmiTrigger",
    "TriggerOrder",
]

PAGE_SIZE = 0x1000


class CommError(enum.Enum):
    """The closed set of reasons a request cannot be sent (patina's ``Status`` enum)."""

    COMM_BUFFER_NOT_FOUND = "comm-buffer-not-found"
    COMM_BUFFER_TOO_SMALL = "comm-buffer-too-small"
    INVALID_DATA_BUFFER = "invalid-data-buffer"
    COMM_BUFFER_INIT_ERROR = "comm-buffer-init-error"
    NOT_ALIGNED = "not-aligned"


class TriggerOrder(enum.Enum):
    """Which port is written first when raising the software SMI."""

    PATINA = "patina"
    """OUT 0xB2 <- command, then OUT 0xB3 <- data (patina ``SwMmiManager``)."""
    OVMF = "ovmf"
    """OUT 0xB3 <- data, then OUT 0xB2 <- command (OVMF ``SmmControl2Dxe``)."""


class PhysicalWriter(Protocol):
    """Non-SMM physical memory access."""

    def read_physical(self, address: int, size: int) -> bytes:
        """Read ``size`` bytes."""

    def write_physical(self, address: int, data: bytes) -> None:
        """Write ``data``."""


class SwSmiTrigger(Protocol):
    """Raises a software SMI from non-SMM guest code (patina ``SwMmiTrigger``)."""

    def trigger_sw_mmi(self, command: int, data: int, order: TriggerOrder) -> SmiResult:
        """Execute the port writes and return what happened."""


@dataclass(slots=True)
class CommunicateBuffer:
    """A page-aligned comm buffer with its status mailbox and private shadow copies."""

    id: int
    address: int
    size: int
    status_address: int
    private_recipient: uuid.UUID | None = None
    private_message_length: int = 0

    def __post_init__(self) -> None:
        if self.address % PAGE_SIZE or self.size < COMM_HEADER_SIZE:
            raise CommBufferError(
                f"comm buffer {self.id} at {self.address:#x} (size {self.size:#x}) must be "
                f"page aligned and at least {COMM_HEADER_SIZE} bytes",
                reason=CommError.NOT_ALIGNED.value, buffer_id=self.id)


class MmCommunicator:
    """Sends MM communicate requests through the buffers it was configured with."""

    def __init__(self, buffers: list[CommunicateBuffer], memory: PhysicalWriter,
                 trigger: SwSmiTrigger, *, command: int = 0xFF, data: int = 0x00,
                 order: TriggerOrder = TriggerOrder.PATINA) -> None:
        self.buffers = {buffer.id: buffer for buffer in buffers}
        self._memory = memory
        self._trigger = trigger
        self.command = command
        self.data = data
        self.order = order

    def buffer(self, buffer_id: int) -> CommunicateBuffer:
        """The buffer with ``buffer_id``.

        Raises:
            CommBufferError: if there is none.
        """
        try:
            return self.buffers[buffer_id]
        except KeyError:
            known = ", ".join(str(i) for i in sorted(self.buffers))
            raise CommBufferError(f"no comm buffer with id {buffer_id} (known: {known})",
                                  reason=CommError.COMM_BUFFER_NOT_FOUND.value,
                                  buffer_id=buffer_id) from None

    def communicate(self, buffer_id: int, data: bytes, recipient: uuid.UUID) -> CommResult:
        """Send ``data`` to the handler registered for ``recipient`` and return the reply.

        Raises:
            CommBufferError: if the request cannot be placed in the buffer.
        """
        buffer = self.buffer(buffer_id)
        if not data:
            raise CommBufferError("the request payload is empty (patina rejects it too)",
                                  reason=CommError.INVALID_DATA_BUFFER.value, buffer_id=buffer_id)
        capacity = buffer.size - COMM_HEADER_SIZE
        if len(data) > capacity:
            raise CommBufferError(
                f"payload of {len(data)} bytes does not fit comm buffer {buffer_id}: "
                f"{buffer.size} bytes hold at most {capacity} after the 24-byte header",
                reason=CommError.COMM_BUFFER_TOO_SMALL.value, buffer_id=buffer_id)
        # Patina zeroes the whole buffer, then writes the header and the payload; no guest
        # code runs in between, so one write of the final bytes is the same to the guest.
        request = communicate_header(recipient, len(data)) + data
        self._memory.write_physical(buffer.address,
                                    request + bytes(buffer.size - len(request)))
        buffer.private_recipient = recipient
        buffer.private_message_length = len(data)
        problem = self._header_problem(
            buffer, self._memory.read_physical(buffer.address, COMM_HEADER_SIZE))
        if problem is not None:
            raise CommBufferError(f"comm buffer {buffer_id} did not take the request: {problem}",
                                  reason=CommError.COMM_BUFFER_INIT_ERROR.value,
                                  buffer_id=buffer_id)
        self._memory.write_physical(buffer.status_address, b"\x01\x00")
        smi = self._trigger.trigger_sw_mmi(self.command, self.data, self.order)
        status = MmCommBufferStatus.from_bytes(
            self._memory.read_physical(buffer.status_address, MmCommBufferStatus.size()))
        whole = self._memory.read_physical(buffer.address, buffer.size)
        return_size = int(status.ReturnBufferSize)
        end = min(max(return_size, COMM_HEADER_SIZE), buffer.size)
        return CommResult(
            status=int(status.ReturnStatus), data=whole[COMM_HEADER_SIZE:end],
            return_buffer_size=return_size, buffer=whole, smi=smi,
            header_error=self._header_problem(buffer, whole),
        )

    @staticmethod
    def _header_problem(buffer: CommunicateBuffer, raw: bytes) -> str | None:
        """Patina's ``verify_state_consistency``: the header must match the shadow copies.

        ``raw`` holds the buffer's bytes from its start (at least the 24-byte header).
        """
        length = int.from_bytes(raw[16:24], "little")
        recipient = buffer.private_recipient
        if recipient is None or raw[:16] != recipient.bytes_le:
            guid = uuid.UUID(bytes_le=bytes(raw[:16]))
            return f"header GUID is {guid}, expected {recipient}"
        if length != buffer.private_message_length:
            return f"MessageLength is {length}, expected {buffer.private_message_length}"
        return None
