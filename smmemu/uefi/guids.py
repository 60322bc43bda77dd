"""GUIDs: parsing at the API edge and the well-known values smmemu uses.

GUIDs are ``uuid.UUID`` in the API and EFI byte order (``bytes_le``: Data1
LE32, Data2 LE16, Data3 LE16, Data4 as written) in guest memory. Values from
reference/comm_protocols.md 1.2.
"""

from __future__ import annotations

import functools
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
    # Protocols and MMI GUIDs real SMM drivers name (edk2 MdePkg.dec, MdeModulePkg.dec,
    # UefiCpuPkg.dec), so reports can say what a depex or LocateProtocol wanted.
    uuid.UUID("f4ccbfb7-f6e0-47fd-9dd4-10a8f150c191"): "gEfiSmmBase2ProtocolGuid",
    uuid.UUID("c2702b74-800c-4131-8746-8fb5b89ce4ac"): "gEfiSmmAccess2ProtocolGuid",
    uuid.UUID("3242a9d8-ce70-4aa0-955d-5e7b140de4d2"): "gEfiSmmCpuIo2ProtocolGuid",
    uuid.UUID("1d202cab-c8ab-4d5c-94f7-3cfcc0d3d335"): "gEfiSmmCpuServiceProtocolGuid",
    uuid.UUID("13a3f0f6-264a-3ef0-f2e0-dec512342f34"): "gEfiPcdProtocolGuid",
    uuid.UUID("0379be4e-d706-437d-b037-edb82fb772a4"): "gEfiDevicePathUtilitiesProtocolGuid",
    uuid.UUID("d326d041-bd31-4c01-b5a8-628be87f0653"): "gEfiSmmFirmwareVolumeBlockProtocolGuid",
    uuid.UUID("b7dfb4e1-052f-449f-87be-9818fc91b733"): "gEfiRuntimeArchProtocolGuid",
    uuid.UUID("18a3c6dc-5eea-48c8-a1c1-b53389f98999"): "gEfiSmmSwDispatch2ProtocolGuid",
    uuid.UUID("eb346b97-975f-4a9f-8b22-f8e92bb3d569"): "gEfiSmmCpuProtocolGuid",
    uuid.UUID("47b7fa8c-f4bd-4af6-8200-333086f0d2c8"): "gEfiSmmReadyToLockProtocolGuid",
    uuid.UUID("24e70042-d5c5-4260-8c39-0ad3aa32e93d"): "gEfiSmmEndOfDxeProtocolGuid",
    uuid.UUID("2a3cfebd-27e8-4d0a-8b79-d688c2a3e1c0"): "gEfiSmmLockBoxCommunicationGuid",
    uuid.UUID("ed32d533-99e6-4209-9cc0-2d72cdd998a7"): "gEfiSmmVariableProtocolGuid",
    uuid.UUID("da1b0d11-d1a7-46c4-9dc9-f3714875c6eb"): "gVarCheckPolicyLibMmiHandlerGuid",
    uuid.UUID("7e6efffa-69b4-4c1b-a4c7-aff9c9244feb"): "gEventMmDispatchGuid",
}


def parse_guid(value: uuid.UUID | str) -> uuid.UUID:
    """A ``uuid.UUID`` from a UUID or its registry-format string.

    Raises:
        GuidError: if ``value`` is not a GUID.
    """
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        parsed = _parse_text(value)
        if parsed is not None:
            return parsed
    raise GuidError(f"malformed GUID {value!r} (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
                    value=value)


@functools.lru_cache(maxsize=256)
def _parse_text(value: str) -> uuid.UUID | None:
    """The GUID in ``value``, or None; cached, as callers send the same GUIDs over and over."""
    text = value.strip().strip("{}")
    if len(text) == 36 and text.count("-") == 4:
        try:
            return uuid.UUID(text)
        except ValueError:
            return None
    return None
