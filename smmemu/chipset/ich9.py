"""ICH9 SMI logic: APM_CNT/APM_STS (0xB2/0xB3) and the PMBASE block with SMI_EN/SMI_STS.

Register facts (reference/smm_semantics.md 5.1-5.2, comm_protocols.md 4.4-4.5;
edk2 ``OvmfPkg/Include/IndustryStandard/Q35MchIch9.h``; QEMU ``hw/isa/lpc_ich9.c``):

* A write to APM_CNT raises SMI# when SMI_EN.APMC_EN is set. QEMU treats the
  values 0x02/0x03 (ACPI enable/disable) as PM1_CNT.SCI_EN updates without an
  SMI, never checks GBL_SMI_EN or EOS, and never sets SMI_STS.APM_STS; the
  ``intel`` profile requires GBL_SMI_EN, sets APM_STS and honours EOS.
* APM_STS (0xB3) is a scratch byte that reads back what was written.
* EOS: the PCH asserts SMI# only when the line is free; asserting clears EOS,
  and software setting EOS frees the line (if an enabled status is still
  pending, SMI# is asserted again at once). The first SMI after reset needs
  no EOS.
* SMI_STS write semantics differ per profile (QEMU: masked plain write with
  only SWSMI_TMR_STS and PERIODIC_STS writable; hardware: write 1 to clear).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from smmemu.profiles import Profile, SmiStsWrite

__all__ = ["ApmPorts", "Ich9PmBlock", "SmiEn", "SmiSts"]


class SmiEn(enum.IntFlag):
    """SMI_EN (PMBASE+0x30) bits used here."""

    GBL_SMI_EN = 1 << 0
    EOS = 1 << 1
    APMC_EN = 1 << 5
    SWSMI_TMR_EN = 1 << 6
    PERIODIC_EN = 1 << 14


class SmiSts(enum.IntFlag):
    """SMI_STS (PMBASE+0x34) bits used here."""

    APM_STS = 1 << 5
    SWSMI_TMR_STS = 1 << 6
    PERIODIC_STS = 1 << 14


SMI_EN_OFFSET = 0x30
SMI_STS_OFFSET = 0x34
PM1_CNT_OFFSET = 0x04
PM1_CNT_SCI_EN = 1 << 0
PM_BLOCK_SIZE = 0x80
APM_ACPI_ENABLE = 0x02
APM_ACPI_DISABLE = 0x03
# Plain-int copies of the bits for the per-SMI paths (IntFlag operators cost ~1 us each).
_GBL_SMI_EN = int(SmiEn.GBL_SMI_EN)
_EOS = int(SmiEn.EOS)
_SWSMI_TMR_EN = int(SmiEn.SWSMI_TMR_EN)
_PERIODIC_EN = int(SmiEn.PERIODIC_EN)
_QEMU_SMI_STS_WMASK = int(SmiSts.SWSMI_TMR_STS | SmiSts.PERIODIC_STS)
_SOURCES = tuple((int(status), int(enable)) for status, enable in (
    (SmiSts.APM_STS, SmiEn.APMC_EN), (SmiSts.SWSMI_TMR_STS, SmiEn.SWSMI_TMR_EN),
    (SmiSts.PERIODIC_STS, SmiEn.PERIODIC_EN)))


def _merge(old: int, offset: int, size: int, value: int, reg_offset: int) -> int:
    """Merge a byte/word/dword write at ``offset`` into the 32-bit register at ``reg_offset``."""
    shift = 8 * (offset - reg_offset)
    mask = ((1 << (8 * size)) - 1) << shift
    return (old & ~mask) | ((value << shift) & mask)


class Ich9PmBlock:
    """The ICH9 ACPI/PM I/O block at PMBASE: PM1_CNT, SMI_EN, SMI_STS and SMI# generation."""

    def __init__(self, profile: Profile, raise_smi: Callable[[], None],
                 smi_locked: Callable[[], bool] = lambda: False,
                 on_smi_en: Callable[[int, int], None] = lambda old, new: None) -> None:
        self._profile = profile
        self._raise_smi = raise_smi
        self._smi_locked = smi_locked
        self._on_smi_en = on_smi_en
        self.smi_en = 0
        self.smi_sts = 0
        self.pm1_cnt = 0
        self._line_free = True
        self.smis_raised = 0

    # -- SMI# ---------------------------------------------------------------
    def request_smi(self, status: SmiSts, enable: SmiEn) -> bool:
        """A source wants an SMI: latch its status bit and assert SMI# if allowed.

        Returns True when SMI# was asserted.
        """
        if self._profile.apm_sets_smi_sts or status is not SmiSts.APM_STS:
            self.smi_sts |= int(status)
        if not self.smi_en & int(enable):
            return False
        if self._profile.eos_gating:
            if not self.smi_en & _GBL_SMI_EN:
                return False
            if not self._line_free:
                return False
            self._line_free = False
            self.smi_en &= ~_EOS
        self.smis_raised += 1
        self._raise_smi()
        return True

    def recover_line(self) -> None:
        """Free SMI# after an SMI the emulator abandoned (the handler never set EOS).

        Real hardware would stay hung; the emulator frees the line so that the
        Machine stays usable, and latches nothing new.
        """
        self._line_free = True
        if self._profile.eos_gating:
            self.smi_en |= _EOS

    def _on_eos_set(self) -> None:
        self._line_free = True
        pending = any(self.smi_sts & status and self.smi_en & enable
                      for status, enable in _SOURCES)
        if pending and self.smi_en & _GBL_SMI_EN:
            self._line_free = False
            self.smi_en &= ~_EOS
            self.smis_raised += 1
            self._raise_smi()

    # -- port interface ---------------------------------------------------------
    def port_read(self, offset: int, size: int) -> int:
        """IN from the PM block."""
        regs = {PM1_CNT_OFFSET: self.pm1_cnt, SMI_EN_OFFSET: self.smi_en,
                SMI_STS_OFFSET: self.smi_sts}
        for reg_offset, value in regs.items():
            if reg_offset <= offset < reg_offset + 4:
                return (value >> (8 * (offset - reg_offset))) & ((1 << (8 * size)) - 1)
        return 0

    def port_write(self, offset: int, size: int, value: int) -> None:
        """OUT to the PM block."""
        if SMI_EN_OFFSET <= offset < SMI_EN_OFFSET + 4:
            new = _merge(self.smi_en, offset, size, value, SMI_EN_OFFSET)
            if self._smi_locked():
                # GEN_PMCON_1.SMI_LOCK: GBL_SMI_EN is no longer writable
                # (QEMU ich9_lpc_pmcon_update).
                new = (new & ~_GBL_SMI_EN) | (self.smi_en & _GBL_SMI_EN)
            eos_set = bool(new & _EOS) and self._profile.eos_gating
            old, self.smi_en = self.smi_en, new
            self._on_smi_en(old, new)
            if eos_set:
                self._on_eos_set()
        elif SMI_STS_OFFSET <= offset < SMI_STS_OFFSET + 4:
            written = _merge(0, offset, size, value, SMI_STS_OFFSET)
            byte_mask = _merge(0, offset, size, (1 << (8 * size)) - 1, SMI_STS_OFFSET)
            if self._profile.smi_sts_write is SmiStsWrite.WRITE_ONE_TO_CLEAR:
                self.smi_sts &= ~written
            else:
                wmask = _QEMU_SMI_STS_WMASK & byte_mask
                self.smi_sts = (self.smi_sts & ~wmask) | (written & wmask)
        elif PM1_CNT_OFFSET <= offset < PM1_CNT_OFFSET + 4:
            self.pm1_cnt = _merge(self.pm1_cnt, offset, size, value, PM1_CNT_OFFSET) & 0xFFFF


