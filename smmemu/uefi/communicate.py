"""MM communication layouts (reference/comm_protocols.md 1.3, 3.1, 4.2).

* ``EFI_MM_COMMUNICATE_HEADER`` (``MdePkg/Include/Protocol/MmCommunication.h``):
  mirrored without ``Data[1]``, so its size is 24, edk2's
  ``OFFSET_OF(EFI_MM_COMMUNICATE_HEADER, Data)``.
* ``MM_COMM_BUFFER`` and ``MM_COMM_BUFFER_STATUS``
  (``MdeModulePkg/Include/Guid/MmCommBuffer.h``): 24 bytes each, ReturnStatus
  at 8 (not the 18-byte packed variant of an early patina revision).
* ``MM_SUPERVISOR_REQUEST_HEADER`` and the VERSION_INFO and UNBLOCK_MEM
  payloads (``MmSupervisorPkg/Include/Guid/MmSupervisorRequestData.h``).
"""

from __future__ import annotations

import ctypes
import enum
import uuid

from smmemu.structs import LeStruct

__all__ = [
    "COMM_HEADER_SIZE",
    "MM_SUPERVISOR_REQUEST_REVISION",
    "MM_SUPERVISOR_REQUEST_SIG",
    "EfiMmCommunicateHeader",
    "MmCommBuffer",
    "MmCommBufferStatus",
    "MmSupervisorRequest",
    "MmSupervisorRequestHeader",
    "MmSupervisorUnblockMemoryParams",
    "MmSupervisorVersionInfo",
    "supervisor_request",
]

_u8, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64


class EfiMmCommunicateHeader(LeStruct):
    """``EFI_MM_COMMUNICATE_HEADER`` up to ``Data``."""

    _fields_ = [("HeaderGuid", _u8 * 16), ("MessageLength", _u64)]  # noqa: RUF012


COMM_HEADER_SIZE = EfiMmCommunicateHeader.size()


def communicate_header(recipient: uuid.UUID, message_length: int) -> bytes:
    """The 24 header bytes for ``recipient`` (EFI GUID byte order)."""
    header = EfiMmCommunicateHeader()
    header.HeaderGuid[:] = recipient.bytes_le
    header.MessageLength = message_length
    return header.to_bytes()


class MmCommBuffer(LeStruct):
    """``MM_COMM_BUFFER``: the HOB that tells the MM core where a comm buffer is."""

    _fields_ = [("PhysicalStart", _u64), ("NumberOfPages", _u64), ("Status", _u64)]  # noqa: RUF012


class MmCommBufferStatus(LeStruct):
    """``MM_COMM_BUFFER_STATUS``: the mailbox next to a comm buffer."""

    _fields_ = [  # noqa: RUF012
        ("IsCommBufferValid", _u8), ("TalkToSupervisor", _u8), ("Reserved", _u8 * 6),
        ("ReturnStatus", _u64), ("ReturnBufferSize", _u64),
    ]


MM_SUPERVISOR_REQUEST_SIG = 0x5055_534D
MM_SUPERVISOR_REQUEST_REVISION = 1


class MmSupervisorRequest(enum.IntEnum):
    """MM_SUPERVISOR_REQUEST_* codes."""

    UNBLOCK_MEM = 1
    FETCH_POLICY = 2
    VERSION_INFO = 3
    COMM_UPDATE = 4


class MmSupervisorRequestHeader(LeStruct):
    """``MM_SUPERVISOR_REQUEST_HEADER`` (24 bytes, pack(1))."""

    _fields_ = [  # noqa: RUF012
        ("Signature", _u32), ("Revision", _u32), ("Request", _u32), ("Reserved", _u32),
        ("Result", _u64),
    ]


class MmSupervisorVersionInfo(LeStruct):
    """``MM_SUPERVISOR_VERSION_INFO_BUFFER`` (16 bytes)."""

    _fields_ = [  # noqa: RUF012
        ("Version", _u32), ("PatchLevel", _u32), ("MaxSupervisorRequestLevel", _u64),
    ]


class MmSupervisorUnblockMemoryParams(LeStruct):
    """``MM_SUPERVISOR_UNBLOCK_MEMORY_PARAMS``: an EFI_MEMORY_DESCRIPTOR and a GUID (56 bytes)."""

    _fields_ = [  # noqa: RUF012
        ("Type", _u32), ("Reserved", _u32), ("PhysicalStart", _u64), ("VirtualStart", _u64),
        ("NumberOfPages", _u64), ("Attribute", _u64), ("IdentifierGuid", _u8 * 16),
    ]


def supervisor_request(request: int, payload: bytes = b"", *,
                       signature: int = MM_SUPERVISOR_REQUEST_SIG,
                       revision: int = MM_SUPERVISOR_REQUEST_REVISION) -> bytes:
    """A supervisor request: header (Result 0) followed by ``payload``."""
    header = MmSupervisorRequestHeader(Signature=signature, Revision=revision, Request=request)
    return header.to_bytes() + payload
