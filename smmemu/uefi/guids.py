"""GUIDs: parsing at the API edge and the well-known values smmemu uses.

GUIDs are ``uuid.UUID`` in the API and EFI byte order (``bytes_le``: Data1
LE32, Data2 LE16, Data3 LE16, Data4 as written) in guest memory. Values from
reference/comm_protocols.md 1.2.
"""

from __future__ import annotations

import uuid

from smmemu.errors import GuidError

__all__ = [
    "ECHO_HANDLER_GUID",
    "END_OF_DXE_GUID",
    "EXIT_BOOT_SERVICES_GUID",
    "MM_READY_TO_LOCK_GUID",
    "MM_SUPERVISOR_REQUEST_HANDLER_GUID",
    "READY_TO_BOOT_GUID",
    "WELL_KNOWN",
    "parse_guid",
]

MM_SUPERVISOR_REQUEST_HANDLER_GUID = uuid.UUID("8c633b23-1260-4ea6-830f-7ddc97382111")
MM_READY_TO_LOCK_GUID = uuid.UUID("60ff8964-e906-41d0-afed-f241e974e08e")
END_OF_DXE_GUID = uuid.UUID("02ce967a-dd7e-4ffc-9ee7-810cf0470880")
READY_TO_BOOT_GUID = uuid.UUID("7ce88fb3-4bd7-4679-87a8-a8d8dee50d2b")
EXIT_BOOT_SERVICES_GUID = uuid.UUID("27abf055-b1b8-4c26-8048-748f37baa2df")
ECHO_HANDLER_GUID = uuid.UUID("12345678-1234-5678-1234-567890abcdef")

WELL_KNOWN = {
    MM_SUPERVISOR_REQUEST_HANDLER_GUID: "gMmSupervisorRequestHandlerGuid",
    MM_READY_TO_LOCK_GUID: "gEfiDxeMmReadyToLockProtocolGuid",
    END_OF_DXE_GUID: "gEfiEndOfDxeEventGroupGuid",
    READY_TO_BOOT_GUID: "gEfiEventReadyToBootGuid",
    EXIT_BOOT_SERVICES_GUID: "gEfiEventExitBootServicesGuid",
    ECHO_HANDLER_GUID: "smmemu echo handler (patina test_guids::ECHO_HANDLER)",
}


def parse_guid(value: uuid.UUID | str) -> uuid.UUID:
    """A ``uuid.UUID`` from a UUID or its registry-format string.

    Raises:
        GuidError: if ``value`` is not a GUID.
    """
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        text = value.strip().strip("{}")
        if len(text) == 36 and text.count("-") == 4:
            try:
                return uuid.UUID(text)
            except ValueError:
                pass
    raise GuidError(f"malformed GUID {value!r} (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                    value=value)
