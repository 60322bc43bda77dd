"""PCI configuration space for the two functions SMM cares about: the Q35 MCH and the ICH9 LPC.

Access paths: the legacy CONFIG_ADDRESS / CONFIG_DATA ports (0xCF8 / 0xCFC,
mechanism #1) and PCI Express ECAM MMIO at 0xB0000000 (``PCI_EXPRESS_BASE_ADDRESS``
on Q35; address = bus << 20 | device << 15 | function << 12 | register,
reference/comm_protocols.md 2.5). Functions nobody decodes read all-ones.

Register facts (reference/smm_semantics.md 4.3 and 5.2; edk2
``OvmfPkg/Include/IndustryStandard/Q35MchIch9.h``; QEMU ``hw/pci-host/q35.c``
and ``hw/isa/lpc_ich9.c``):

* MCH (0:0.0): SMRAM at 0x9D (D_OPEN bit 6, D_CLS 5, D_LCK 4, G_SMRAME 3,
  C_BASE_SEG 2:0 = 010 hard-wired), ESMRAMC at 0x9E (H_SMRAME 7, TSEG_SZ 2:1,
  T_EN 0), TSEGMB at 0xAC (MiB in 31:20), TOLUD at 0xB0. Once D_LCK is set,
  D_OPEN is cleared, only D_CLS stays writable in SMRAM, and ESMRAMC and
  TSEGMB are frozen. TSEG hides SMRAM from non-SMM accesses only while
  T_EN and G_SMRAME are both set.
* LPC (0:31.0): PMBASE at 0x40, ACPI_CNTL at 0x44 (ACPI_EN bit 7),
  GEN_PMCON_1 at 0xA0 (SMI_LOCK bit 4, sticky once set; it removes
  GBL_SMI_EN from SMI_EN's writable bits), GEN_PMCON_3 at 0xA4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "ECAM_BASE",
    "ECAM_SIZE",
    "ConfigAddressPorts",
    "Ich9Lpc",
    "PciBus",
    "Q35Mch",
    "RefusedWrite",
]

ECAM_BASE = 0xB000_0000
ECAM_SIZE = 0x1000_0000

SMRAM = 0x9D
ESMRAMC = 0x9E
TSEGMB = 0xAC
TOLUD = 0xB0
D_OPEN, D_CLS, D_LCK, G_SMRAME = 1 << 6, 1 << 5, 1 << 4, 1 << 3
C_BASE_SEG = 0b010
H_SMRAME, TSEG_SZ_MASK, T_EN = 1 << 7, 0b110, 1 << 0
TSEG_SZ_8MB = 0b100

PMBASE = 0x40
ACPI_CNTL = 0x44
GEN_PMCON_1 = 0xA0
GEN_PMCON_3 = 0xA4
SMI_LOCK = 1 << 4


@dataclass(frozen=True, slots=True)
class RefusedWrite:
    """A configuration write that a lock (D_LCK, SMI_LOCK) kept from taking effect."""

    function: str
    register: int
    value: int
    reason: str


class _Function:
    """A function's 4 KiB configuration space with byte-wise write handling."""

    name = "function"

    def __init__(self, vendor: int, device: int) -> None:
        self.space = bytearray(0x1000)
        self.space[0:2] = vendor.to_bytes(2, "little")
        self.space[2:4] = device.to_bytes(2, "little")

    def read(self, register: int, size: int) -> int:
        return int.from_bytes(self.space[register:register + size], "little")

    def write(self, register: int, size: int, value: int) -> None:
        for index in range(size):
            self.write_byte(register + index, (value >> (8 * index)) & 0xFF)

    def write_byte(self, register: int, value: int) -> None:
        """Default: configuration header and unknown registers are read only."""
        del register, value


class Q35Mch(_Function):
    """The Q35 host bridge's SMRAM controls."""

    name = "MCH 0:0.0"

    def __init__(self, tseg_base: int, tolud: int, on_change: Callable[[], None],
                 refused: list[RefusedWrite]) -> None:
        super().__init__(0x8086, 0x29C0)
        self._on_change = on_change
        self._refused = refused
        self.space[SMRAM] = C_BASE_SEG | G_SMRAME
        self.space[ESMRAMC] = TSEG_SZ_8MB | T_EN
        self.space[TSEGMB:TSEGMB + 4] = tseg_base.to_bytes(4, "little")
        self.space[TOLUD:TOLUD + 2] = (tolud >> 16).to_bytes(2, "little")

    @property
    def locked(self) -> bool:
        """D_LCK."""
        return bool(self.space[SMRAM] & D_LCK)

    @property
    def tseg_closed(self) -> bool:
        """TSEG hides SMRAM from non-SMM accesses (T_EN and G_SMRAME)."""
        return bool(self.space[ESMRAMC] & T_EN and self.space[SMRAM] & G_SMRAME)

    def write_byte(self, register: int, value: int) -> None:
        """SMRAM, ESMRAMC and TSEGMB writes, honouring D_LCK."""
        before = self.tseg_closed
        if register == SMRAM:
            if self.locked:
                new = (self.space[SMRAM] & ~D_CLS) | (value & D_CLS)
                if value & ~(D_CLS | D_LCK | C_BASE_SEG) & 0xFF or not value & D_LCK:
                    self._refused.append(RefusedWrite(self.name, register, value, "D_LCK set"))
            else:
                new = (value & (D_OPEN | D_CLS | D_LCK | G_SMRAME)) | C_BASE_SEG
                if new & D_LCK:
                    new &= ~D_OPEN
            self.space[SMRAM] = new
        elif register == ESMRAMC or TSEGMB <= register < TSEGMB + 4:
            if self.locked:
                self._refused.append(RefusedWrite(self.name, register, value, "D_LCK set"))
                return
            if register == ESMRAMC:
                self.space[ESMRAMC] = value & (H_SMRAME | TSEG_SZ_MASK | T_EN)
            else:
                self.space[register] = value & (0xF0 if register == TSEGMB + 2 else 0xFF)
        if self.tseg_closed != before:
            self._on_change()


