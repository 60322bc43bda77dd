"""QEMU pflash_cfi01 model (smmemu/chipset/pflash.py): command set, QEMU quirks, edk2 sequences.

The edk2 replays follow OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c
(QemuFlashDetected, QemuFlashWrite, QemuFlashEraseBlock, QemuFlashRead) access
by access; the detection's final writability step is the newer one, also in
OvmfPkg/VirtHstiDxe/Flash.c.
"""

from __future__ import annotations

from typing import Protocol

import pytest

from smmemu.chipset.pflash import (
    FlashAccessError,
    FlashWrite,
    FlashWriteKind,
    PflashCfi01,
)
from smmemu.errors import ConfigError

BLOCK = 0x1000
VARS_BASE = 0xFFC0_0000 - 0x84000
READY = 0x80


def _pattern(size: int) -> bytes:
    """Bytes that are never 0x00, 0x50, 0x70 or 0xFF, and differ from their neighbours."""
    return bytes(0x11 + (i * 7) % 0x3B for i in range(size))


def _flash(*, read_only: bool = False, blocks: int = 4, data: bytes | None = None,
           ident: tuple[int, int, int, int] = (0, 0, 0, 0)) -> PflashCfi01:
    return PflashCfi01(_pattern(blocks * BLOCK) if data is None else data, base=VARS_BASE,
                       read_only=read_only, name="system.flash1", ident=ident)


