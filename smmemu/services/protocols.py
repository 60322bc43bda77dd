"""The protocol database behind MmInstallProtocolInterface, MmLocateProtocol and friends.

Semantics follow the UEFI specification's protocol handler services as the
PI specification (Vol. 4, MM services) reuses them: a handle carries at most
one interface per protocol GUID; installing on a NULL handle creates one;
registered notifications see each protocol installed after their
registration, once. Handles and registrations are SMRAM addresses handed out
by the caller, so the guest can pass them around as pointers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

__all__ = ["Notification", "ProtocolDatabase", "ProtocolRecord"]


@dataclass(slots=True)
class ProtocolRecord:
    """One interface on one handle."""

    handle: int
    guid: uuid.UUID
    interface: int
    serial: int
    installer: int = 0


@dataclass(slots=True)
class Notification:
    """A RegisterProtocolNotify registration."""

    registration: int
    guid: uuid.UUID
    function: int
    seen: int = 0
    """Serial of the last record LocateProtocol(Registration) returned."""


@dataclass(slots=True)
class ProtocolDatabase:
    """Handles, interfaces and notifications of one MM (or DXE) environment."""

    records: list[ProtocolRecord] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)
    _serial: int = 0

    def install(self, handle: int, guid: uuid.UUID, interface: int, installer: int = 0) -> bool:
        """Install; False if ``handle`` already has ``guid``."""
        if any(r.handle == handle and r.guid == guid for r in self.records):
            return False
        if handle not in self.handles:
            self.handles.append(handle)
        self._serial += 1
        self.records.append(ProtocolRecord(handle, guid, interface, self._serial, installer))
        return True

    def uninstall(self, handle: int, guid: uuid.UUID, interface: int) -> bool:
        """Remove; False if not installed with that interface."""
        for record in self.records:
            if (record.handle, record.guid, record.interface) == (handle, guid, interface):
                self.records.remove(record)
                if not any(r.handle == handle for r in self.records):
                    self.handles.remove(handle)
                return True
        return False

    def interface(self, handle: int, guid: uuid.UUID) -> int | None:
        """HandleProtocol."""
        return next((r.interface for r in self.records
                     if r.handle == handle and r.guid == guid), None)

    def locate(self, guid: uuid.UUID) -> ProtocolRecord | None:
        """The first interface installed for ``guid``."""
        return next((r for r in self.records if r.guid == guid), None)

    def locate_after(self, notification: Notification) -> ProtocolRecord | None:
        """LocateProtocol with a Registration: the next record installed since the last one."""
        for record in self.records:
            if record.guid == notification.guid and record.serial > notification.seen:
                notification.seen = record.serial
                return record
        return None

    def handles_with(self, guid: uuid.UUID) -> list[int]:
        """LocateHandle ByProtocol."""
        return [r.handle for r in self.records if r.guid == guid]

    def notify(self, registration: int, guid: uuid.UUID, function: int) -> Notification:
        """RegisterProtocolNotify; records installed from now on will be reported."""
        note = Notification(registration, guid, function, self._serial)
        self.notifications.append(note)
        return note

    def forget(self, registration: int) -> bool:
        """Cancel a notification (RegisterProtocolNotify with a NULL function)."""
        for note in self.notifications:
            if note.registration == registration:
                self.notifications.remove(note)
                return True
        return False

    def notifications_for(self, guid: uuid.UUID) -> list[Notification]:
        """The notifications to fire when ``guid`` is installed."""
        return [n for n in self.notifications if n.guid == guid]
