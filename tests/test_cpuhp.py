"""QEMU's ACPI CPU hotplug block at 0x0CD8.

Rules from QEMU docs/specs/acpi_cpu_hotplug.rst and hw/acpi/cpu.c; access sequences from edk2
OvmfPkg/CpuHotplugSmm (CpuHotplug.c, QemuCpuhp.c) with QemuCpuHotplug.h offsets.
"""

from __future__ import annotations

import pytest

from smmemu.chipset.bus import PortBus
from smmemu.chipset.cpuhp import (
    CPU_HOTPLUG_BASE,
    CPU_HOTPLUG_SIZE,
    CpuHotplugBlock,
    CpuhpAccess,
    CpuhpCommand,
    CpuStatus,
    OstReport,
)

# Offsets and values as edk2's QemuCpuHotplug.h names them.
R_CMD_DATA2 = 0x0
W_CPU_SEL = 0x0
R_CPU_STAT = 0x4
W_CMD = 0x5
RW_CMD_DATA = 0x8
CMD_GET_PENDING = 0x0
CMD_GET_ARCH_ID = 0x3


def _board(possible: int = 8, present: int = 2, *, start_legacy: bool = True,
           ) -> tuple[PortBus, CpuHotplugBlock]:
    block = CpuHotplugBlock(possible, present, start_legacy=start_legacy)
    bus = PortBus()
    bus.attach(CPU_HOTPLUG_BASE, CPU_HOTPLUG_SIZE, block, "cpuhp")
    return bus, block


def _edk2_probe(bus: PortBus) -> int:
    """CpuHotplugEntry's sanity check: selector 0 twice, GET_PENDING, read data 2."""
    bus.write(CPU_HOTPLUG_BASE + W_CPU_SEL, 4, 0)
    bus.write(CPU_HOTPLUG_BASE + W_CPU_SEL, 4, 0)
    bus.write(CPU_HOTPLUG_BASE + W_CMD, 1, CMD_GET_PENDING)
    return bus.read(CPU_HOTPLUG_BASE + R_CMD_DATA2, 4)


def _modern(possible: int = 8, present: int = 2) -> tuple[PortBus, CpuHotplugBlock]:
    bus, block = _board(possible, present)
    assert _edk2_probe(bus) == 0
    return bus, block


def _select(bus: PortBus, cpu: int) -> None:
    bus.write(CPU_HOTPLUG_BASE + W_CPU_SEL, 4, cpu)


def _command(bus: PortBus, command: int) -> None:
    bus.write(CPU_HOTPLUG_BASE + W_CMD, 1, command)


def _data(bus: PortBus) -> int:
    return bus.read(CPU_HOTPLUG_BASE + RW_CMD_DATA, 4)


def _stat(bus: PortBus) -> int:
    return bus.read(CPU_HOTPLUG_BASE + R_CPU_STAT, 1)


def _collect_apic_ids(bus: PortBus, possible: int) -> tuple[list[int], list[int], list[int]]:
    """QemuCpuhpCollectApicIds: (plugged APIC IDs, to-unplug APIC IDs, to-unplug selectors)."""
    plugged: list[int] = []
    unplug_ids: list[int] = []
    unplug_sels: list[int] = []
    current = 0
    while current < possible:
        _select(bus, current)
        _command(bus, CMD_GET_PENDING)
        pending = _data(bus)
        if pending < current:
            break
        current = pending
        status = _stat(bus)
        if status & CpuStatus.INSERT:
            assert status & CpuStatus.ENABLED
            assert not status & CpuStatus.FW_REMOVE
            _command(bus, CMD_GET_ARCH_ID)
            plugged.append(_data(bus))
        elif status & CpuStatus.FW_REMOVE:
            assert status & CpuStatus.ENABLED
            _command(bus, CMD_GET_ARCH_ID)
            unplug_ids.append(_data(bus))
            unplug_sels.append(current)
        elif not status & CpuStatus.REMOVE:
            break
        current += 1
    return plugged, unplug_ids, unplug_sels


# -- legacy mode and the switch ----------------------------------------------------------


