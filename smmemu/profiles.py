"""Platform profiles: the facts that differ between the machines smmemu models.

``q35`` is QEMU's Q35/ICH9 machine as OVMF sees it: the AMD64-style save-state
map QEMU writes at SMBASE+0xFE00 with revision 0x00020064, QEMU's masked write
to SMI_STS, no APM_STS latching in SMI_STS, no EOS gating
(reference/smm_semantics.md 1.3, 2.2, 5.1-5.2). ``intel`` is an ICH9 board with
an Intel 64 CPU: the SDM's map at SMBASE+0xFC00 with revision 0x00030064 and
IOMisc, write-1-to-clear SMI_STS, APM_STS set on APM_CNT writes, and EOS gating
(smm_semantics.md 2.1, 2.4, 5.2).

Both profiles share one physical memory layout, so the one MM core image fits
both: 128 MiB of low DRAM with an 8 MiB TSEG at its top (OVMF's default
``PcdQ35TsegMbytes`` is 8) and PMBASE at 0x600 (``ICH9_PMBASE_VALUE``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smmemu.errors import ProfileError

__all__ = ["PROFILE_NAMES", "Profile", "SaveStateKind", "SmiStsWrite", "get_profile"]


class SaveStateKind(enum.Enum):
    """Which architectural save-state map a CPU writes on SMI entry."""

    AMD64 = "amd64"
    """QEMU / AMD64 layout at SMBASE+0xFE00 (edk2 ``AMD_SMRAM_SAVE_STATE_MAP64``)."""
    INTEL64 = "intel64"
    """Intel 64 layout at SMBASE+0xFC00 (edk2 ``SMRAM_SAVE_STATE_MAP64``)."""


class SmiStsWrite(enum.Enum):
    """How writes to SMI_STS (PMBASE+0x34) behave."""

    QEMU_MASKED = "qemu-masked"
    """``sts = (sts & ~wmask) | (val & wmask)`` with only SWSMI/PERIODIC writable (QEMU)."""
    WRITE_ONE_TO_CLEAR = "rw1c"
    """Hardware: writing 1 to a bit clears it."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything platform-specific that the Machine is built from."""

    name: str
    description: str
    dram_size: int
    tseg_size: int
    smbase: int
    pmbase: int
    save_state: SaveStateKind
    smm_revision: int
    smi_sts_write: SmiStsWrite
    apm_sets_smi_sts: bool
    eos_gating: bool

    @property
    def tseg_base(self) -> int:
        """TSEG sits at the top of low DRAM: [TOLUD - size, TOLUD)."""
        return self.dram_size - self.tseg_size

    @property
    def save_state_offset(self) -> int:
        """Offset of the save-state map from SMBASE."""
        return 0xFE00 if self.save_state is SaveStateKind.AMD64 else 0xFC00


_MIB = 1 << 20
_TOLUD = 128 * _MIB
_TSEG = 8 * _MIB

_PROFILES = {
    "q35": Profile(
        name="q35",
        description="QEMU Q35/ICH9 as OVMF sees it (AMD64-style save state, revision 0x00020064)",
        dram_size=_TOLUD, tseg_size=_TSEG, smbase=_TOLUD - _TSEG, pmbase=0x600,
        save_state=SaveStateKind.AMD64, smm_revision=0x0002_0064,
        smi_sts_write=SmiStsWrite.QEMU_MASKED, apm_sets_smi_sts=False, eos_gating=False,
    ),
    "intel": Profile(
        name="intel",
        description="ICH9 with an Intel 64 CPU (Intel save state with IOMisc, revision 0x00030064)",
        dram_size=_TOLUD, tseg_size=_TSEG, smbase=_TOLUD - _TSEG, pmbase=0x600,
        save_state=SaveStateKind.INTEL64, smm_revision=0x0003_0064,
        smi_sts_write=SmiStsWrite.WRITE_ONE_TO_CLEAR, apm_sets_smi_sts=True, eos_gating=True,
    ),
}

PROFILE_NAMES = tuple(sorted(_PROFILES))


def get_profile(name: str) -> Profile:
    """Look a profile up by name.

    Raises:
        ProfileError: if ``name`` is not a known profile.
    """
    try:
        return _PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILE_NAMES)
        raise ProfileError(f"unknown profile {name!r} (known: {known})",
                           field="profile", value=name) from None
