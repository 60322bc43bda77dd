"""ICH9 APM and PM registers per profile (smm_semantics.md 5.1-5.2; checklist 17, 19, 20)."""

from __future__ import annotations

import pytest

from smmemu.chipset.bus import PortBus
from smmemu.chipset.ich9 import ApmPorts, Ich9PmBlock, SmiEn, SmiSts
from smmemu.profiles import get_profile


class Line:
    """Counts SMI# assertions."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def _board(profile: str) -> tuple[PortBus, Ich9PmBlock, Line]:
    line = Line()
    p = get_profile(profile)
    pm = Ich9PmBlock(p, line)
    bus = PortBus()
    bus.attach(0xB2, 2, ApmPorts(p, pm), "apm")
    bus.attach(p.pmbase, 0x80, pm, "pm")
    return bus, pm, line


@pytest.mark.parametrize("profile", ["q35", "intel"])
def test_item17_apm_cnt_write_without_apmc_en_raises_no_smi(profile: str) -> None:
    bus, _, line = _board(profile)
    bus.write(0xB2, 1, 0x42)
    assert line.count == 0


@pytest.mark.parametrize("profile", ["q35", "intel"])
def test_item17_apm_cnt_write_with_apmc_en_raises_smi(profile: str) -> None:
    bus, _, line = _board(profile)
    bus.write(0x630, 4, SmiEn.APMC_EN | SmiEn.GBL_SMI_EN)
    bus.write(0xB2, 1, 0x42)
    assert line.count == 1


def test_item17_apm_sts_reads_back_what_was_written() -> None:
    bus, _, _ = _board("q35")
    bus.write(0xB3, 1, 0x5A)
    assert bus.read(0xB3, 1) == 0x5A
    bus.write(0xB2, 2, 0xA5C3)
    assert (bus.read(0xB2, 1), bus.read(0xB3, 1)) == (0xC3, 0xA5)


def test_item17_q35_acpi_enable_and_disable_commands_raise_no_smi() -> None:
    bus, pm, line = _board("q35")
    bus.write(0x630, 4, SmiEn.APMC_EN)
    bus.write(0xB2, 1, 0x02)
    assert (line.count, pm.pm1_cnt & 1) == (0, 1)
    bus.write(0xB2, 1, 0x03)
    assert (line.count, pm.pm1_cnt & 1) == (0, 0)


def test_item17_intel_needs_gbl_smi_en() -> None:
    bus, _, line = _board("intel")
    bus.write(0x630, 4, SmiEn.APMC_EN)
    bus.write(0xB2, 1, 0x42)
    assert line.count == 0


def test_item17_q35_ignores_gbl_smi_en() -> None:
    bus, _, line = _board("q35")
    bus.write(0x630, 4, SmiEn.APMC_EN)
    bus.write(0xB2, 1, 0x42)
    assert line.count == 1


def test_item20_intel_sets_apm_sts_and_clears_it_write_one_to_clear() -> None:
    bus, _, _ = _board("intel")
    bus.write(0x630, 4, SmiEn.APMC_EN | SmiEn.GBL_SMI_EN)
    bus.write(0xB2, 1, 0x42)
    assert bus.read(0x634, 4) & SmiSts.APM_STS
    bus.write(0x634, 4, 0)
    assert bus.read(0x634, 4) & SmiSts.APM_STS
    bus.write(0x634, 4, SmiSts.APM_STS)
    assert not bus.read(0x634, 4) & SmiSts.APM_STS


def test_item20_q35_never_sets_apm_sts_and_masks_smi_sts_writes() -> None:
    bus, _, _ = _board("q35")
    bus.write(0x630, 4, SmiEn.APMC_EN)
    bus.write(0xB2, 1, 0x42)
    assert bus.read(0x634, 4) == 0
    bus.write(0x634, 4, 0xFFFF_FFFF)
    assert bus.read(0x634, 4) == SmiSts.SWSMI_TMR_STS | SmiSts.PERIODIC_STS


def test_item19_intel_eos_blocks_the_next_smi_until_set() -> None:
    bus, _, line = _board("intel")
    bus.write(0x630, 4, SmiEn.APMC_EN | SmiEn.GBL_SMI_EN)
    bus.write(0xB2, 1, 0x42)
    assert line.count == 1
    assert not bus.read(0x630, 4) & SmiEn.EOS
    bus.write(0x634, 4, SmiSts.APM_STS)
    bus.write(0xB2, 1, 0x43)
    assert line.count == 1
    bus.write(0x630, 4, bus.read(0x630, 4) | SmiEn.EOS)
    assert line.count == 2  # APM_STS was latched again while the line was busy


def test_item19_intel_setting_eos_with_nothing_pending_raises_nothing() -> None:
    bus, _, line = _board("intel")
    bus.write(0x630, 4, SmiEn.APMC_EN | SmiEn.GBL_SMI_EN)
    bus.write(0xB2, 1, 0x42)
    bus.write(0x634, 4, SmiSts.APM_STS)
    bus.write(0x630, 4, bus.read(0x630, 4) | SmiEn.EOS)
    assert line.count == 1


def test_undecoded_port_reads_all_ones_and_is_kept() -> None:
    bus, _, _ = _board("q35")
    assert bus.read(0x80, 1) == 0xFF
    bus.write(0x80, 1, 0x12)
    assert [(a.port, a.is_write) for a in bus.unclaimed] == [(0x80, False), (0x80, True)]


def test_overlapping_devices_are_refused() -> None:
    bus, pm, _ = _board("q35")
    with pytest.raises(ValueError, match="already decoded"):
        bus.attach(0x630, 4, pm, "again")