def test_edk2_modern_interface_probe_reads_data2_zero() -> None:
    bus, block = _board(possible=8, present=3)
    assert _edk2_probe(bus) == 0
    assert block.modern
    assert block.events == [
        CpuhpAccess(W_CPU_SEL, 4, True, 0, False),
        CpuhpAccess(W_CPU_SEL, 4, True, 0, True),
        CpuhpAccess(W_CMD, 1, True, CMD_GET_PENDING, True),
        CpuhpAccess(R_CMD_DATA2, 4, False, 0, True),
    ]


def test_legacy_mode_until_switched() -> None:
    bus, block = _board(possible=8, present=3)
    assert not block.modern
    # The legacy block is the present bitmap: data 2's offset reads the boot CPU's bit.
    bus.write(CPU_HOTPLUG_BASE + W_CMD, 1, CMD_GET_PENDING)
    assert bus.read(CPU_HOTPLUG_BASE + R_CMD_DATA2, 4) == 0b111
    assert not block.modern


def test_nonzero_write_to_legacy_bitmap_does_not_switch() -> None:
    bus, block = _board()
    bus.write(CPU_HOTPLUG_BASE + W_CPU_SEL, 4, 1)
    bus.write(CPU_HOTPLUG_BASE + 1, 1, 0)
    assert not block.modern
    assert bus.read(CPU_HOTPLUG_BASE, 4) == 0b11


def test_switch_needs_only_a_zero_byte_at_offset_0_and_the_write_is_consumed_by_legacy() -> None:
    bus, block = _board(possible=0x400, present=1)
    bus.write(CPU_HOTPLUG_BASE + W_CPU_SEL, 2, 0x0300)
    assert block.modern
    # The switching write did not reach the modern selector (it stays 0, not 0x300).
    assert block.selector == 0
    assert _data(bus) == 0


def test_legacy_bitmap_bit_position_is_the_apic_id() -> None:
    block = CpuHotplugBlock(possible_cpus=16, present=10)
    assert block.port_read(0, 1) == 0xFF
    assert block.port_read(1, 1) == 0x03
    assert block.port_read(0, 2) == 0x03FF
    assert block.port_read(28, 4) == 0


def test_plug_in_legacy_mode_sets_bitmap_bit_but_no_modern_event() -> None:
    bus, block = _board(possible=8, present=2)
    block.plug(5)
    assert bus.read(CPU_HOTPLUG_BASE, 1) == 0b0010_0011
    assert _edk2_probe(bus) == 0
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 0
    _select(bus, 5)
    assert _stat(bus) == CpuStatus.ENABLED


def test_start_legacy_false_starts_modern() -> None:
    bus, block = _board(start_legacy=False)
    assert block.modern
    _command(bus, CMD_GET_PENDING)
    assert bus.read(CPU_HOTPLUG_BASE + R_CMD_DATA2, 4) == 0


def test_apic_ids_beyond_the_legacy_bitmap_start_modern() -> None:
    assert not CpuHotplugBlock(300, 256).modern
    assert CpuHotplugBlock(300, 257).modern


# -- modern registers ---------------------------------------------------------------------


def test_get_pending_with_no_events_leaves_selector_unchanged() -> None:
    bus, block = _modern()
    _select(bus, 1)
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 1
    assert block.selector == 1
    assert _stat(bus) == CpuStatus.ENABLED


def test_plugged_cpu_is_found_by_get_pending_and_reports_its_apic_id() -> None:
    bus, block = _modern(possible=8, present=2)
    block.plug(3)
    _select(bus, 0)
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 3
    assert _stat(bus) == CpuStatus.ENABLED | CpuStatus.INSERT
    _command(bus, CMD_GET_ARCH_ID)
    assert _data(bus) == 3
    assert bus.read(CPU_HOTPLUG_BASE + R_CMD_DATA2, 4) == 0


def test_get_pending_wraps_around_below_the_selector() -> None:
    bus, block = _modern(possible=8, present=2)
    block.plug(2)
    _select(bus, 5)
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 2


