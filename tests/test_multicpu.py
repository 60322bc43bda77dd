"""Several CPUs: relocation, broadcast, rendezvous, SMI IPIs (checklist 3, 10, 22, 23)."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator

import pytest

from smmemu import ECHO_HANDLER_GUID, ConfigError, Machine, StopReason

HANDLER = uuid.UUID("c0c0c0c0-0000-4000-8000-00000000c0de")


@pytest.fixture(params=["q35", "intel"])
def quad(request: pytest.FixtureRequest) -> Iterator[Machine]:
    with Machine(request.param, cpus=4) as m:
        yield m


def test_item10_each_cpu_is_relocated_from_the_reset_smbase(quad: Machine) -> None:
    tseg = quad.profile.tseg_base
    assert [cpu.smbase for cpu in quad.cpus] == [tseg + i * 0x2000 for i in range(4)]
    result = quad.software_smi(0x42)
    assert {cpu: state["smbase"] for cpu, state in result.save_states.items()} == {
        i: tseg + i * 0x2000 for i in range(4)}


def test_item10_relocation_smi_entered_at_0x38000_with_the_save_state_at_0x30000() -> None:
    with Machine("q35") as m:
        # The reset save state stays in DRAM at 0x30000 + 0xFE00: SMBASE field = the new base.
        raw = m.read_physical(0x3_0000 + 0xFF00, 4)
        assert struct.unpack("<I", raw)[0] == m.profile.tseg_base
        revision = struct.unpack("<I", m.read_physical(0x3_0000 + 0xFEFC, 4))[0]
        assert revision == 0x0002_0064


def test_item22_apm_smi_is_broadcast_and_every_cpu_returns(quad: Machine) -> None:
    before = [cpu.smi_count for cpu in quad.cpus]
    result = quad.software_smi(0x42, regs={"rbx": 0x1234})
    assert result.ok
    assert [cpu.smi_count for cpu in quad.cpus] == [n + 1 for n in before]
    assert sorted(result.cpu_smis) == [0, 1, 2, 3]
    assert all(len(smis) == 1 and smis[0].rsm for smis in result.cpu_smis.values())
    assert result.save_states[0]["rbx"] == 0x1234
    assert not any(cpu.in_smm for cpu in quad.cpus)


def test_item22_exactly_one_bsp_runs_the_dispatch(quad: Machine) -> None:
    core_state = quad.image.constants["CORE_STATE"]
    count_before = struct.unpack("<Q", quad.read_physical(core_state + 0x18, 8, smm=True))[0]
    reply = quad.communicate(ECHO_HANDLER_GUID, b"four cpus")
    assert reply.data == b"four cpus"
    count_after = struct.unpack("<Q", quad.read_physical(core_state + 0x18, 8, smm=True))[0]
    bsp = struct.unpack("<Q", quad.read_physical(core_state + 0x78, 8, smm=True))[0]
    assert count_after == count_before + 1  # core_main ran once for a four-CPU SMI
    assert bsp == 0


def test_item22_smi_ipi_reaches_only_its_target(quad: Machine) -> None:
    before = [cpu.smi_count for cpu in quad.cpus]
    result = quad.send_smi_ipi(2)
    assert result.stop is StopReason.HALTED
    assert [cpu.smi_count - n for cpu, n in zip(quad.cpus, before, strict=True)] == [0, 0, 1, 0]
    assert quad.communicate(ECHO_HANDLER_GUID, b"after ipi").data == b"after ipi"


def test_item23_apic_base_bsp_bit_only_on_cpu0(quad: Machine) -> None:
    assert [cpu.msr.apic_base for cpu in quad.cpus] == [0xFEE0_0900] + [0xFEE0_0800] * 3


def test_item03_entry_state_at_reset_and_relocated_smbase() -> None:
    seen: list[tuple[int, int]] = []
    with Machine("q35") as m:
        engine = m.cpu.engine
        entry = m.profile.smbase + 0x8000

        def on_entry(_address: int, _size: int) -> None:
            blob = engine.save_context()
            base = struct.unpack_from("<Q", blob, engine.layout.seg("cs") + 8)[0]
            seen.append((engine.reg("cs"), base))

        engine.on_code(entry, entry, on_entry)
        engine.invalidate_code(entry, entry + 1)
        assert m.software_smi(0x10).ok
    # TSEG base 0x07800000: the selector (SMBASE >> 4) & 0xFFFF truncates to 0.
    assert seen == [(0x0000, 0x0780_0000)]


def test_runs_with_several_cpus_are_deterministic() -> None:
    outcomes = []
    for _ in range(2):
        with Machine("q35", cpus=3) as m:
            replies = [m.communicate(ECHO_HANDLER_GUID, bytes([i]) * 8) for i in range(3)]
            outcomes.append(([r.buffer for r in replies], [cpu.executed for cpu in m.cpus],
                             [cpu.smi_count for cpu in m.cpus]))
    assert outcomes[0] == outcomes[1]


def test_fault_on_one_cpu_is_reported_and_machine_stays_usable() -> None:
    with Machine("q35", cpus=2) as m:
        m.install_handler(bytes.fromhex("48a10000004000000000 c3"), HANDLER)
        reply = m.communicate(HANDLER, b"x")
        assert reply.smi.stop is StopReason.SMM_FAULT
        assert m.communicate(ECHO_HANDLER_GUID, b"ok").data == b"ok"


def test_cpu_count_is_bounded_by_the_image() -> None:
    with pytest.raises(ConfigError, match="cpus must be between 1 and 8"):
        Machine(cpus=9)


def test_cli_swsmi_with_four_cpus_shows_each_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    from smmemu.cli import main

    assert main(["swsmi", "--cpus", "4", "--command", "0x42"]) == 0
    out = capsys.readouterr().out
    assert "4 CPUs:" in out
    assert "CPU 0 (BSP): 1 SMI: SMBASE 0x7800000 RSM" in out
    assert "CPU 3: 1 SMI: SMBASE 0x7806000 RSM" in out
