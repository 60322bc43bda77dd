"""Dispatching every MM driver of a firmware image in dependency order.

The rule is the PI dispatcher's (PI 1.8 Vol. 2 ch. 10, applied to MM drivers
by Vol. 4): repeated passes over the drivers in firmware-volume order, each
running every driver whose dependency expression is TRUE against the
protocols installed so far (in the MM and the DXE protocol databases), until
a pass runs nothing. A driver without a depex is satisfied. BEFORE and AFTER
expressions count as TRUE; their ordering is not applied here.

The SMM core (PiSmmCore, FFS type SMM_CORE) and the SMM CPU driver
(PiSmmCpuDxeSmm) are not loaded: smmemu's MM core and CPU model take their
place, and both are listed as skipped with that reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from smmemu.errors import ConfigError, ImageError
from smmemu.loader.depex import Depex
from smmemu.loader.errors import LoaderError
from smmemu.loader.fv import FirmwareDriver, scan_firmware
from smmemu.services.images import LoadedImage
from smmemu.uefi.guids import WELL_KNOWN

__all__ = ["FirmwareEntry", "FirmwareReport", "dispatch_firmware"]

SMM_CPU_DRIVER_GUID = uuid.UUID("a3ff0ef5-0c28-42f5-b544-8c7de1e80014")
_CORE_TYPES = {0x0D, 0x0F}
_STANDALONE_TYPES = {0x0E, 0x0F}


@dataclass(slots=True)
class FirmwareEntry:
    """One MM driver found in the firmware, and what became of it."""

    name: str
    guid: uuid.UUID
    ffs_type: int
    state: str
    """``dispatched``, ``failed`` (no return), ``blocked`` (depex never TRUE), ``skipped``,
    ``unloadable``."""
    reason: str = ""
    image: LoadedImage | None = None
    depex: str | None = None

    @property
    def status(self) -> int | None:
        """The entry point's EFI_STATUS, when it returned."""
        return None if self.image is None else self.image.status


@dataclass(slots=True)
class FirmwareReport:
    """All MM drivers of one firmware image."""

    entries: list[FirmwareEntry]

    def by_name(self, name: str) -> FirmwareEntry:
        """The entry called ``name``.

        Raises:
            KeyError: no such driver.
        """
        return next(e for e in self.entries if e.name == name)


LoadFn = Callable[[bytes, str, bool], LoadedImage]
InstalledFn = Callable[[], set[uuid.UUID]]


def dispatch_firmware(data: bytes, load: LoadFn, installed: InstalledFn) -> FirmwareReport:
    """Find the MM drivers in ``data`` and run them in dependency order.

    ``load(pe, name, standalone)`` places a driver and runs its entry point;
    ``installed()`` gives the protocol GUIDs installed so far.

    Raises:
        ImageError: ``data`` is not a firmware image smmemu can read.
    """
    try:
        drivers = scan_firmware(data)
    except LoaderError as err:
        raise ImageError(f"cannot read the firmware image: {err}") from err
    entries: list[FirmwareEntry] = []
    pending: list[tuple[FirmwareDriver, FirmwareEntry, Depex | None]] = []
    for driver in drivers:
        name = driver.ui_name or str(driver.guid)
        entry = FirmwareEntry(name, driver.guid, driver.ffs_type, "blocked")
        entries.append(entry)
        if driver.ffs_type in _CORE_TYPES or driver.guid == SMM_CPU_DRIVER_GUID:
            entry.state = "skipped"
            entry.reason = "smmemu's MM core and CPU model take its place"
            continue
        try:
            depex = driver.dependency
        except LoaderError as err:
            entry.reason = f"malformed depex: {err}"
            continue
        entry.depex = None if depex is None else depex.describe()
        pending.append((driver, entry, depex))
    progressed = True
    while pending and progressed:
        progressed = False
        for item in list(pending):
            driver, entry, depex = item
            if depex is not None and not depex.evaluate(installed()):
                continue
            pending.remove(item)
            progressed = True
            try:
                image = load(driver.pe, entry.name, driver.ffs_type in _STANDALONE_TYPES)
            except (ImageError, ConfigError) as err:  # malformed, or no room left in SMRAM
                entry.state, entry.reason = "unloadable", str(err)
                continue
            entry.image = image
            if image.status is None:
                entry.state = "failed"
                entry.reason = image.error or "the entry point did not return"
            else:
                entry.state = "dispatched"
    have = installed()
    for _driver, entry, depex in pending:
        missing = sorted(depex.guids - have, key=str) if depex is not None else []
        names = ", ".join(f"{guid} ({WELL_KNOWN[guid]})" if guid in WELL_KNOWN else str(guid)
                          for guid in missing)
        entry.reason = (f"dependency expression never TRUE; not installed: {names}" if names
                        else f"dependency expression never TRUE: {entry.depex}")
    return FirmwareReport(entries)