class ByteBus(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class Ram:
    """What edk2 would see if the flash range were plain RAM."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.data[offset:offset + size] = value.to_bytes(size, "little")


class Rom(Ram):
    """What edk2 would see if the flash range ignored writes."""

    def write(self, offset: int, size: int, value: int) -> None:
        pass


# -- edk2 replays -----------------------------------------------------------------
CLEAR_STATUS_CMD = 0x50
READ_STATUS_CMD = 0x70
WRITE_BYTE_CMD = 0x10
BLOCK_ERASE_CMD = 0x20
BLOCK_ERASE_CONFIRM_CMD = 0xD0
READ_ARRAY_CMD = 0xFF
CLEARED_ARRAY_STATUS = 0x00


def edk2_qemu_flash_detected(bus: ByteBus, block_size: int = BLOCK) -> str:
    """QemuFlashDetected(): the conclusion edk2 logs, from the same byte accesses."""
    for offset in range(block_size):
        probe = bus.read(offset, 1)
        if probe not in (CLEAR_STATUS_CMD, READ_STATUS_CMD, CLEARED_ARRAY_STATUS):
            break
    else:
        return "no probe location"
    original = bus.read(offset, 1)
    bus.write(offset, 1, CLEAR_STATUS_CMD)
    probe = bus.read(offset, 1)
    if original != CLEAR_STATUS_CMD and probe == CLEAR_STATUS_CMD:
        bus.write(offset, 1, original)
        return "RAM"
    bus.write(offset, 1, READ_STATUS_CMD)
    probe = bus.read(offset, 1)
    if probe == original:
        return "ROM"
    if probe == READ_STATUS_CMD:
        bus.write(offset, 1, original)
        return "RAM"
    if probe == CLEARED_ARRAY_STATUS:
        bus.write(offset, 1, WRITE_BYTE_CMD)
        bus.write(offset, 1, original)
        bus.write(offset, 1, READ_STATUS_CMD)
        probe = bus.read(offset, 1)
        bus.write(offset, 1, READ_ARRAY_CMD)
        return "FLASH, write-protected" if probe & 0x10 else "FLASH, writable"
    return "unknown"


def edk2_qemu_flash_write(bus: ByteBus, lba: int, offset: int, data: bytes) -> None:
    """QemuFlashWrite(): 0x10 + data per byte, then 0xFF at the last byte."""
    ptr = lba * BLOCK + offset
    for index, byte in enumerate(data):
        bus.write(ptr + index, 1, WRITE_BYTE_CMD)
        bus.write(ptr + index, 1, byte)
    if data:
        bus.write(ptr + len(data) - 1, 1, READ_ARRAY_CMD)


def edk2_qemu_flash_erase_block(bus: ByteBus, lba: int) -> None:
    """QemuFlashEraseBlock(): 0x20, 0xD0 at the block's first byte, and nothing else."""
    bus.write(lba * BLOCK, 1, BLOCK_ERASE_CMD)
    bus.write(lba * BLOCK, 1, BLOCK_ERASE_CONFIRM_CMD)


def edk2_qemu_flash_read(bus: ByteBus, lba: int, offset: int, count: int) -> bytes:
    """QemuFlashRead(): a CopyMem from the mapped flash."""
    ptr = lba * BLOCK + offset
    return bytes(bus.read(ptr + i, 1) for i in range(count))


# -- read-array mode ----------------------------------------------------------------
def test_reset_state_reads_array_bytes_little_endian() -> None:
    flash = _flash()
    raw = flash.contents
    assert flash.read(0x10, 1) == raw[0x10]
    assert flash.read(0x10, 2) == int.from_bytes(raw[0x10:0x12], "little")
    assert flash.read(0x13, 4) == int.from_bytes(raw[0x13:0x17], "little")
    assert flash.read(0x18, 8) == int.from_bytes(raw[0x18:0x20], "little")


def test_contents_is_a_copy_and_input_is_not_aliased() -> None:
    data = bytearray(_pattern(BLOCK))
    flash = PflashCfi01(data, base=0, read_only=False)
    data[0] = 0x00
    snapshot = flash.contents
    flash.write(0, 1, 0x10)
    flash.write(0, 1, 0x99)
    assert (snapshot[0], flash.contents[0]) == (_pattern(1)[0], 0x99)


# -- status register ------------------------------------------------------------------
def test_read_status_returns_ready_until_read_array() -> None:
    flash = _flash()
    flash.write(0x20, 1, 0x70)
    assert [flash.read(0x20, 1), flash.read(0x777, 1)] == [READY, READY]
    flash.write(0x20, 1, 0xFF)
    assert flash.read(0x20, 1) == flash.contents[0x20]


def test_status_read_wider_than_two_bytes_repeats_in_bits_16_to_23() -> None:
    flash = _flash()
    flash.write(0, 1, 0x70)
    assert flash.read(0, 2) == 0x0080
    assert flash.read(0, 4) == 0x0080_0080
    assert flash.read(0, 8) == 0x0080_0080_0080_0080


def test_clear_status_zeroes_status_and_returns_to_read_array() -> None:
    flash = _flash(read_only=True)
    flash.write(0, 1, 0x10)
    flash.write(0, 1, 0x00)                      # refused: status 0x90
    flash.write(0, 1, 0x50)
    assert flash.read(0, 1) == flash.contents[0]
    flash.write(0, 1, 0x70)
    assert flash.read(0, 1) == 0x00


@pytest.mark.parametrize("command", [0xFF, 0x00, 0xF0, 0x42])
def test_read_array_alias_and_unknown_commands_return_to_read_array(command: int) -> None:
    flash = _flash()
    flash.write(0, 1, 0x70)
    flash.write(0, 1, command)
    assert flash.read(0, 1) == flash.contents[0]


def test_reset_restores_read_array_and_ready_status() -> None:
    flash = _flash()
    flash.write(0, 1, 0x50)
    flash.write(0, 1, 0x70)
    assert flash.read(0, 1) == 0x00
    flash.reset()
    assert flash.read(0, 1) == flash.contents[0]
    flash.write(0, 1, 0x70)
    assert flash.read(0, 1) == READY


# -- program ----------------------------------------------------------------------------
def test_program_overwrites_existing_bits_instead_of_anding() -> None:
    flash = _flash(data=b"\xf0" + b"\xff" * (BLOCK - 1))
    flash.write(0, 1, 0x10)
    flash.write(0, 1, 0x0F)
    assert flash.contents[0] == 0x0F             # real NOR would give 0x00


@pytest.mark.parametrize("command", [0x10, 0x40])
def test_program_writes_data_then_reads_status_until_read_array(command: int) -> None:
    flash = _flash()
    flash.write(0x123, 1, command)
    flash.write(0x123, 1, 0x5A)
    assert flash.read(0x123, 1) == READY
    flash.write(0x123, 1, 0xFF)
    assert flash.read(0x123, 1) == 0x5A
    assert flash.writes == [FlashWrite(FlashWriteKind.PROGRAM, command, 0x123, 1)]


def test_program_data_byte_is_not_decoded_as_command() -> None:
    flash = _flash()
    flash.write(5, 1, 0x10)
    flash.write(5, 1, 0xFF)
    assert (flash.contents[5], flash.read(5, 1)) == (0xFF, READY)


def test_program_width_is_the_access_size() -> None:
    flash = _flash()
    flash.write(0x40, 1, 0x10)
    flash.write(0x40, 4, 0xDDCC_BBAA)
    assert flash.contents[0x40:0x45] == b"\xaa\xbb\xcc\xdd" + _pattern(0x45)[0x44:0x45]


def test_eight_byte_write_is_two_dword_cycles_low_half_first() -> None:
    flash = _flash()
    flash.write(0x80, 1, 0x10)
    flash.write(0x80, 8, 0x0000_0070_4433_2211)  # low dword programs, high dword is 0x70
    assert flash.contents[0x80:0x88] == b"\x11\x22\x33\x44" + _pattern(0x88)[0x84:0x88]
    assert flash.read(0x80, 1) == READY


# -- erase ------------------------------------------------------------------------------
def test_block_erase_sets_only_the_containing_block_to_ff() -> None:
    flash = _flash()
    before = flash.contents
    flash.write(BLOCK + 0x345, 1, 0x20)
    flash.write(BLOCK + 0x345, 1, 0xD0)
    after = flash.contents
    assert after[BLOCK:2 * BLOCK] == b"\xff" * BLOCK
    assert after[:BLOCK] == before[:BLOCK]
    assert after[2 * BLOCK:] == before[2 * BLOCK:]
    assert flash.writes == [FlashWrite(FlashWriteKind.ERASE, 0x20, BLOCK, BLOCK)]


def test_block_erase_happens_at_the_erase_command_before_confirm() -> None:
    flash = _flash()
    flash.write(0, 1, 0x20)
    assert flash.contents[:BLOCK] == b"\xff" * BLOCK


def test_erase_confirm_leaves_status_mode_until_next_command() -> None:
    flash = _flash()
    edk2_qemu_flash_erase_block(flash, 2)
    assert flash.read(2 * BLOCK, 1) == READY
    flash.write(2 * BLOCK, 1, 0xFF)
    assert flash.read(2 * BLOCK, 1) == 0xFF


def test_erase_with_bad_confirm_returns_to_read_array_without_error_bits() -> None:
    flash = _flash()
    flash.write(0, 1, 0x20)
    flash.write(0, 1, 0x42)
    assert flash.read(0, 1) == 0xFF              # read-array, and the block stays erased
    flash.write(0, 1, 0x70)
    assert flash.read(0, 1) == READY


# -- read-only device ---------------------------------------------------------------------
def test_read_only_device_refuses_program() -> None:
    flash = _flash(read_only=True)
    before = flash.contents
    flash.write(7, 1, 0x10)
    flash.write(7, 1, 0x00)
    assert flash.contents == before
    assert flash.read(7, 1) == 0x90              # ready | program error
    assert flash.writes == [FlashWrite(FlashWriteKind.REFUSED, 0x10, 7, 1)]


def test_read_only_device_refuses_erase() -> None:
    flash = _flash(read_only=True)
    before = flash.contents
    flash.write(BLOCK, 1, 0x20)
    flash.write(BLOCK, 1, 0xD0)
    assert flash.contents == before
    assert flash.read(BLOCK, 1) == 0xA0          # ready | erase error
    assert flash.writes == [FlashWrite(FlashWriteKind.REFUSED, 0x20, BLOCK, BLOCK)]


# -- identifier and CFI ------------------------------------------------------------------
def test_read_identifier_returns_id_words_by_low_address_byte() -> None:
    flash = _flash(ident=(0x0089, 0x0018, 0x0012, 0x0034))
    flash.write(0, 1, 0x90)
    assert flash.read(0, 2) == 0x8918
    assert flash.read(0, 1) == 0x18
    assert flash.read(1, 2) == 0x1234
    assert flash.read(0x101, 2) == 0x1234
    assert flash.read(2, 1) == 0


def test_q35_identifier_reads_zero_instead_of_array() -> None:
    flash = _flash()
    flash.write(0, 1, 0x90)
    assert [flash.read(i, 1) for i in range(4)] == [0, 0, 0, 0]


def test_cfi_query_returns_qemu_table() -> None:
    flash = _flash(blocks=0x84)                  # 528 KiB, the 4 MiB OVMF_VARS layout
    flash.write(0x55, 1, 0x98)
    table = [flash.read(i, 1) for i in range(0x60)]
    assert bytes(table[0x10:0x13]) == b"QRY"
    assert table[0x13:0x15] == [0x01, 0x00]      # Intel/Sharp command set
    assert table[0x15] == 0x31
    assert bytes(table[0x31:0x36]) == b"PRI10"
    assert table[0x27] == 14                     # QEMU: ctz32(0x84000), not log2
    assert table[0x2A] == 8                      # 256-byte write buffer
    assert table[0x2C] == 1
    assert table[0x2D:0x31] == [0x83, 0x00, 0x10, 0x00]
    assert table[0x52:] == [0] * 14
    assert flash.read(0x110, 4) == ord("Q")      # offset & 0xFF; one byte whatever the width


def test_query_mode_ignores_writes_other_than_read_array() -> None:
    flash = _flash()
    flash.write(0, 1, 0x98)
    flash.write(0, 1, 0x70)
    flash.write(0, 1, 0x50)
    assert flash.read(0x10, 1) == ord("Q")
    flash.write(0, 1, 0xFF)
    assert flash.read(0x10, 1) == flash.contents[0x10]


# -- lock setup ------------------------------------------------------------------------
@pytest.mark.parametrize(("second", "reads_status"), [(0xD0, True), (0x01, True), (0x42, False)])
def test_lock_setup_is_accepted_without_locking(second: int, reads_status: bool) -> None:
    flash = _flash()
    flash.write(0, 1, 0x60)
    flash.write(0, 1, second)
    assert (flash.read(0, 1) == READY) is reads_status
    flash.write(0, 1, 0x10)
    flash.write(0, 1, 0x33)
    assert flash.contents[0] == 0x33


# -- write to buffer -------------------------------------------------------------------
def _buffer_write(flash: PflashCfi01, offset: int, data: bytes, *, confirm: int = 0xD0) -> None:
    flash.write(offset, 1, 0xE8)
    flash.write(offset, 1, len(data) - 1)
    for index, byte in enumerate(data):
        flash.write(offset + index, 1, byte)
    flash.write(offset, 1, confirm)


def test_write_to_buffer_commits_only_on_confirm() -> None:
    flash = _flash()
    flash.write(0x210, 1, 0xE8)
    flash.write(0x210, 1, 2)
    for index, byte in enumerate(b"abc"):
        flash.write(0x210 + index, 1, byte)
    assert flash.contents[0x210:0x213] == _pattern(0x213)[0x210:]
    assert flash.read(0x210, 1) == READY
    flash.write(0x210, 1, 0xD0)
    assert flash.contents[0x210:0x213] == b"abc"
    assert flash.writes == [FlashWrite(FlashWriteKind.PROGRAM, 0xE8, 0x200, 0x100)]


def test_write_to_buffer_without_confirm_is_discarded() -> None:
    flash = _flash()
    before = flash.contents
    _buffer_write(flash, 0x210, b"abc", confirm=0xFF)
    assert flash.contents == before
    assert flash.read(0x210, 1) == before[0x210]


def test_write_to_buffer_of_one_unit_is_refused_like_qemu() -> None:
    flash = _flash()
    before = flash.contents
    _buffer_write(flash, 0x210, b"a")            # count 0: QEMU never opens the buffer
    assert flash.contents == before
    flash.write(0, 1, 0x70)
    assert flash.read(0, 1) == 0x90


def test_write_to_buffer_outside_its_window_sets_program_error() -> None:
    flash = _flash()
    before = flash.contents
    flash.write(0x2F0, 1, 0xE8)
    flash.write(0x2F0, 1, 1)
    flash.write(0x2FF, 1, 0x61)
    flash.write(0x300, 1, 0x62)                  # next 256-byte window
    assert flash.read(0, 1) == 0x90
    flash.write(0x2F0, 1, 0xD0)                  # the error aborts the commit
    assert flash.contents == before


def test_write_to_buffer_on_read_only_device_is_refused() -> None:
    flash = _flash(read_only=True)
    before = flash.contents
    _buffer_write(flash, 0x10, b"xyz")
    assert flash.contents == before
    assert flash.writes == [FlashWrite(FlashWriteKind.REFUSED, 0xE8, 0x10, 3)]


# -- edk2 sequences --------------------------------------------------------------------
def test_edk2_detection_replay_tells_ram_and_rom_apart() -> None:
    assert edk2_qemu_flash_detected(Ram(_pattern(BLOCK))) == "RAM"
    assert edk2_qemu_flash_detected(Rom(_pattern(BLOCK))) == "ROM"


def test_edk2_detection_sequence_sees_writable_flash() -> None:
    flash = _flash()
    before = flash.contents
    assert edk2_qemu_flash_detected(flash) == "FLASH, writable"
    assert flash.contents == before
    assert flash.read(0, 1) == before[0]         # left in read-array mode


def test_edk2_detection_skips_bytes_that_look_like_status() -> None:
    flash = _flash(data=b"\x00\x50\x70" + _pattern(BLOCK - 3))
    assert edk2_qemu_flash_detected(flash) == "FLASH, writable"
    assert flash.writes == [FlashWrite(FlashWriteKind.PROGRAM, 0x10, 3, 1)]


def test_edk2_detection_sequence_sees_read_only_flash_as_write_protected() -> None:
    flash = _flash(read_only=True)
    before = flash.contents
    assert edk2_qemu_flash_detected(flash) == "FLASH, write-protected"
    assert flash.contents == before


def test_edk2_erase_write_read_round_trip() -> None:
    flash = _flash()
    edk2_qemu_flash_erase_block(flash, 1)
    edk2_qemu_flash_write(flash, 1, 0x10, b"VARSTORE")
    edk2_qemu_flash_write(flash, 1, 0x18, b"\x00\x01")
    assert edk2_qemu_flash_read(flash, 1, 0x0E, 14) == b"\xff\xffVARSTORE\x00\x01\xff\xff"
    assert flash.contents[BLOCK:2 * BLOCK] == (b"\xff" * 0x10 + b"VARSTORE\x00\x01"
                                               + b"\xff" * (BLOCK - 0x1A))
    assert flash.writes == [FlashWrite(FlashWriteKind.ERASE, 0x20, BLOCK, BLOCK),
                            FlashWrite(FlashWriteKind.PROGRAM, 0x10, BLOCK + 0x10, 10)]


# -- bad accesses and configuration ----------------------------------------------------
@pytest.mark.parametrize(("offset", "size"), [(4 * BLOCK, 1), (4 * BLOCK - 1, 2), (-1, 1),
                                              (4 * BLOCK - 4, 8), (0, 3), (0, 16)])
def test_bad_access_raises_and_changes_nothing(offset: int, size: int) -> None:
    flash = _flash()
    before = flash.contents
    with pytest.raises(FlashAccessError) as info:
        flash.read(offset, size)
    assert (info.value.offset, info.value.size, info.value.device) == (offset, size,
                                                                       "system.flash1")
    flash.write(0, 1, 0x10)
    with pytest.raises(ValueError, match=r"system\.flash1"):
        flash.write(offset, size, 0)
    flash.write(0, 1, 0x77)                      # the program cycle is still pending
    assert flash.contents == bytes([0x77]) + before[1:]


def test_write_value_wider_than_access_raises() -> None:
    flash = _flash()
    with pytest.raises(FlashAccessError, match="does not fit"):
        flash.write(0, 1, 0x100)
    with pytest.raises(FlashAccessError):
        flash.write(0, 2, -1)


@pytest.mark.parametrize(("data", "block_size"), [(b"", BLOCK), (b"\xff" * (BLOCK + 1), BLOCK),
                                                  (b"\xff" * 0x3000, 0x3000)])
def test_constructor_rejects_sizes_qemu_rejects(data: bytes, block_size: int) -> None:
    with pytest.raises(ConfigError):
        PflashCfi01(data, base=0, read_only=False, block_size=block_size)


def test_device_exposes_base_size_and_name() -> None:
    flash = _flash()
    assert (flash.base, flash.size, flash.name) == (VARS_BASE, 4 * BLOCK, "system.flash1")
