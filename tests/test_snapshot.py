"""Machine snapshots: what a restore brings back, byte for byte, and what it refuses."""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import store_qword_handler, supervisor, unblock_params

from smmemu import MM_SUPERVISOR_REQUEST_HANDLER_GUID as MSUP_GUID
from smmemu import Machine, SnapshotError, StopReason, ramimage
from smmemu.cpu import Cpu, RunState
from smmemu.ramimage import REMAP_PAGES
from smmemu.results import CommResult

VERSION_INFO = struct.pack("<IIIIQ", 0x5055534D, 1, 3, 0, 0) + bytes(16)
HANDLER = uuid.UUID("5a5a0000-0000-4000-8000-00000000beef")
PATCHER = uuid.UUID("5a5a0000-0000-4000-8000-00000000fade")
# mov eax, 0xB00F8040 ; mov dword [rax], 0x701   -- ECAM: LPC PMBASE = 0x700
# mov eax, 0xB000009E ; mov byte [rax], 0x04     -- ECAM: MCH ESMRAMC, T_EN clear (TSEG open)
MOVE_PMBASE_AND_OPEN_TSEG = bytes.fromhex("b840800fb0 c70001070000 b89e0000b0 c60004")


@pytest.fixture(params=[("q35", 1), ("intel", 1), ("q35", 2)], ids=["q35", "intel", "q35x2"])
def booted(request: pytest.FixtureRequest) -> Iterator[Machine]:
    profile, cpus = request.param
    with Machine(profile, cpus=cpus) as m:
        m.communicate(MSUP_GUID, VERSION_INFO)  # translated and settled, as a fixture would be
        yield m


def _cpu_state(cpu: Cpu) -> dict[str, Any]:
    msr = cpu.msr
    return {
        "registers": cpu.registers(), "blob": cpu.engine.save_context(), "smbase": cpu.smbase,
        "smi_count": cpu.smi_count, "halted": cpu.halted, "executed": cpu.executed,
        "nmi": (cpu.nmi_pending, cpu.nmi_masked), "view": cpu.smram.state,
        "msr": (msr.apic_base, msr.smrr_base, msr.smrr_mask, msr.feature_control, list(msr.writes)),
    }


def _state(machine: Machine) -> dict[str, Any]:
    """Everything a restore must bring back, read through public views where there are some."""
    base, size = machine.smram[0]
    timers = machine.timers
    return {
        "dram": machine.read_physical(0, base),
        "smram": machine.read_physical(base, size, smm=True),
        "cpus": [_cpu_state(cpu) for cpu in machine.cpus],
        "pm": (machine.pm.smi_en, machine.pm.smi_sts, machine.pm.pm1_cnt),
        "apm": (machine.apm.apm_cnt, machine.apm.apm_sts),
        "pci": (bytes(machine.mch.space), bytes(machine.lpc.space)),
        "smram_closed": machine.memory.smram_closed,
        "ports": machine.ports.devices(),
        "timers": (timers.swsmi_deadline, timers.periodic_deadline, timers.now,
                   list(timers.fired)),
        "clock": machine.clock_ns,
        "shadows": [(b.private_recipient, b.private_message_length)
                    for b in machine._communicator.buffers.values()],
        "heap": (machine.heap.in_use, list(machine.heap._free)),
        "handlers": machine.handler_table(),
        "findings": (machine.smram_accesses, list(machine.refused_writes)),
    }


def _same_reply(a: CommResult, b: CommResult) -> None:
    assert (a.status, a.data, a.return_buffer_size, a.buffer) == (
        b.status, b.data, b.return_buffer_size, b.buffer)
    assert a.smi.registers == b.smi.registers
    assert [r.raw_save_state for r in a.smi.smis] == [r.raw_save_state for r in b.smi.smis]


