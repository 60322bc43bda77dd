"""QEMU's ACPI CPU hotplug register block on q35 (I/O 0x0CD8), legacy and modern.

Sources of the facts (read for behaviour only; nothing here is copied):

* QEMU ``docs/specs/acpi_cpu_hotplug.rst`` (formerly ``.txt``): the legacy
  present bitmap, the modern register layout (12 bytes, little-endian), the
  status/control bits, the command numbers and the "Detecting and enabling
  modern CPU hotplug interface" sequence.
* QEMU ``hw/acpi/cpu.c`` (``cpu_hotplug_rd``/``cpu_hotplug_wr``, the plug and
  unplug-request callbacks) for what each access does exactly, and
  ``hw/acpi/cpu_hotplug.c`` for the legacy block (32-byte bitmap, byte-wide
  implementation, a write of 0 at its first byte switches to modern mode).
* QEMU ``hw/acpi/ich9.c``: ICH9 starts in legacy mode (``cpu-hotplug-legacy``)
  and refuses CPU unplug requests while it is still legacy; a CPU plugged in
  legacy mode only sets its bitmap bit. QEMU's memory core (``valid`` 1..4
  bytes, unaligned accesses rejected) for the access checks.
* edk2 ``OvmfPkg/Include/IndustryStandard/QemuCpuHotplug.h`` (offsets, status
  bits, ``QEMU_CPUHP_CMD_GET_PENDING``/``GET_ARCH_ID``) and
  ``OvmfPkg/CpuHotplugSmm`` (``QemuCpuhp.c``, ``CpuHotplug.c``): the accesses
  the firmware makes (32-bit selector/data/data2, 8-bit command/status).

Modern registers (offsets from the block base):

* 0x0 read: command data 2 -- 0 after GET_PENDING, the APIC ID's high half
  after GET_ARCH_ID, 0 otherwise. 0x0 write: CPU selector (the whole
  register takes the written value, whatever the access size).
* 0x4 read: status of the selected CPU (:class:`CpuStatus`). 0x4 write: one
  action, the first that applies of: bit 1 clears the insert event, bit 2
  clears the remove event, bit 3 ejects the CPU, bit 4 asks firmware to eject.
  Eject and fw-remove do nothing for an absent CPU or CPU 0 (QEMU's
  ``first_cpu``); eject also clears fw-remove.
* 0x5 write: command (:class:`CpuhpCommand`). Values >= 4 are ignored and the
  previous command stays in force. GET_PENDING scans from the selector
  (inclusive, wrapping around) for a CPU with an insert, remove or fw-remove
  event and selects it; if there is none the selector does not change.
* 0x8 read: command data -- the selector after GET_PENDING, the APIC ID's low
  half after GET_ARCH_ID, 0 otherwise. 0x8 write: the OST event (command 1)
  or OST status (command 2, which QEMU reports to its management interface).
* A selector >= the number of possible CPUs makes every read return 0 and
  every write other than a selector write a no-op.
* Every other offset reads 0 and ignores writes. A read narrower than the
  register returns its low bytes; only the exact register offset decodes.

Legacy mode (the default: QEMU versions with ``cpu-hotplug-legacy`` start q35
in it; the latest spec, after QEMU dropped the legacy interface, starts in
modern mode, which ``start_legacy=False`` selects): the block is a 32-byte
read-only bitmap of present CPUs, bit = APIC ID (0xCD8..0xCF7). QEMU implements it a
byte at a time, so any write whose byte at offset 0 is 0 switches the block to
modern mode; that access itself has no modern effect, which is why the spec's
probe writes the selector twice. Reads of the bitmap have bit 0 (the boot CPU)
set, so the probe's data-2 read is non-zero unless the switch happened.

Left out: the SCI/GPE.2 notification on plug and unplug requests, QMP
events (OST reports are only recorded), reset (QEMU keeps both the mode and
the selector across reset, so there is nothing to do), SMI feature
negotiation gating hot(un)plug, and legacy-mode plugging of APIC IDs above 255
(QEMU switches to modern mode mid-plug; here it raises).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["CPU_HOTPLUG_BASE", "CPU_HOTPLUG_SIZE", "LEGACY_BITMAP_SIZE", "CpuHotplugBlock",
           "CpuStatus", "CpuhpAccess", "CpuhpCommand", "OstReport"]

CPU_HOTPLUG_BASE = 0x0CD8
"""ICH9_CPU_HOTPLUG_BASE: where q35 decodes the block."""
CPU_HOTPLUG_SIZE = 12
"""ACPI_CPU_HOTPLUG_REG_LEN: the modern block's length."""
LEGACY_BITMAP_SIZE = 32
"""ACPI_GPE_PROC_LEN: the legacy present bitmap's length (APIC IDs 0..255)."""

