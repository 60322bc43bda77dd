"""User-declared stub protocols: a GUID whose interface is a table of functions returning a status.

Real drivers often locate a protocol smmemu does not model (a platform's own, or a DXE one)
and stop if it is missing. A stub lets such a driver go on: the interface is ``count``
function pointers, each a host thunk that returns the declared status and records a
``stub-call`` finding naming the function's index and the caller (image+offset). Nothing is
written through the callee's arguments, so a stub suits functions whose outputs the driver
checks by status only; anything more needs a real model.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from smmemu.cpu import Cpu
from smmemu.errors import ConfigError
from smmemu.services.protocols import ProtocolDatabase
from smmemu.services.runtime import MmRuntime
from smmemu.uefi.guids import WELL_KNOWN, parse_guid
from smmemu.uefi.status import EfiStatus

__all__ = ["MAX_FUNCTIONS", "StubProtocol", "install_stub", "parse_stub"]

MAX_FUNCTIONS = 256
_ENVIRONMENTS = ("mm", "dxe", "both")


@dataclass(frozen=True, slots=True)
class StubProtocol:
    """A protocol to install with ``count`` functions that all return ``status``."""

    guid: uuid.UUID
    count: int = 16
    status: int = EfiStatus.UNSUPPORTED
    environment: str = "both"
    """``mm`` (MmLocateProtocol), ``dxe`` (gBS->LocateProtocol) or ``both``."""
    name: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_FUNCTIONS:
            raise ConfigError(f"a stub protocol has 1 to {MAX_FUNCTIONS} functions, not "
                              f"{self.count}", field="stub", value=str(self.guid))
        if self.environment not in _ENVIRONMENTS:
            raise ConfigError(f"stub environment {self.environment!r} is not one of "
                              f"{', '.join(_ENVIRONMENTS)}", field="stub",
                              value=str(self.guid))
        if not 0 <= self.status < 1 << 64:
            raise ConfigError(f"stub status {self.status:#x} is not a 64-bit EFI_STATUS",
                              field="stub", value=str(self.guid))

    @property
    def label(self) -> str:
        """The name reports use: the given name, a well-known one, or the GUID."""
        return self.name or WELL_KNOWN.get(self.guid) or str(self.guid)


def parse_stub(text: str) -> StubProtocol:
    """``GUID[:COUNT[:STATUS]]`` (COUNT and STATUS decimal or 0x hex), as the CLI takes it.

    Raises:
        ConfigError: a malformed declaration.
        GuidError: a malformed GUID.
    """
    parts = text.split(":")
    if len(parts) > 3:
        raise ConfigError(f"stub {text!r}: expected GUID[:COUNT[:STATUS]]", field="stub",
                          value=text)
    guid = parse_guid(parts[0])
    try:
        numbers = [int(part, 0) for part in parts[1:]]
    except ValueError:
        raise ConfigError(f"stub {text!r}: COUNT and STATUS are numbers", field="stub",
                          value=text) from None
    count = numbers[0] if numbers else 16
    status = numbers[1] if len(numbers) > 1 else int(EfiStatus.UNSUPPORTED)
    return StubProtocol(guid, count, status)


def install_stub(mm: MmRuntime, dxe_db: ProtocolDatabase, stub: StubProtocol) -> int:
    """Build the stub's interface in SMRAM and install it; returns the interface address."""
    interface = mm.pool(8 * stub.count)
    for index in range(stub.count):
        mm.memory.put_u64(interface + 8 * index,
                          mm.thunks.add(f"stub {stub.label}[{index}]", _function(mm, stub,
                                                                                  index)))
    if stub.environment in ("mm", "both"):
        mm.db.install(mm.pool(16), stub.guid, interface)
    if stub.environment in ("dxe", "both"):
        dxe_db.install(mm.pool(16), stub.guid, interface)
    return interface


def _function(mm: MmRuntime, stub: StubProtocol, index: int) -> Callable[[Cpu], int]:
    def run(_cpu: Cpu) -> int:
        mm.report("stub-call", f"{stub.label} function {index} called from "
                               f"{mm.where(mm.caller)}: returned {stub.status:#x}")
        return stub.status

    return run