def test_restore_brings_back_memory_cpus_devices_and_replies(booted: Machine) -> None:
    m = booted
    snapshot = m.snapshot()
    before = _state(m)
    reply = m.communicate(MSUP_GUID, VERSION_INFO)
    # SMIs that change SMRAM, registers, the clock, the chipset and the port decoding.
    target = m.image.constants["MM_HEAP"] + 0x3F_F000
    m.install_handler(store_qword_handler(target, 0x1122_3344), HANDLER)
    assert m.communicate(HANDLER, b"x", buffer_id=1).status == 0
    unblock = m.communicate(MSUP_GUID, supervisor(1, unblock_params(0x30_0000, 2)))
    assert unblock.status == 0
    assert m.software_smi(0x42, regs={"rbx": 0x1234, "r15": 0xDEAD}).ok
    m.write_physical(0x20_0000, b"dram written after the snapshot")
    m.advance_time(0.002)
    m.read_physical(base := m.smram[0][0], 8)  # a refused host read: a finding
    assert m.run_guest(MOVE_PMBASE_AND_OPEN_TSEG).stop is StopReason.HALTED
    assert not m.memory.smram_closed
    assert m.lpc.pmbase == 0x700
    changed = _state(m)
    assert {key for key in before if before[key] != changed[key]} >= {
        "dram", "smram", "cpus", "pci", "smram_closed", "ports", "clock", "heap", "handlers",
        "findings"}

    m.restore(snapshot)

    after = _state(m)
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    assert all(cpu.smram.state == "closed" for cpu in m.cpus)
    assert [cpu.engine.save_context() for cpu in m.cpus] == list(snapshot.contexts)
    assert m.read_physical(base, 8) == b"\xff" * 8  # TSEG is closed again
    _same_reply(m.communicate(MSUP_GUID, VERSION_INFO), reply)


def test_restore_repeats_and_each_run_sees_the_snapshot(q35: Machine) -> None:
    snapshot = q35.snapshot()
    table = q35.handler_table()
    target = q35.image.constants["MM_HEAP"] + 0x3F_F000
    addresses = []
    for value in (0x11, 0x22, 0x33):
        addresses.append(q35.install_handler(store_qword_handler(target, value), HANDLER))
        assert q35.communicate(HANDLER, b"x", buffer_id=1).status == 0
        assert q35.read_physical(target, 8, smm=True) == struct.pack("<Q", value)
        q35.restore(snapshot)
        assert q35.read_physical(target, 8, smm=True) == bytes(8)
        assert q35.handler_table() == table
    assert len(set(addresses)) == 1  # the heap is restored too: the same pages each time


def test_code_rewritten_by_the_host_does_not_survive_in_translations(q35: Machine) -> None:
    target = q35.image.constants["MM_HEAP"] + 0x3F_F000
    address = q35.install_handler(store_qword_handler(target, 0x11), HANDLER)
    assert q35.communicate(HANDLER, b"x", buffer_id=1).status == 0  # translated
    snapshot = q35.snapshot()
    q35.write_physical(address, store_qword_handler(target, 0x22), smm=True)
    q35.communicate(HANDLER, b"x", buffer_id=1)
    assert q35.read_physical(target, 8, smm=True) == struct.pack("<Q", 0x22)
    q35.restore(snapshot)
    q35.communicate(HANDLER, b"x", buffer_id=1)
    assert q35.read_physical(target, 8, smm=True) == struct.pack("<Q", 0x11)


def test_code_rewritten_by_smm_code_does_not_survive_in_translations(q35: Machine) -> None:
    target = q35.image.constants["MM_HEAP"] + 0x3F_F000
    handler = q35.install_handler(store_qword_handler(target, 0x11), HANDLER)
    # A second handler patches the first one's immediate (at +12) to 0x22: guest-written code.
    q35.install_handler(store_qword_handler(handler + 12, 0x22), PATCHER)
    assert q35.communicate(HANDLER, b"x", buffer_id=1).status == 0  # translated with 0x11
    snapshot = q35.snapshot()
    assert q35.communicate(PATCHER, b"x", buffer_id=1).status == 0
    q35.communicate(HANDLER, b"x", buffer_id=1)  # translated again, with 0x22
    assert q35.read_physical(target, 8, smm=True) == struct.pack("<Q", 0x22)
    q35.restore(snapshot)
    assert q35.read_physical(handler + 12, 8, smm=True) == struct.pack("<Q", 0x11)
    q35.communicate(HANDLER, b"x", buffer_id=1)
    assert q35.read_physical(target, 8, smm=True) == struct.pack("<Q", 0x11)


