"""Narrowing the MM core's SMRAM page-table entries to a loaded image's section permissions.

The MM core maps TSEG with 4 KiB pages, present, writable and executable, one page table per
2 MiB taken from its pool (firmware_blobs/mm_core/core.s, ``core_init_smram_pt``). After an
image is loaded the host sets each of its pages to what the section table asks: code
read-only and executable, data writable and NX, headers and read-only data NX and not
writable. This is edk2's SMM image protection (PiSmmCore ``SmmProtectImage`` /
``SetUefiImageMemoryAttributes``, effective for images with 4 KiB section alignment) and
what PiSmmCpuDxeSmm enforces with CR0.WP set, which the core sets.

Entries are found by walking the core's fixed tables: PD0 covers the low 4 GiB with four
consecutive page directories (one per GiB), so the PD entry of ``address`` is at
``PD0 + (address >> 21) * 8`` and the PTE at ``table + ((address >> 12) & 0x1FF) * 8``
(Intel SDM Vol. 3A, 4.5).
"""

from __future__ import annotations

import struct

from smmemu.errors import ConfigError
from smmemu.memory import PhysicalMemory

__all__ = ["set_page_permissions"]

PAGE = 0x1000
_PRESENT, _WRITABLE, _LARGE = 0x1, 0x2, 0x80
_NX = 1 << 63
_ADDRESS = 0x000F_FFFF_FFFF_F000
_Q = struct.Struct("<Q")


def set_page_permissions(memory: PhysicalMemory, pd0: int, start: int, size: int, *,
                         writable: bool, executable: bool) -> None:
    """Set RW and NX of every 4 KiB page of [start, start + size).

    Raises:
        ConfigError: a page is not mapped by a 4 KiB page table of the core (not SMRAM).
    """
    for page in range(start & ~(PAGE - 1), start + size, PAGE):
        pde_at = pd0 + (page >> 21) * 8
        (pde,) = _Q.unpack(memory.read(pde_at, 8, smm=True))
        if not pde & _PRESENT or pde & _LARGE:
            raise ConfigError(f"page {page:#x} has no 4 KiB page table in the MM core's tables",
                              field="page", value=page)
        pte_at = (pde & _ADDRESS) + ((page >> 12) & 0x1FF) * 8
        (pte,) = _Q.unpack(memory.read(pte_at, 8, smm=True))
        pte = pte | _WRITABLE if writable else pte & ~_WRITABLE
        pte = pte & ~_NX if executable else pte | _NX
        memory.write(pte_at, _Q.pack(pte), smm=True)
