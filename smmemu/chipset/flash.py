"""The platform flash below 4 GiB: QEMU's pflash0 (code) and pflash1 (variable store).

QEMU's q35 and pc machines (hw/i386/pc_sysfw.c) map pflash0, the OVMF_CODE image, so that
it ends at 4 GiB and pflash1, the OVMF_VARS image, directly below it. OVMF is built for
that layout: with the 4 MiB images, the variable store starts at 0xFFC00000
(PcdOvmfFdBaseAddress) and FvbServicesSmm and VariableSmm read and program it there.

:class:`FlashWindow` decodes one MMIO window over both devices. The window is 2 MiB
aligned, because the MM core maps it with 2 MiB pages; bytes of the window that no device
covers read as all-ones and ignore writes, like unassigned MMIO on QEMU. An access a device
rejects (a size or offset the model does not support) is recorded in :attr:`errors` and
reads as all-ones, so a driver's bug never stops the emulator from the inside of an MMIO
callback.
"""

from __future__ import annotations

from dataclasses import dataclass

from smmemu.chipset.pflash import FlashAccessError, PflashCfi01
from smmemu.errors import ConfigError

__all__ = ["FlashAccessRecord", "FlashWindow", "build_flash"]

FOUR_GIB = 1 << 32
WINDOW_ALIGN = 0x20_0000


@dataclass(frozen=True, slots=True)
class FlashAccessRecord:
    """An access the flash refused, for the run report."""

    address: int
    size: int
    is_write: bool
    reason: str


class FlashWindow:
    """[base, 4 GiB) decoded to the flash devices inside it."""

    def __init__(self, devices: list[PflashCfi01]) -> None:
        if not devices:
            raise ConfigError("a flash window needs at least one device", field="flash",
                              value=0)
        lowest = min(device.base for device in devices)
        self.base = lowest & ~(WINDOW_ALIGN - 1)
        self.size = FOUR_GIB - self.base
        self.devices = sorted(devices, key=lambda device: device.base)
        self.errors: list[FlashAccessRecord] = []

    def _find(self, address: int) -> PflashCfi01 | None:
        for device in self.devices:
            if device.base <= address < device.base + device.size:
                return device
        return None

    def read(self, offset: int, size: int) -> int:
        """An MMIO read at ``offset`` from :attr:`base`."""
        address = self.base + offset
        device = self._find(address)
        if device is None:
            return (1 << (8 * size)) - 1
        try:
            return device.read(address - device.base, size)
        except FlashAccessError as err:
            self.errors.append(FlashAccessRecord(address, size, False, str(err)))
            return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        """An MMIO write at ``offset`` from :attr:`base`."""
        address = self.base + offset
        device = self._find(address)
        if device is None:
            return
        try:
            device.write(address - device.base, size, value & ((1 << (8 * size)) - 1))
        except FlashAccessError as err:
            self.errors.append(FlashAccessRecord(address, size, True, str(err)))


def build_flash(code: bytes, varstore: bytes | None) -> FlashWindow:
    """pflash0 = ``code`` (read-only) ending at 4 GiB, pflash1 = ``varstore`` below it.

    Raises:
        ConfigError: an image whose size the flash model cannot take, or a layout that
            does not fit below 4 GiB.
    """
    if len(code) + len(varstore or b"") > 0x1000_0000:
        raise ConfigError(f"flash images of {len(code) + len(varstore or b''):#x} bytes do "
                          "not fit the 256 MiB below 4 GiB", field="flash", value=len(code))
    code_base = FOUR_GIB - len(code)
    devices = [PflashCfi01(code, base=code_base, read_only=True, name="pflash0 (code)")]
    if varstore is not None:
        devices.append(PflashCfi01(varstore, base=code_base - len(varstore), read_only=False,
                                   name="pflash1 (variable store)"))
    return FlashWindow(devices)