def test_many_pages_written_remap_the_image_and_memfd_stays_sparse(q35: Machine) -> None:
    snapshot = q35.snapshot()
    reply = q35.communicate(MSUP_GUID, VERSION_INFO)
    q35.restore(snapshot)
    q35.write_physical(0x40_0000, b"\x5a" * (REMAP_PAGES + 8) * 0x1000)
    whole = q35.read_physical(0, q35.smram[0][0])  # maps every page (and allocates holes)
    assert whole[0x40_0000] == 0x5A
    q35.restore(snapshot)
    assert q35.read_physical(0x40_0000, 0x1000) == bytes(0x1000)
    dram_image = snapshot._ram[0]
    stored = os.fstat(dram_image._fd).st_blocks * 512
    assert stored <= (dram_image.pages + REMAP_PAGES) * 0x1000
    _same_reply(q35.communicate(MSUP_GUID, VERSION_INFO), reply)


def test_an_older_snapshot_restores_after_a_newer_one(q35: Machine) -> None:
    target = q35.image.constants["MM_HEAP"] + 0x3F_F000
    old = q35.snapshot()
    q35.install_handler(store_qword_handler(target, 0x11), HANDLER)
    new = q35.snapshot()
    q35.communicate(HANDLER, b"x", buffer_id=1)
    q35.restore(old)
    assert q35.communicate(HANDLER, b"x", buffer_id=1).status != 0  # no such handler then
    q35.restore(new)
    assert q35.communicate(HANDLER, b"x", buffer_id=1).status == 0
    assert q35.read_physical(target, 8, smm=True) == struct.pack("<Q", 0x11)


def test_msr_sites_follow_the_code_placed_after_a_restore(q35: Machine) -> None:
    # Both handlers land on the same heap page after the restore, with their rdmsr and
    # wrmsr at the same offset: the site must be watched as a write the second time.
    snapshot = q35.snapshot()
    out = q35.image.constants["MM_HEAP"] + 0x3F_F000
    # mov ecx, 0x1b ; mov eax, 0xfed00800 ; mov edx, 0
    prefix = bytes.fromhex("b91b000000 b80008d0fe ba00000000")
    # ... ; rdmsr ; shl rdx, 32 ; or rax, rdx ; movabs rcx, out ; mov [rcx], rax ; xor eax, eax
    read = (prefix + bytes.fromhex("0f32 48c1e220 4809d0") + b"\x48\xb9" + struct.pack("<Q", out)
            + bytes.fromhex("488901 31c0 c3"))
    first = q35.install_handler(read, None)
    assert q35.software_smi(0x10).ok
    assert q35.read_physical(out, 8, smm=True) == struct.pack("<Q", 0xFEE0_0900)
    q35.restore(snapshot)
    write = prefix + bytes.fromhex("0f30 31c0 c3")  # ... ; wrmsr ; xor eax, eax ; ret
    assert q35.install_handler(write, None) == first
    assert q35.software_smi(0x10).ok
    assert q35.cpu.msr.apic_base == 0xFED0_0900


def test_an_msr_site_forgotten_by_a_restore_does_nothing(q35: Machine) -> None:
    snapshot = q35.snapshot()
    prefix = bytes.fromhex("b91b000000 b80008d0fe ba00000000")  # ecx = 0x1b at +15 in both
    first = q35.install_handler(prefix + bytes.fromhex("0f30 31c0 c3"), None)  # wrmsr at +15
    q35.restore(snapshot)
    assert q35.install_handler(prefix + bytes.fromhex("9090 31c0 c3"), None) == first  # nops
    assert q35.software_smi(0x10).ok
    assert q35.cpu.msr.apic_base == 0xFEE0_0900


def test_an_msr_site_watched_again_after_a_restore_is_emulated_once() -> None:
    with Machine("intel") as m:
        snapshot = m.snapshot()
        # mov ecx, 0x4e0 ; mov eax, 1 ; mov edx, 0 ; wrmsr ; xor eax, eax ; ret  (Lock)
        lock = bytes.fromhex("b9e0040000 b801000000 ba00000000 0f30 31c0 c3")
        for _ in range(2):
            m.install_handler(lock, None)
            result = m.software_smi(0x10)
            assert result.ok, result.detail  # a second emulation would #GP on the lock
            assert m.cpu.msr.feature_control == 1
            m.restore(snapshot)


