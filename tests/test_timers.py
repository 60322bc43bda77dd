"""SWSMI and periodic SMI timers on the virtual clock (smm_semantics.md 5.4; checklist 21)."""

from __future__ import annotations

import struct

import pytest

from smmemu import Machine

LPC = 0xB000_0000 + (31 << 15)


def _enable(m: Machine, bits: int, *, pmcon1: int | None = None,
            pmcon3: int | None = None) -> None:
    code = b""
    # movabs rax, addr ; mov byte [rax], value
    for address, value in ((LPC + 0xA0, pmcon1), (LPC + 0xA4, pmcon3)):
        if value is not None:
            code += b"\x48\xb8" + struct.pack("<Q", address) + b"\xc6\x00" + bytes([value])
    # mov dx, 0x630 ; in eax, dx ; or eax, bits ; out dx, eax ; hlt
    code += bytes.fromhex("66ba3006 ed 0d") + struct.pack("<I", bits) + bytes.fromhex("ef f4")
    assert m.run_guest(code).ok


def _last_smi_sts(m: Machine) -> int:
    core_state = m.image.constants["CORE_STATE"]
    return int(struct.unpack("<Q", m.read_physical(core_state + 0x20, 8, smm=True))[0])


@pytest.mark.parametrize("profile", ["q35", "intel"])
def test_item21_swsmi_timer_fires_once_after_1_5_ms(profile: str) -> None:
    with Machine(profile) as m:
        _enable(m, 1 << 6, pmcon3=0x00)
        assert m.advance_time(0.0014) is None
        result = m.advance_time(0.0002)
        assert result is not None
        assert result.ok
        assert len(result.smis) == 1
        assert _last_smi_sts(m) & (1 << 6)
        assert m.advance_time(0.1) is None


def test_item21_swsmi_rate_select_16_ms() -> None:
    with Machine("q35") as m:
        _enable(m, 1 << 6, pmcon3=0x40)
        assert m.advance_time(0.015) is None
        assert m.advance_time(0.002) is not None


@pytest.mark.parametrize("profile", ["q35", "intel"])
def test_item21_periodic_smi_every_8_s_with_sel_3(profile: str) -> None:
    with Machine(profile) as m:
        _enable(m, 1 << 14, pmcon1=0x03)
        assert m.advance_time(7.9) is None
        first = m.advance_time(0.2)
        assert first is not None
        assert _last_smi_sts(m) & (1 << 14)
        assert [name for _, name in m.timers.fired] == ["periodic"]
        m.advance_time(16.0)
        assert [name for _, name in m.timers.fired] == ["periodic"] * 3


def test_item21_no_timer_without_its_enable_bit(q35: Machine) -> None:
    assert q35.advance_time(100.0) is None
    assert q35.timers.fired == []
