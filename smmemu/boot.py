"""Platform boot: the MM core into TSEG, per-CPU entry stubs, SMBASE relocation.

The steps mirror what OVMF and PiSmmCpuDxeSmm do before the first real SMI
(reference/smm_semantics.md 3 and 6):

1. The MM core image is copied into TSEG; the boot information (the comm
   buffers an IPL passes in HOBs, the TSEG range, PMBASE, the CPU count) is
   written next to it.
2. The SMI entry stub is copied to every CPU's future SMBASE+0x8000 with its
   CPU index patched in, as ``InstallSmiHandler`` copies and patches
   ``gcSmiHandlerTemplate``.
3. Each CPU, parked in HLT with the reset SMBASE 0x30000, is relocated one at
   a time (OvmfPkg ``SmmRelocationLib``): the relocation handler is copied to
   0x38000, the new SMBASE and the offset of the save state's SMBASE field are
   put in a mailbox, and an SMI IPI makes the CPU store the new SMBASE in its
   save state; RSM loads it (revision bit 17). The bytes at 0x38000 are
   restored afterwards.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from smmemu.cpu import Cpu
from smmemu.errors import ImageError
from smmemu.firmware.image import MmCoreImage
from smmemu.memory import PhysicalMemory
from smmemu.profiles import Profile, SaveStateKind
from smmemu.results import StopReason
from smmemu.uefi.communicate import MmCommBuffer

__all__ = ["RESET_SMBASE", "install_core", "install_entry_stubs", "relocate_smbases",
           "smbase_of"]

RESET_SMBASE = 0x3_0000
"""SMBASE after reset (edk2 SMM_DEFAULT_SMBASE; QEMU x86_cpu_reset)."""
_BOOT_INFO_SIGNATURE = b"SMEMBOOT"


def smbase_of(image: MmCoreImage, cpu: int) -> int:
    """CPU ``cpu``'s SMBASE after relocation: one tile per CPU from the TSEG base."""
    return image.constants["TSEG_BASE"] + cpu * image.constants["SMBASE_TILE"]


def install_core(image: MmCoreImage, memory: PhysicalMemory, profile: Profile,
                 comm_buffers: Sequence[tuple[int, int, int, int]], cpus: int, *,
                 traditional: bool = False, mmio: tuple[int, int] = (0, 0)) -> None:
    """Copy the image into TSEG and write its boot information.

    ``traditional`` selects edk2's PiSmmCore behaviour for traditional SMM drivers:
    requests handled in the comm buffer itself, and all DRAM mapped (NX) in SMM.
    ``mmio`` is a 2 MiB-aligned [start, end) window (the platform flash) the core maps
    uncached and NX; (0, 0) maps none.
    """
    memory.write(image.load_address, image.blob, smm=True)
    boot = bytearray(0x80)
    boot[0:8] = _BOOT_INFO_SIGNATURE
    struct.pack_into("<II", boot, 8, 1, len(comm_buffers))
    for index, address, pages, status in comm_buffers:
        record = MmCommBuffer(PhysicalStart=address, NumberOfPages=pages, Status=status)
        boot[0x10 + index * 0x18:0x28 + index * 0x18] = record.to_bytes()
    struct.pack_into("<QQQQQQ", boot, 0x40, profile.tseg_base, profile.tseg_size,
                     profile.pmbase, cpus, int(traditional), int(traditional))
    struct.pack_into("<QQ", boot, 0x70, *mmio)
    memory.write(image.constants["BOOT_INFO"], bytes(boot), smm=True)


def install_entry_stubs(image: MmCoreImage, memory: PhysicalMemory, cpus: int) -> None:
    """Copy the SMI entry stub to each CPU's SMBASE+0x8000 with its index patched in."""
    stub = bytearray(image.blob[image.offset("smi_entry"):image.offset("smi_entry_end")])
    index_at = image.symbols["smi_entry_cpu_index"] - image.symbols["smi_entry"]
    for cpu in range(cpus):
        struct.pack_into("<I", stub, index_at, cpu)
        memory.write(smbase_of(image, cpu) + 0x8000, bytes(stub), smm=True)


def relocate_smbases(image: MmCoreImage, memory: PhysicalMemory, profile: Profile,
                     cpus: Sequence[Cpu], budget: float) -> None:
    """Move every CPU's SMBASE from 0x30000 to its tile, one CPU at a time.

    Raises:
        ImageError: if a CPU does not come back with its new SMBASE.
    """
    handler = image.blob[image.offset("smm_relocation_entry"):image.offset("smm_relocation_end")]
    entry = RESET_SMBASE + 0x8000
    backup = memory.read(entry, len(handler), smm=False)
    field = 0xFF00 if profile.save_state is SaveStateKind.AMD64 else 0xFEF8
    memory.write(entry, handler, smm=False)
    for cpu in cpus:
        cpu.engine.invalidate_code(entry, entry + len(handler))
    try:
        for cpu in cpus:
            target = smbase_of(image, cpu.index)
            mailbox = struct.pack("<III", target, field, 0)
            memory.write(image.constants["RELOC_MAILBOX"], mailbox, smm=True)
            cpu.raise_smi()
            result = cpu.service_pending_smi(budget=budget)
            done = memory.read(image.constants["RELOC_DONE"], 4, smm=True)
            if result.stop is not StopReason.HALTED or done != b"\x01\x00\x00\x00":
                raise ImageError(f"CPU {cpu.index} did not relocate its SMBASE: "
                                 f"{result.stop.value} {result.detail}", path=str(image.path))
            if cpu.smbase != target:
                raise ImageError(f"CPU {cpu.index} has SMBASE {cpu.smbase:#x} after relocation, "
                                 f"expected {target:#x}", path=str(image.path))
    finally:
        memory.write(entry, backup, smm=False)
        for cpu in cpus:
            cpu.engine.invalidate_code(entry, entry + len(handler))