def test_an_iret_site_forgotten_by_a_restore_does_not_unblock_nmis(q35: Machine) -> None:
    snapshot = q35.snapshot()
    assert q35.run_guest(bytes.fromhex("eb02 48cf 90")).ok  # jmp over an iretq: watched, not run
    q35.restore(snapshot)
    q35.cpu.nmi_masked = True  # as inside an NMI handler
    assert q35.run_guest(b"\x90" * 5).ok  # a nop where the iretq was
    assert q35.cpu.nmi_masked


def test_kernels_without_pagemap_scan_use_the_pagemap_entries(
        q35: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ramimage._scanner, "_ioctl", False)  # as on Linux < 6.7
    base, size = q35.smram[0]
    snapshot = q35.snapshot()
    smram = q35.read_physical(base, size, smm=True)
    reply = q35.communicate(MSUP_GUID, VERSION_INFO)
    target = q35.image.constants["MM_HEAP"] + 0x3F_F000
    q35.install_handler(store_qword_handler(target, 0x11), HANDLER)
    assert q35.communicate(HANDLER, b"x", buffer_id=1).status == 0
    q35.restore(snapshot)
    assert q35.read_physical(base, size, smm=True) == smram
    _same_reply(q35.communicate(MSUP_GUID, VERSION_INFO), reply)


def test_host_buffers_still_unmap_cleanly_after_snapshots() -> None:
    machine = Machine("q35")
    snapshot = machine.snapshot()
    machine.communicate(MSUP_GUID, VERSION_INFO)
    machine.restore(snapshot)
    buffers = [machine.memory.dram, machine.memory.smram]
    machine.close()
    machine.memory.close()
    snapshot.close()
    for line in Path("/proc/self/maps").read_text().splitlines():
        low, high = (int(part, 16) for part in line.split()[0].split("-"))
        for buffer in buffers:
            assert low != buffer.address, line
            assert not (low <= buffer.address < high and "smmemu-snapshot" in line), line


def test_snapshot_of_another_machine_is_refused(q35: Machine) -> None:
    with Machine("q35") as other:
        snapshot = other.snapshot()
        with pytest.raises(SnapshotError, match="another Machine"):
            q35.restore(snapshot)


def test_released_snapshot_cannot_be_restored(q35: Machine) -> None:
    snapshot = q35.snapshot()
    snapshot.close()
    with pytest.raises(SnapshotError, match="released"):
        q35.restore(snapshot)


def test_snapshot_while_running_or_in_smm_is_refused(q35: Machine) -> None:
    refusals: list[str] = []

    class Observer:
        def on_event(self, cpu: Cpu, event: str, detail: int) -> bool:
            del cpu, detail
            if event == "smi-entry":
                try:
                    q35.snapshot()
                except SnapshotError as err:
                    refusals.append(str(err))
            return False

    q35.cpu.observer = Observer()
    assert q35.software_smi(0x42).ok
    q35.cpu.observer = None
    assert len(refusals) == 1
    assert "in SMM" in refusals[0]
    snapshot = q35.snapshot()
    cpu = q35.cpu
    cpu.start(q35.dxe_trampoline_address("park"))
    assert cpu.state is RunState.RUNNING
    with pytest.raises(SnapshotError, match="running"):
        q35.snapshot()
    with pytest.raises(SnapshotError, match="running"):
        q35.restore(snapshot)
    while cpu.state is RunState.RUNNING:
        cpu.step(None)
    assert cpu.result().stop is StopReason.HALTED
    q35.restore(snapshot)


def test_snapshot_covers_device_service_and_cpu_state(q35: Machine) -> None:
    snapshot = q35.snapshot()
    covered = [(q35.pm, "smi_en"), (q35.apm, "apm_cnt"), (q35.timers, "now"), (q35, "_time_base"),
               (q35.memory, "smram_closed"), (q35.heap, "_free"), (q35.services.db, "records"),
               (q35.services.thunks, "_next"), (q35.cpu, "smi_count"), (q35.cpu.msr, "apic_base"),
               (q35.debug_port, "_line")]
    assert [pair for pair in covered if not snapshot.covers(*pair)] == []
    assert not snapshot.covers(q35, "run_hook")
    assert not snapshot.covers(q35.cpu, "observer")
    assert snapshot.pages > 0
