"""Debian's OVMF SMM build (OVMF_CODE_4M.secboot.fd) dispatched from its firmware volumes.

The image comes from the ``ovmf`` package, which .ci/run installs; without it these tests skip.
The LockBox requests follow MdeModulePkg's EFI_SMM_LOCK_BOX_PARAMETER_* layouts
(Include/Guid/SmmLockBox.h): a 16-byte header {UINT32 Command, UINT32 DataLength,
UINT64 ReturnStatus} followed by the command's fields.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from smmemu import Machine, StopReason
from smmemu.uefi.guids import END_OF_DXE_GUID, MM_READY_TO_LOCK_GUID
from smmemu.uefi.status import EfiStatus

OVMF = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
pytestmark = pytest.mark.skipif(not OVMF.exists(), reason=f"{OVMF} not installed (apt ovmf)")

LOCKBOX_GUID = uuid.UUID("2a3cfebd-27e8-4d0a-8b79-d688c2a3e1c0")  # gEfiSmmLockBoxCommunicationGuid
CPU_IO2_GUID = uuid.UUID("3242a9d8-ce70-4aa0-955d-5e7b140de4d2")  # gEfiSmmCpuIo2ProtocolGuid
SAVE, RESTORE, SET_ATTRIBUTES = 1, 3, 4
LOCK_BOX_ATTRIBUTE_RESTORE_IN_PLACE = 1
BOX = uuid.UUID("11112222-3333-4444-5555-666677778888")
SECRET = b"S3 resume boot script!"
SOURCE = 0x0030_0000  # conventional DRAM outside SMRAM
# After ReadyToLock, SmmMemLib accepts only runtime/reserved memory: the user comm buffer
# pages are EfiRuntimeServicesData in smmemu's DXE memory map.
RUNTIME_TARGET = 0x0012_2000


def save(box: uuid.UUID, buffer: int, length: int) -> bytes:
    return struct.pack("<IIQ", SAVE, 48, 0) + box.bytes_le + struct.pack("<QQ", buffer, length)


def restore(box: uuid.UUID, buffer: int, length: int) -> bytes:
    return struct.pack("<IIQ", RESTORE, 48, 0) + box.bytes_le + struct.pack("<QQ", buffer, length)


def set_attributes(box: uuid.UUID, attributes: int) -> bytes:
    return struct.pack("<IIQ", SET_ATTRIBUTES, 40, 0) + box.bytes_le + struct.pack("<Q",
                                                                                  attributes)


def return_status(data: bytes) -> int:
    return int(struct.unpack_from("<Q", data, 8)[0])


@pytest.fixture
def ovmf() -> Machine:
    return Machine(firmware=OVMF)


def test_firmware_report_lists_every_smm_driver_with_its_fate(ovmf: Machine) -> None:
    report = ovmf.firmware_report
    assert report is not None
    states = {entry.name: (entry.state, entry.status) for entry in report.entries}

    assert states == {
        "PiSmmCore": ("skipped", None), "PiSmmCpuDxeSmm": ("skipped", None),
        "CpuIo2Smm": ("dispatched", EfiStatus.SUCCESS),
        "SmmLockBox": ("dispatched", EfiStatus.SUCCESS),
        "VariableSmm": ("dispatched", EfiStatus.SUCCESS),
        # Without a variable store flash the window reads as all-ones: QemuFlashDetected
        # sees ROM and the FVB driver refuses, so FTW's depex is never satisfied.
        "FvbServicesSmm": ("dispatched", EfiStatus.WRITE_PROTECTED),
        "SmmFaultTolerantWriteDxe": ("blocked", None),
        # Without "SMRAM at default SMBASE" (PcdQ35SmramAtDefaultSmbase FALSE) CpuHotplugSmm
        # refuses to run, as on a QEMU machine type older than 5.0.
        "CpuHotplugSmm": ("dispatched", EfiStatus.UNSUPPORTED),
    }
    blocked = report.by_name("SmmFaultTolerantWriteDxe").reason
    assert "gEfiSmmFirmwareVolumeBlockProtocolGuid" in blocked


@pytest.mark.skipif(not VARS.exists(), reason=f"{VARS} not installed (apt ovmf)")
def test_with_a_variable_store_flash_every_driver_runs_its_entry_point() -> None:
    machine = Machine(firmware=OVMF, varstore=VARS)
    report = machine.firmware_report
    assert report is not None

    statuses = {entry.name: entry.status for entry in report.entries
                if entry.state != "skipped"}

    assert statuses == {
        "CpuIo2Smm": EfiStatus.SUCCESS, "SmmLockBox": EfiStatus.SUCCESS,
        "FvbServicesSmm": EfiStatus.SUCCESS, "SmmFaultTolerantWriteDxe": EfiStatus.SUCCESS,
        "VariableSmm": EfiStatus.SUCCESS, "CpuHotplugSmm": EfiStatus.UNSUPPORTED,
    }
    varstore = machine.varstore
    assert varstore is not None
    assert len(varstore) == VARS.stat().st_size
    assert varstore[:0x48] == VARS.read_bytes()[:0x48]  # the FV header stays intact


def test_fault_in_a_driver_entry_point_is_reported_not_a_crash() -> None:
    # An image whose size is no whole number of flash blocks gets no flash window, so
    # 0xFFC00000 is unmapped in SMM: FvbServicesSmm's first read there faults.
    machine = Machine(firmware=OVMF.read_bytes() + b"\0")
    report = machine.firmware_report
    assert report is not None
    assert machine.flash is None

    for name in ("FvbServicesSmm", "VariableSmm"):
        entry = report.by_name(name)
        assert entry.state == "failed"
        assert entry.reason.startswith(f"#PF at {name}+0x")
        assert "accessing 0xffc00000 (the flash device" in entry.reason


def test_cpu_io2_smm_installs_its_protocol(ovmf: Machine) -> None:
    record = ovmf.services.db.locate(CPU_IO2_GUID)

    assert record is not None
    assert (ovmf.symbolize(record.installer) or "").startswith("CpuIo2Smm+0x")


def test_lockbox_save_then_restore_returns_the_saved_bytes(ovmf: Machine) -> None:
    ovmf.write_physical(SOURCE, SECRET)
    saved = ovmf.communicate(LOCKBOX_GUID, save(BOX, SOURCE, len(SECRET)))
    ovmf.write_physical(SOURCE, bytes(len(SECRET)))

    restored = ovmf.communicate(LOCKBOX_GUID, restore(BOX, SOURCE + 0x1000, 64))

    assert return_status(saved.data) == EfiStatus.SUCCESS
    assert return_status(restored.data) == EfiStatus.SUCCESS
    assert struct.unpack_from("<Q", restored.data, 40)[0] == len(SECRET)  # actual length
    assert ovmf.read_physical(SOURCE + 0x1000, len(SECRET)) == SECRET


def test_lockbox_restore_into_a_short_buffer_is_buffer_too_small(ovmf: Machine) -> None:
    ovmf.write_physical(SOURCE, SECRET)
    ovmf.communicate(LOCKBOX_GUID, save(BOX, SOURCE, len(SECRET)))

    result = ovmf.communicate(LOCKBOX_GUID, restore(BOX, SOURCE + 0x1000, 4))

    assert return_status(result.data) == EfiStatus.BUFFER_TOO_SMALL
    assert struct.unpack_from("<Q", result.data, 40)[0] == len(SECRET)


def test_lockbox_set_attributes_on_a_saved_box(ovmf: Machine) -> None:
    ovmf.write_physical(SOURCE, SECRET)
    ovmf.communicate(LOCKBOX_GUID, save(BOX, SOURCE, len(SECRET)))

    known = ovmf.communicate(LOCKBOX_GUID,
                             set_attributes(BOX, LOCK_BOX_ATTRIBUTE_RESTORE_IN_PLACE))
    unknown = ovmf.communicate(LOCKBOX_GUID, set_attributes(uuid.uuid4(), 1))

    assert return_status(known.data) == EfiStatus.SUCCESS
    assert return_status(unknown.data) == EfiStatus.NOT_FOUND


def test_lockbox_refuses_save_from_outside_after_ready_to_lock(ovmf: Machine) -> None:
    ovmf.write_physical(SOURCE, SECRET)
    ovmf.communicate(LOCKBOX_GUID, save(BOX, SOURCE, len(SECRET)))
    assert ovmf.communicate(END_OF_DXE_GUID, b"\0").smi.stop is StopReason.HALTED
    assert ovmf.communicate(MM_READY_TO_LOCK_GUID, b"\0").smi.stop is StopReason.HALTED

    refused = ovmf.communicate(LOCKBOX_GUID, save(uuid.uuid4(), SOURCE, len(SECRET)))
    restored = ovmf.communicate(LOCKBOX_GUID, restore(BOX, RUNTIME_TARGET, 64))

    assert return_status(refused.data) == EfiStatus.ACCESS_DENIED
    assert return_status(restored.data) == EfiStatus.SUCCESS  # restores stay allowed
    assert ovmf.read_physical(RUNTIME_TARGET, len(SECRET)) == SECRET


def test_lockbox_refuses_restore_into_boot_memory_after_ready_to_lock(ovmf: Machine) -> None:
    ovmf.write_physical(SOURCE, SECRET)
    ovmf.communicate(LOCKBOX_GUID, save(BOX, SOURCE, len(SECRET)))
    ovmf.communicate(END_OF_DXE_GUID, b"\0")
    ovmf.communicate(MM_READY_TO_LOCK_GUID, b"\0")

    result = ovmf.communicate(LOCKBOX_GUID, restore(BOX, SOURCE + 0x1000, 64))

    assert return_status(result.data) == EfiStatus.ACCESS_DENIED
    assert ovmf.read_physical(SOURCE + 0x1000, len(SECRET)) == bytes(len(SECRET))


def test_lockbox_refuses_a_save_source_inside_smram(ovmf: Machine) -> None:
    tseg = ovmf.profile.tseg_base

    result = ovmf.communicate(LOCKBOX_GUID, save(BOX, tseg + 0x1000, 16))

    assert return_status(result.data) == EfiStatus.ACCESS_DENIED


def _hotplug_pcd_tokens() -> dict[int, int | str]:
    """This build's token numbers of CpuHotplugSmm's dynamic PCDs, found from its reads.

    Token numbers are assigned per firmware build. CpuHotplugEntry reads, in order,
    PcdQ35SmramAtDefaultSmbase (Bool), then PcdCpuHotPlugDataAddress and
    PcdCpuHotEjectDataAddress (64-bit) once the first is TRUE.
    """
    def reads(pcd: dict[int, int | str]) -> list[tuple[int, str]]:
        machine = Machine(firmware=OVMF, pcd=pcd, possible_cpus=2)
        return [(r.token, r.kind) for r in machine.pcd.reads
                if (machine.symbolize(r.caller) or "").startswith("CpuHotplugSmm+")]

    [smram_at_default_smbase] = [token for token, kind in reads({}) if kind == "Bool"]
    enabled: dict[int, int | str] = {smram_at_default_smbase: 1}
    hot_plug, hot_eject = [token for token, kind in reads(enabled) if kind == "64"]
    return {**enabled, hot_plug: "CpuHotPlugData", hot_eject: "CpuHotEjectData"}


@pytest.fixture(scope="module")
def hotplug_pcd() -> dict[int, int | str]:
    return _hotplug_pcd_tokens()


def test_cpu_hotplug_smm_root_handler_runs_on_apm_cnt_04(
        hotplug_pcd: dict[int, int | str]) -> None:
    machine = Machine(firmware=OVMF, pcd=hotplug_pcd, possible_cpus=2)
    report = machine.firmware_report
    assert report is not None
    assert report.by_name("CpuHotplugSmm").status == EfiStatus.SUCCESS
    roots = [address for guid, address in machine.handler_table() if guid is None]
    assert any((machine.symbolize(a) or "").startswith("CpuHotplugSmm+") for a in roots)
    block = machine.cpu_hotplug
    assert block is not None
    assert block.modern  # the entry point's probe switched QEMU's block to modern mode

    before = len(block.events)
    assert machine.software_smi(0x04).stop is StopReason.HALTED
    scan = block.events[before:]
    after_other = len(block.events)
    assert machine.software_smi(0x05).stop is StopReason.HALTED

    # QEMU_CPUHP_CMD_GET_PENDING (command register, offset 5) starts the scan for events.
    assert any(a.is_write and a.offset == 5 and a.value == 0 for a in scan)
    assert len(block.events) == after_other  # another APM value is not a hotplug MMI


def test_cpu_hotplug_smm_refuses_a_single_cpu_platform(
        hotplug_pcd: dict[int, int | str]) -> None:
    machine = Machine(firmware=OVMF, pcd=hotplug_pcd)  # possible_cpus defaults to cpus (1)
    report = machine.firmware_report
    assert report is not None

    assert report.by_name("CpuHotplugSmm").status == EfiStatus.UNSUPPORTED