def test_absent_cpu_reads_not_enabled() -> None:
    bus, _ = _modern(possible=8, present=2)
    _select(bus, 4)
    assert _stat(bus) == 0


def test_writing_insert_bit_clears_the_event() -> None:
    bus, block = _modern()
    block.plug(4)
    _select(bus, 4)
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.INSERT)
    assert _stat(bus) == CpuStatus.ENABLED
    _select(bus, 0)
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 0


def test_unplug_request_is_a_remove_event_and_writing_remove_bit_clears_it() -> None:
    bus, block = _modern(possible=8, present=4)
    block.unplug_request(2)
    _select(bus, 0)
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 2
    assert _stat(bus) == CpuStatus.ENABLED | CpuStatus.REMOVE
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.REMOVE)
    assert _stat(bus) == CpuStatus.ENABLED


def test_one_control_write_performs_only_its_first_action() -> None:
    bus, block = _modern(possible=8, present=4)
    block.unplug_request(3)
    block.plug(5)
    _select(bus, 5)
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.INSERT | CpuStatus.EJECT)
    assert block.is_present(5)
    _select(bus, 3)
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.INSERT | CpuStatus.REMOVE)
    assert _stat(bus) == CpuStatus.ENABLED | CpuStatus.REMOVE


def test_fw_remove_then_eject_removes_the_cpu() -> None:
    bus, block = _modern(possible=8, present=4)
    block.unplug_request(2)
    _select(bus, 2)
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.FW_REMOVE)
    assert _stat(bus) == CpuStatus.ENABLED | CpuStatus.REMOVE | CpuStatus.FW_REMOVE
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.EJECT)
    assert not block.is_present(2)
    assert _stat(bus) == CpuStatus.REMOVE
    assert block.ejected == [2]


def test_get_pending_finds_a_cpu_whose_only_event_is_fw_remove() -> None:
    bus, block = _modern(possible=8, present=4)
    block.unplug_request(2)
    _select(bus, 2)
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.REMOVE)
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.FW_REMOVE)
    _select(bus, 0)
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 2
    assert _stat(bus) == CpuStatus.ENABLED | CpuStatus.FW_REMOVE


def test_eject_and_fw_remove_ignore_the_boot_cpu_and_absent_cpus() -> None:
    bus, block = _modern(possible=8, present=2)
    for cpu in (0, 6):
        _select(bus, cpu)
        bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.FW_REMOVE)
        bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.EJECT)
    assert block.is_present(0)
    assert block.status(0) == CpuStatus.ENABLED
    assert block.status(6) == 0
    assert block.ejected == []


def test_unknown_command_is_ignored_and_previous_command_stays() -> None:
    bus, block = _modern(possible=8, present=2)
    block.plug(6)
    _select(bus, 1)
    _command(bus, CMD_GET_ARCH_ID)
    _command(bus, 0x7F)
    assert block.command == CpuhpCommand.GET_ARCH_ID
    assert block.selector == 1
    assert _data(bus) == 1


def test_invalid_selector_reads_zero_and_ignores_other_writes() -> None:
    bus, block = _modern(possible=4, present=2)
    block.plug(3)
    _select(bus, 4)
    assert _stat(bus) == 0
    assert _data(bus) == 0
    _command(bus, CMD_GET_ARCH_ID)
    assert block.command == CpuhpCommand.GET_PENDING
    assert block.selector == 4
    _select(bus, 0)
    _command(bus, CMD_GET_PENDING)
    assert _data(bus) == 3


def test_narrow_reads_return_low_bytes_and_only_the_register_offset_decodes() -> None:
    bus, block = _modern(possible=0x200, present=0x106)
    _select(bus, 0x105)
    _command(bus, CMD_GET_ARCH_ID)
    assert bus.read(CPU_HOTPLUG_BASE + RW_CMD_DATA, 2) == 0x105
    assert bus.read(CPU_HOTPLUG_BASE + RW_CMD_DATA, 1) == 0x05
    assert bus.read(CPU_HOTPLUG_BASE + RW_CMD_DATA + 1, 1) == 0
    assert block.selector == 0x105