class ApmPorts:
    """APM_CNT (0xB2) and APM_STS (0xB3)."""

    def __init__(self, profile: Profile, pm: Ich9PmBlock) -> None:
        self._profile = profile
        self._pm = pm
        self.apm_cnt = 0
        self.apm_sts = 0

    def port_read(self, offset: int, size: int) -> int:
        """IN 0xB2/0xB3: both read back the last value written."""
        value = self.apm_cnt | (self.apm_sts << 8)
        return (value >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def port_write(self, offset: int, size: int, value: int) -> None:
        """OUT 0xB2 (possibly with 0xB3 in the same word) latches, then may raise SMI#."""
        data = value.to_bytes(4, "little")[:size]
        writes_cnt = False
        for index, byte in enumerate(data, start=offset):
            if index == 0:
                self.apm_cnt = byte
                writes_cnt = True
            elif index == 1:
                self.apm_sts = byte
        if not writes_cnt:
            return
        is_qemu = self._profile.smi_sts_write is SmiStsWrite.QEMU_MASKED
        if is_qemu and self.apm_cnt in (APM_ACPI_ENABLE, APM_ACPI_DISABLE):
            if self.apm_cnt == APM_ACPI_ENABLE:
                self._pm.pm1_cnt |= PM1_CNT_SCI_EN
            else:
                self._pm.pm1_cnt &= ~PM1_CNT_SCI_EN
            return
        self._pm.request_smi(SmiSts.APM_STS, SmiEn.APMC_EN)


SWSMI_PERIODS_NS = (1_500_000, 16_000_000, 32_000_000, 64_000_000)
"""GEN_PMCON_3 SWSMI_RATE_SEL (bits 7:6): 1.5, 16, 32, 64 ms (smm_semantics.md 5.4)."""
PERIODIC_PERIODS_NS = (64_000_000_000, 32_000_000_000, 16_000_000_000, 8_000_000_000)
"""GEN_PMCON_1 PER_SMI_SEL (bits 1:0): 64, 32, 16, 8 s."""


class SmiTimers:
    """The SWSMI timer (one shot) and the periodic SMI timer, on the machine's virtual clock.

    The SWSMI timer starts when SWSMI_TMR_EN goes from 0 to 1 and fires once;
    the periodic timer fires every period while PERIODIC_EN is set. On expiry
    the status bit is latched and SMI# requested through the PM block. The
    ``q35`` profile keeps QEMU's quirk of *assigning* SMI_STS = PERIODIC_STS
    (``hw/acpi/ich9_timer.c``); ``intel`` ORs it in.
    """

    def __init__(self, profile: Profile, pm: Ich9PmBlock, gen_pmcon: Callable[[], tuple[int, int]],
                 ) -> None:
        self._profile = profile
        self._pm = pm
        self._gen_pmcon = gen_pmcon
        self.swsmi_deadline: int | None = None
        self.periodic_deadline: int | None = None
        self.now = 0
        self.fired: list[tuple[int, str]] = []

    def on_smi_en(self, old: int, new: int) -> None:
        """Arm or disarm the timers when software writes SMI_EN."""
        if not (old ^ new) & (_SWSMI_TMR_EN | _PERIODIC_EN):
            return  # neither enable changed: nothing to arm or disarm
        pmcon1, pmcon3 = self._gen_pmcon()
        if new & _SWSMI_TMR_EN and not old & _SWSMI_TMR_EN:
            self.swsmi_deadline = self.now + SWSMI_PERIODS_NS[(pmcon3 >> 6) & 3]
        elif not new & _SWSMI_TMR_EN:
            self.swsmi_deadline = None
        if new & _PERIODIC_EN and not old & _PERIODIC_EN:
            self.periodic_deadline = self.now + PERIODIC_PERIODS_NS[pmcon1 & 3]
        elif not new & _PERIODIC_EN:
            self.periodic_deadline = None

    def advance(self, now: int) -> None:
        """Move the clock to ``now`` (ns) and fire every timer that expired on the way."""
        while True:
            due = [d for d in (self.swsmi_deadline, self.periodic_deadline)
                   if d is not None and d <= now]
            if not due:
                break
            moment = min(due)
            self.now = moment
            if self.swsmi_deadline == moment:
                self.swsmi_deadline = None
                self.fired.append((moment, "swsmi"))
                self._pm.request_smi(SmiSts.SWSMI_TMR_STS, SmiEn.SWSMI_TMR_EN)
            if self.periodic_deadline == moment:
                pmcon1, _ = self._gen_pmcon()
                self.periodic_deadline = moment + PERIODIC_PERIODS_NS[pmcon1 & 3]
                self.fired.append((moment, "periodic"))
                if self._profile.smi_sts_write is SmiStsWrite.QEMU_MASKED:
                    self._pm.smi_sts = int(SmiSts.PERIODIC_STS)
                self._pm.request_smi(SmiSts.PERIODIC_STS, SmiEn.PERIODIC_EN)
        self.now = max(self.now, now)
