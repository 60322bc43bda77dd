"""smmemu: a full x86-64 System Management Mode (MM) emulator on the Unicorn CPU engine.

The public API::

    import smmemu
    with smmemu.Machine("q35") as machine:
        reply = machine.communicate(smmemu.ECHO_HANDLER_GUID, b"ping")
"""

from __future__ import annotations

from smmemu.errors import (
    CommBufferError,
    ConfigError,
    EngineError,
    GuidError,
    ImageError,
    MachineClosedError,
    MemoryAccessError,
    ProfileError,
    SessionError,
    SmmemuError,
    SnapshotError,
)
from smmemu.machine import Machine
from smmemu.profiles import PROFILE_NAMES
from smmemu.results import CommResult, FaultRecord, SmiResult, StopReason
from smmemu.uefi.guids import ECHO_HANDLER_GUID, MM_SUPERVISOR_REQUEST_HANDLER_GUID
from smmemu.uefi.status import EfiStatus

__version__ = "0.1.0"

__all__ = [
    "ECHO_HANDLER_GUID",
    "MM_SUPERVISOR_REQUEST_HANDLER_GUID",
    "PROFILE_NAMES",
    "CommBufferError",
    "CommResult",
    "ConfigError",
    "EfiStatus",
    "EngineError",
    "FaultRecord",
    "GuidError",
    "ImageError",
    "Machine",
    "MachineClosedError",
    "MemoryAccessError",
    "ProfileError",
    "SessionError",
    "SmiResult",
    "SmmemuError",
    "SnapshotError",
    "StopReason",
    "__version__",
]
