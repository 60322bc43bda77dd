"""The model-specific registers SMM code depends on, emulated per profile.

Unicorn cannot hook ``rdmsr``/``wrmsr``: unknown MSRs silently read 0 and
IA32_APIC_BASE always reads 0 (unicorn_probe.md row 8, smm_semantics.md 4.2).
smmemu does not patch guest code; it puts a code hook on each ``rdmsr`` and
``wrmsr`` it finds in code it loads, and when the MSR in ECX is one of those
below the CPU stops before the instruction and the host performs it. Other
MSRs (EFER, the MTRRs, FS/GS bases...) run natively in Unicorn.

Rules (SDM Vol. 3A "System-Management Range Register Interface", Vol. 4 MSR
tables; edk2 ``IntelSmmCpuFeaturesLib.c``; smm_semantics.md 0 and 4.1):

* IA32_APIC_BASE (0x1B): 0xFEE00000 | enable (bit 11) | BSP (bit 8) on CPU 0.
* MSR_SMI_COUNT (0x34): SMIs taken by this CPU; read only.
* IA32_SMBASE (0x9E): the current SMBASE, readable in SMM only (#GP outside).
* IA32_MTRRCAP (0xFE): bit 11 (SMRR supported) only in the ``intel`` profile.
* IA32_SMRR_PHYSBASE / PHYSMASK (0x1F2 / 0x1F3): ``intel`` only, and only in
  SMM; #GP outside SMM and on the ``q35`` profile (QEMU has no SMRR).
* MSR_SMM_MCA_CAP (0x17D): bit 58 (SMM_Code_Access_Chk) in ``intel``.
* MSR_SMM_FEATURE_CONTROL (0x4E0): ``intel``, SMM only; bit 0 Lock makes it
  read only (writes then #GP); bit 2 SMM_Code_Chk_En makes an SMM instruction
  fetch outside SMRAM a machine check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smmemu.profiles import Profile, SaveStateKind

__all__ = ["EMULATED_MSRS", "MsrBank", "MsrFault"]

IA32_APIC_BASE = 0x1B
MSR_SMI_COUNT = 0x34
IA32_SMBASE = 0x9E
IA32_MTRRCAP = 0xFE
IA32_SMRR_PHYSBASE = 0x1F2
IA32_SMRR_PHYSMASK = 0x1F3
MSR_SMM_MCA_CAP = 0x17D
MSR_SMM_FEATURE_CONTROL = 0x4E0
EMULATED_MSRS = frozenset({
    IA32_APIC_BASE, MSR_SMI_COUNT, IA32_SMBASE, IA32_MTRRCAP, IA32_SMRR_PHYSBASE,
    IA32_SMRR_PHYSMASK, MSR_SMM_MCA_CAP, MSR_SMM_FEATURE_CONTROL,
})
APIC_BASE_ADDRESS = 0xFEE0_0000
_APIC_ENABLE = 1 << 11
_APIC_BSP = 1 << 8
_SMRR_SUPPORTED = 1 << 11
_SMM_CODE_ACCESS_CHK = 1 << 58
FEATURE_LOCK = 1 << 0
FEATURE_SMM_CODE_CHK_EN = 1 << 2


class MsrFault(Exception):  # noqa: N818 - named for the #GP it stands for
    """The access raises #GP(0) on the CPU."""


@dataclass(slots=True)
class MsrBank:
    """One CPU's emulated MSRs."""

    profile: Profile
    is_bsp: bool
    apic_base: int = 0
    smrr_base: int = 0
    smrr_mask: int = 0
    feature_control: int = 0
    writes: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.apic_base = APIC_BASE_ADDRESS | _APIC_ENABLE | (_APIC_BSP if self.is_bsp else 0)

    @property
    def _intel(self) -> bool:
        return self.profile.save_state is SaveStateKind.INTEL64

    def read(self, msr: int, *, in_smm: bool, smbase: int, smi_count: int) -> int:
        """RDMSR.

        Raises:
            MsrFault: where the CPU raises #GP.
        """
        if msr == IA32_APIC_BASE:
            return self.apic_base
        if msr == MSR_SMI_COUNT:
            return smi_count
        if msr == IA32_SMBASE:
            self._smm_only(in_smm)
            return smbase
        if msr == IA32_MTRRCAP:
            return 0x508 | (_SMRR_SUPPORTED if self._intel else 0)
        self._intel_only()
        if msr == MSR_SMM_MCA_CAP:
            return _SMM_CODE_ACCESS_CHK
        self._smm_only(in_smm)
        if msr == IA32_SMRR_PHYSBASE:
            return self.smrr_base
        if msr == IA32_SMRR_PHYSMASK:
            return self.smrr_mask
        return self.feature_control

    def write(self, msr: int, value: int, *, in_smm: bool) -> None:
        """WRMSR.

        Raises:
            MsrFault: where the CPU raises #GP.
        """
        if msr == IA32_APIC_BASE:
            self.apic_base = (value & ~_APIC_BSP) | (self.apic_base & _APIC_BSP)
            return
        if msr in (MSR_SMI_COUNT, IA32_SMBASE, IA32_MTRRCAP):
            raise MsrFault(f"MSR {msr:#x} is read only")
        self._intel_only()
        if msr == MSR_SMM_MCA_CAP:
            raise MsrFault(f"MSR {msr:#x} is read only")
        self._smm_only(in_smm)
        self.writes.append((msr, value))
        if msr == IA32_SMRR_PHYSBASE:
            self.smrr_base = value & 0xFFFF_F0FF
        elif msr == IA32_SMRR_PHYSMASK:
            self.smrr_mask = value & 0xFFFF_F800
        elif self.feature_control & FEATURE_LOCK:
            raise MsrFault("MSR_SMM_FEATURE_CONTROL is locked")
        else:
            self.feature_control = value & (FEATURE_LOCK | FEATURE_SMM_CODE_CHK_EN)

    def _smm_only(self, in_smm: bool) -> None:
        if not in_smm:
            raise MsrFault("this MSR is accessible in SMM only")

    def _intel_only(self) -> None:
        if not self._intel:
            raise MsrFault(f"profile {self.profile.name} has no such MSR (QEMU raises #GP)")

    @property
    def code_check_enabled(self) -> bool:
        """SMM_Code_Chk_En: an SMM fetch outside SMRAM is a machine check."""
        return bool(self.feature_control & FEATURE_SMM_CODE_CHK_EN)

    @property
    def smrr_valid(self) -> bool:
        """PHYSMASK.V."""
        return bool(self.smrr_mask & (1 << 11))