def test_byte_write_to_selector_replaces_the_whole_register() -> None:
    bus, block = _modern(possible=0x200, present=2)
    _select(bus, 0x105)
    bus.write(CPU_HOTPLUG_BASE + W_CPU_SEL, 1, 0x02)
    assert block.selector == 0x02


def test_ost_status_write_is_reported_with_the_ost_event() -> None:
    bus, block = _modern(possible=8, present=4)
    _select(bus, 3)
    _command(bus, CpuhpCommand.OST_EVENT)
    bus.write(CPU_HOTPLUG_BASE + RW_CMD_DATA, 4, 0x103)
    _command(bus, CpuhpCommand.OST_STATUS)
    bus.write(CPU_HOTPLUG_BASE + RW_CMD_DATA, 4, 0x80)
    assert _data(bus) == 0
    assert block.ost_reports == [OstReport(3, 0x103, 0x80)]


def test_edk2_collect_apic_ids_finds_plugged_and_fw_remove_cpus_and_ignores_remove() -> None:
    bus, block = _modern(possible=8, present=5)
    block.plug(5)
    block.plug(7)
    block.unplug_request(2)
    block.unplug_request(3)
    _select(bus, 2)
    bus.write(CPU_HOTPLUG_BASE + R_CPU_STAT, 1, CpuStatus.FW_REMOVE)
    assert _collect_apic_ids(bus, 8) == ([5, 7], [2], [2])
    # The firmware never clears events: a second scan sees the same CPUs.
    assert _collect_apic_ids(bus, 8) == ([5, 7], [2], [2])


# -- access checks and host errors -----------------------------------------------------------


@pytest.mark.parametrize(("offset", "size"), [(12, 1), (10, 4), (-1, 1)])
def test_access_outside_the_modern_block_raises(offset: int, size: int) -> None:
    _, block = _modern()
    with pytest.raises(ValueError, match="outside the 12-byte modern block"):
        block.port_read(offset, size)
    with pytest.raises(ValueError, match="outside the 12-byte modern block"):
        block.port_write(offset, size, 0)


def test_legacy_block_is_32_bytes() -> None:
    block = CpuHotplugBlock(8, 2)
    assert block.port_read(28, 4) == 0
    with pytest.raises(ValueError, match="32-byte legacy block"):
        block.port_read(32, 1)


@pytest.mark.parametrize("size", [0, 3, 8])
def test_bad_access_size_raises(size: int) -> None:
    _, block = _modern()
    with pytest.raises(ValueError, match="access size"):
        block.port_read(0, size)
    with pytest.raises(ValueError, match="access size"):
        block.port_write(0, size, 0)


def test_unaligned_access_raises() -> None:
    _, block = _modern()
    with pytest.raises(ValueError, match="unaligned"):
        block.port_read(5, 2)
    with pytest.raises(ValueError, match="unaligned"):
        block.port_write(2, 4, 0)


def test_value_wider_than_the_access_raises() -> None:
    _, block = _modern()
    with pytest.raises(ValueError, match="does not fit"):
        block.port_write(W_CMD, 1, 0x100)


def test_host_plug_and_unplug_errors() -> None:
    block = CpuHotplugBlock(4, 2)
    with pytest.raises(ValueError, match="need the modern interface"):
        block.unplug_request(1)
    block.port_write(W_CPU_SEL, 4, 0)
    with pytest.raises(ValueError, match="already present"):
        block.plug(1)
    with pytest.raises(ValueError, match="not a possible CPU"):
        block.plug(4)
    with pytest.raises(ValueError, match="boot CPU"):
        block.unplug_request(0)
    with pytest.raises(ValueError, match="not present"):
        block.unplug_request(3)


@pytest.mark.parametrize(("possible", "present"), [(0, 0), (4, 0), (4, 5)])
def test_bad_cpu_counts_raise(possible: int, present: int) -> None:
    with pytest.raises(ValueError, match=r"possible_cpus|present"):
        CpuHotplugBlock(possible, present)