class Ich9Lpc(_Function):
    """The ICH9 LPC bridge: PMBASE, ACPI_CNTL, GEN_PMCON_1/3."""

    name = "LPC 0:31.0"

    def __init__(self, pmbase: int, on_pmbase: Callable[[int], None],
                 refused: list[RefusedWrite]) -> None:
        super().__init__(0x8086, 0x2918)
        self._on_pmbase = on_pmbase
        self._refused = refused
        self.space[PMBASE:PMBASE + 4] = (pmbase | 1).to_bytes(4, "little")
        self.space[ACPI_CNTL] = 0x80

    @property
    def smi_lock(self) -> bool:
        """GEN_PMCON_1.SMI_LOCK."""
        return bool(self.space[GEN_PMCON_1] & SMI_LOCK)

    @property
    def pmbase(self) -> int:
        """The ACPI/PM I/O base (bits 15:7)."""
        return self.read(PMBASE, 4) & 0xFF80

    def write_byte(self, register: int, value: int) -> None:
        """PMBASE (moves the PM block), ACPI_CNTL and GEN_PMCON writes, honouring SMI_LOCK."""
        if PMBASE <= register < PMBASE + 2:
            old = self.pmbase
            self.space[register] = (value & 0x80) | 1 if register == PMBASE else value
            if self.pmbase != old:
                self._on_pmbase(self.pmbase)
        elif register == ACPI_CNTL:
            self.space[register] = value & 0x87
        elif register == GEN_PMCON_1:
            if self.smi_lock and not value & SMI_LOCK:
                self._refused.append(RefusedWrite(self.name, register, value,
                                                  "SMI_LOCK is sticky"))
            self.space[register] = (value & 0x1F) | (self.space[register] & SMI_LOCK)
        elif register in (GEN_PMCON_1 + 1, GEN_PMCON_3):
            self.space[register] = value


@dataclass(slots=True)
class PciBus:
    """Bus 0 with the functions smmemu models."""

    functions: dict[tuple[int, int, int], _Function] = field(default_factory=dict)

    def read(self, bus: int, device: int, function: int, register: int, size: int) -> int:
        """A configuration read; all-ones for absent functions."""
        target = self.functions.get((bus, device, function))
        if target is None:
            return (1 << (8 * size)) - 1
        return target.read(register & 0xFFF, size)

    def write(self, bus: int, device: int, function: int, register: int, size: int,
              value: int) -> None:
        """A configuration write; ignored for absent functions."""
        target = self.functions.get((bus, device, function))
        if target is not None:
            target.write(register & 0xFFF, size, value)

    def ecam_read(self, offset: int, size: int) -> int:
        """An ECAM MMIO read at ``offset`` from ECAM_BASE."""
        return self.read(offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 7,
                         offset & 0xFFF, size)

    def ecam_write(self, offset: int, size: int, value: int) -> None:
        """An ECAM MMIO write."""
        self.write(offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 7, offset & 0xFFF,
                   size, value)


class ConfigAddressPorts:
    """CONFIG_ADDRESS (0xCF8) and CONFIG_DATA (0xCFC..0xCFF), as one 8-port block."""

    def __init__(self, bus: PciBus) -> None:
        self._bus = bus
        self.address = 0

    def _target(self, offset: int) -> tuple[int, int, int, int] | None:
        if not self.address & (1 << 31):
            return None
        register = (self.address & 0xFC) + (offset - 4)
        return ((self.address >> 16) & 0xFF, (self.address >> 11) & 0x1F,
                (self.address >> 8) & 7, register)

    def port_read(self, offset: int, size: int) -> int:
        """IN from 0xCF8..0xCFF."""
        if offset < 4:
            return (self.address >> (8 * offset)) & ((1 << (8 * size)) - 1)
        target = self._target(offset)
        if target is None:
            return (1 << (8 * size)) - 1
        return self._bus.read(*target, size)

    def port_write(self, offset: int, size: int, value: int) -> None:
        """OUT to 0xCF8..0xCFF."""
        if offset == 0 and size == 4:
            self.address = value & 0x80FF_FFFC
            return
        target = self._target(offset)
        if target is not None:
            self._bus.write(*target, size, value)
