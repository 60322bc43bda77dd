"""EFI_STATUS values for X64 (MAX_BIT = 1 << 63).

Sources: edk2 ``MdePkg/Include/Base.h`` (ENCODE_ERROR) and
``MdePkg/Include/Pi/PiMultiPhase.h`` (PI_ENCODE_ERROR / PI_ENCODE_WARNING),
as tabulated in reference/comm_protocols.md 1.1.
"""

from __future__ import annotations

import enum

__all__ = ["EfiStatus", "status_name"]

_MAX_BIT = 1 << 63


class EfiStatus(enum.IntEnum):
    """The EFI_STATUS codes MM communication and the emulated services use (UEFI 2.10 App. D)."""

    SUCCESS = 0
    LOAD_ERROR = _MAX_BIT | 1
    INVALID_PARAMETER = _MAX_BIT | 2
    UNSUPPORTED = _MAX_BIT | 3
    BAD_BUFFER_SIZE = _MAX_BIT | 4
    BUFFER_TOO_SMALL = _MAX_BIT | 5
    NOT_READY = _MAX_BIT | 6
    DEVICE_ERROR = _MAX_BIT | 7
    WRITE_PROTECTED = _MAX_BIT | 8
    OUT_OF_RESOURCES = _MAX_BIT | 9
    VOLUME_FULL = _MAX_BIT | 11
    NOT_FOUND = _MAX_BIT | 14
    ACCESS_DENIED = _MAX_BIT | 15
    ABORTED = _MAX_BIT | 21
    SECURITY_VIOLATION = _MAX_BIT | 26
    COMPROMISED_DATA = _MAX_BIT | 33
    INTERRUPT_PENDING = _MAX_BIT | (_MAX_BIT >> 2)
    WARN_INTERRUPT_SOURCE_PENDING = _MAX_BIT >> 2
    WARN_INTERRUPT_SOURCE_QUIESCED = (_MAX_BIT >> 2) | 1


def status_name(value: int) -> str:
    """``EFI_NOT_FOUND``-style name of a status, or its hex value."""
    try:
        return f"EFI_{EfiStatus(value).name}"
    except ValueError:
        return f"{value:#x}"