CMD_DATA2_OFFSET = 0x0
CPU_SELECTOR_OFFSET = 0x0
CPU_STATUS_OFFSET = 0x4
COMMAND_OFFSET = 0x5
CMD_DATA_OFFSET = 0x8

_ACCESS_SIZES = (1, 2, 4)
_COMMAND_LIMIT = 4
"""CPHP_CMD_MAX: command values at or above it are ignored."""
_BOOT_CPU = 0


def _apic_id(cpu: int) -> int:
    """The architecture CPU ID (APIC ID) of possible CPU ``cpu``: the model numbers them alike."""
    return cpu


class CpuStatus(enum.IntFlag):
    """Status (read) and control (write) bits at offset 0x4."""

    ENABLED = 1 << 0
    INSERT = 1 << 1
    REMOVE = 1 << 2
    EJECT = 1 << 3
    FW_REMOVE = 1 << 4


class CpuhpCommand(enum.IntEnum):
    """Values written to the command register at offset 0x5."""

    GET_PENDING = 0
    OST_EVENT = 1
    OST_STATUS = 2
    GET_ARCH_ID = 3


@dataclass(frozen=True, slots=True)
class CpuhpAccess:
    """One guest access, for reports: the value read or written, and the mode that decoded it."""

    offset: int
    size: int
    is_write: bool
    value: int
    modern: bool


@dataclass(frozen=True, slots=True)
class OstReport:
    """An OST status write (QEMU sends it to management as ACPI_DEVICE_OST)."""

    cpu: int
    event: int
    status: int


@dataclass(slots=True)
class _Slot:
    """One possible CPU as the modern interface sees it."""

    present: bool
    inserting: bool = False
    removing: bool = False
    fw_remove: bool = False
    ost_event: int = 0
    ost_status: int = 0


