"""The host's 4-level page walk (SDM Vol. 3A, "4-Level Paging"), used at RSM and I/O traps."""

from __future__ import annotations

from smmemu.smm.delivery import translate

PRESENT, WRITABLE, LARGE = 1 << 0, 1 << 1, 1 << 7
CR3 = 0x1000


def _tables() -> dict[int, int]:
    """PML4 at 0x1000 -> PDPT at 0x2000. PDPT[1] is a 1 GiB page at 0x8000_0000; PDPT[0]
    -> PD at 0x3000. PD[1] is a 2 MiB page at 0x60_0000; PD[0] -> PT at 0x4000, whose
    entry 5 maps 0x5000 to 0x9000 and whose entry 6 is not present."""
    return {
        0x1000: 0x2000 | PRESENT | WRITABLE,
        0x2000: 0x3000 | PRESENT | WRITABLE,
        0x2008: 0x8000_0000 | PRESENT | WRITABLE | LARGE,
        0x3000: 0x4000 | PRESENT | WRITABLE,
        0x3008: 0x60_0000 | PRESENT | WRITABLE | LARGE,
        0x4000 + 5 * 8: 0x9000 | PRESENT,
        0x4000 + 6 * 8: 0xA000,
    }


def _walk(linear: int) -> int | None:
    entries = _tables()
    return translate(lambda address: entries.get(address, 0), CR3, linear)


def test_4kib_page_keeps_the_offset_within_the_page() -> None:
    assert _walk(0x5123) == 0x9123


def test_2mib_page_maps_21_bits_of_offset() -> None:
    assert _walk(0x20_0000 + 0x1_2345) == 0x60_0000 + 0x1_2345


def test_1gib_page_maps_30_bits_of_offset() -> None:
    assert _walk(0x4000_0000 + 0x123_4567) == 0x8000_0000 + 0x123_4567


def test_entry_without_the_present_bit_does_not_translate() -> None:
    assert _walk(0x6000) is None


def test_missing_upper_level_does_not_translate() -> None:
    assert _walk(0x80_0000_0000) is None