class CpuHotplugBlock:
    """The CPU hotplug register block; the APIC ID of possible CPU ``i`` is ``i``."""

    def __init__(self, possible_cpus: int, present: int, *, start_legacy: bool = True) -> None:
        if possible_cpus < 1:
            raise ValueError(f"possible_cpus must be at least 1, not {possible_cpus}")
        if not 1 <= present <= possible_cpus:
            raise ValueError(f"present must be in 1..{possible_cpus} (CPU 0 boots), not {present}")
        self._slots = [_Slot(present=cpu < present) for cpu in range(possible_cpus)]
        # An APIC ID that does not fit the legacy bitmap makes QEMU give up on
        # legacy mode while it builds the bitmap.
        self._modern = not start_legacy or present > 8 * LEGACY_BITMAP_SIZE
        self.selector = 0
        self.command = int(CpuhpCommand.GET_PENDING)
        self.events: list[CpuhpAccess] = []
        self.ejected: list[int] = []
        self.ost_reports: list[OstReport] = []

    # -- state ------------------------------------------------------------------
    @property
    def modern(self) -> bool:
        """True once the block decodes the modern registers."""
        return self._modern

    @property
    def possible_cpus(self) -> int:
        """The number of possible CPUs (valid selectors are below it)."""
        return len(self._slots)

    def is_present(self, cpu: int) -> bool:
        """Whether CPU ``cpu`` is plugged in."""
        return self._slot(cpu).present

    def status(self, cpu: int) -> CpuStatus:
        """The status byte the guest would read with ``cpu`` selected (modern view)."""
        slot = self._slot(cpu)
        flags = CpuStatus(0)
        if slot.present:
            flags |= CpuStatus.ENABLED
        if slot.inserting:
            flags |= CpuStatus.INSERT
        if slot.removing:
            flags |= CpuStatus.REMOVE
        if slot.fw_remove:
            flags |= CpuStatus.FW_REMOVE
        return flags

    def _slot(self, cpu: int) -> _Slot:
        if not 0 <= cpu < len(self._slots):
            raise ValueError(f"CPU {cpu} is not a possible CPU (0..{len(self._slots) - 1})")
        return self._slots[cpu]

    # -- host side -------------------------------------------------------------------
    def plug(self, cpu: int) -> None:
        """Hot-add CPU ``cpu`` (QEMU ``device_add``).

        In modern mode the CPU gets a pending insert event; in legacy mode only
        its bit in the present bitmap is set.
        """
        slot = self._slot(cpu)
        if slot.present:
            raise ValueError(f"CPU {cpu} is already present")
        if not self._modern and cpu >= 8 * LEGACY_BITMAP_SIZE:
            raise ValueError(f"CPU {cpu} does not fit the legacy bitmap (not modelled)")
        slot.present = True
        if self._modern:
            slot.inserting = True

    def unplug_request(self, cpu: int) -> None:
        """Ask the guest to remove CPU ``cpu`` (QEMU ``device_del``): a pending remove event."""
        slot = self._slot(cpu)
        if not self._modern:
            raise ValueError("CPU unplug requests need the modern interface (QEMU refuses them)")
        if cpu == _BOOT_CPU:
            raise ValueError("the boot CPU cannot be unplugged")
        if not slot.present:
            raise ValueError(f"CPU {cpu} is not present")
        slot.removing = True

    # -- port interface --------------------------------------------------------------
    def _check(self, offset: int, size: int) -> None:
        window = CPU_HOTPLUG_SIZE if self._modern else LEGACY_BITMAP_SIZE
        mode = "modern" if self._modern else "legacy"
        if size not in _ACCESS_SIZES:
            raise ValueError(f"CPU hotplug block: access size {size} (must be 1, 2 or 4)")
        if offset < 0 or offset + size > window:
            raise ValueError(f"CPU hotplug block: {size}-byte access at offset {offset:#x} "
                             f"is outside the {window}-byte {mode} block")
        if offset % size:
            raise ValueError(f"CPU hotplug block: unaligned {size}-byte access at offset "
                             f"{offset:#x} (QEMU rejects it)")

    def port_read(self, offset: int, size: int) -> int:
        """IN from the block."""
        self._check(offset, size)
        if self._modern:
            value = self._modern_read(offset) & ((1 << (8 * size)) - 1)
        else:
            value = int.from_bytes(self._legacy_bitmap()[offset:offset + size], "little")
        self.events.append(CpuhpAccess(offset, size, False, value, self._modern))
        return value

    def port_write(self, offset: int, size: int, value: int) -> None:
        """OUT to the block."""
        self._check(offset, size)
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"CPU hotplug block: value {value:#x} does not fit {size} byte(s)")
        self.events.append(CpuhpAccess(offset, size, True, value, self._modern))
        if self._modern:
            self._modern_write(offset, value)
        elif offset == 0 and (value & 0xFF) == 0:
            self._modern = True

    # -- legacy ------------------------------------------------------------------------
    def _legacy_bitmap(self) -> bytes:
        bitmap = bytearray(LEGACY_BITMAP_SIZE)
        for cpu, slot in enumerate(self._slots[:8 * LEGACY_BITMAP_SIZE]):
            if slot.present:
                bitmap[cpu // 8] |= 1 << (cpu % 8)
        return bytes(bitmap)

    # -- modern ------------------------------------------------------------------------
    def _selected(self) -> _Slot | None:
        if self.selector >= len(self._slots):
            return None
        return self._slots[self.selector]

    def _modern_read(self, offset: int) -> int:
        slot = self._selected()
        if slot is None:
            return 0
        if offset == CPU_STATUS_OFFSET:
            return int(self.status(self.selector))
        if offset == CMD_DATA_OFFSET:
            if self.command == CpuhpCommand.GET_PENDING:
                return self.selector
            if self.command == CpuhpCommand.GET_ARCH_ID:
                return _apic_id(self.selector) & 0xFFFF_FFFF
            return 0
        if offset == CMD_DATA2_OFFSET and self.command == CpuhpCommand.GET_ARCH_ID:
            return _apic_id(self.selector) >> 32
        return 0

    def _modern_write(self, offset: int, value: int) -> None:
        if offset == CPU_SELECTOR_OFFSET:
            self.selector = value
            return
        slot = self._selected()
        if slot is None:
            return
        if offset == CPU_STATUS_OFFSET:
            self._control(slot, value)
        elif offset == COMMAND_OFFSET:
            if value < _COMMAND_LIMIT:
                self.command = value
                if value == CpuhpCommand.GET_PENDING:
                    self._select_pending()
        elif offset == CMD_DATA_OFFSET:
            if self.command == CpuhpCommand.OST_EVENT:
                slot.ost_event = value
            elif self.command == CpuhpCommand.OST_STATUS:
                slot.ost_status = value
                self.ost_reports.append(OstReport(self.selector, slot.ost_event, value))

    def _control(self, slot: _Slot, value: int) -> None:
        cpu = self.selector
        if value & CpuStatus.INSERT:
            slot.inserting = False
        elif value & CpuStatus.REMOVE:
            slot.removing = False
        elif value & CpuStatus.EJECT:
            if slot.present and cpu != _BOOT_CPU:
                slot.present = False
                slot.fw_remove = False
                self.ejected.append(cpu)
        elif value & CpuStatus.FW_REMOVE and slot.present and cpu != _BOOT_CPU:
            slot.fw_remove = True

    def _select_pending(self) -> None:
        count = len(self._slots)
        for step in range(count):
            cpu = (self.selector + step) % count
            slot = self._slots[cpu]
            if slot.inserting or slot.removing or slot.fw_remove:
                self.selector = cpu
                return
