"""QEMU's ``pflash_cfi01`` parallel NOR flash, as q35/pc map it for OVMF.

Sources of the facts (read for behaviour only; nothing here is copied):

* QEMU ``hw/block/pflash_cfi01.c``: the command state machine, the status
  bits, the CFI table and the read-only handling. The write-to-buffer command
  follows the update buffer QEMU 9.0 added ("hw/pflash: implement update buffer
  for block writes") with the 9.0.1 fix that opens the buffer at the first data
  write rather than at the count write.
* QEMU ``hw/i386/pc_sysfw.c``: q35/pc create the device with ``width=1``,
  ``sector-length=4096``, no ``device-width`` and id0..id3 = 0; ``pflash0``
  (unit 0, OVMF_CODE, usually ``readonly=on``) ends at 4 GiB and ``pflash1``
  (OVMF_VARS) sits directly below it.
* edk2 ``OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c``: the accesses
  OVMF makes: ``QemuFlashDetected`` (0x50, read, 0x70, read; status 0x00 means
  flash), ``QemuFlashWrite`` (0x10 and the data byte per byte, then 0xFF) and
  ``QemuFlashEraseBlock`` (0x20, 0xD0, no 0xFF). edk2
  ``OvmfPkg/VirtHstiDxe/Flash.c`` runs the same probe and then adds a step
  (so do later copies of ``QemuFlashDetected``): program the probe byte over
  itself, read status, and call the flash write-protected if bit 4 is set.
* The Intel/Sharp command set (CFI primary command set 0x0001, JEDEC JESD68):
  0xFF read array, 0x70 read status, 0x50 clear status, 0x10/0x40 program,
  0x20 + 0xD0 block erase, 0x60 lock setup, 0x90 read identifier, 0x98 CFI
  query, 0xE8 write to buffer; status bit 7 ready, bit 5 erase error, bit 4
  program error.

Decisions (where QEMU differs from a real part, this model follows QEMU):

* Device width. q35 leaves ``device-width`` unset, so QEMU takes its legacy
  paths: a 1- or 2-byte status read returns the status byte, and a 4-byte read
  returns it in bits 0-7 and 16-23. Identifier reads decode ``offset & 0xFF``
  (0: id0 << 8 | id1, 1: id2 << 8 | id3, otherwise 0). CFI reads return
  ``table[offset & 0xFF]`` (0 past the 0x52-byte table) whatever the access size.
* Program overwrites. The programmed bytes replace the old ones (QEMU stores the
  value); a real part could only clear bits. The access size is the program width.
* Block erase happens when 0x20 is written, not at the 0xD0 confirm. 0xD0 only
  ends the sequence; any other second byte returns to read-array without an
  error bit, and the block stays erased.
* After program, erase, lock setup or write-to-buffer, reads return the status
  register until the next command. As a first cycle only 0xFF, 0x00, 0xF0,
  0x50 and unknown bytes return to read-array. In query mode every write other
  than 0xFF is ignored.
* Read-only (QEMU ``readonly=on``). Commands are still decoded; program sets
  status bit 4, erase bit 5 (each with bit 7) and the array is left alone.
* Status is 0x80 (ready) at creation and after :meth:`PflashCfi01.reset`, as in
  current QEMU.
* Access splitting. An 8-byte access is two 4-byte accesses, low half first,
  each its own bus cycle (QEMU's memory core does this for this device).
  Alignment is not checked: the bus that delivers an access decides how to split
  an unaligned one.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from smmemu.errors import ConfigError, SmmemuError

__all__ = ["CFI_TABLE_LENGTH", "FlashAccessError", "FlashCommand", "FlashStatus", "FlashWrite",
           "FlashWriteKind", "PflashCfi01"]

CFI_TABLE_LENGTH = 0x52
"""Bytes in QEMU's CFI query table; reads past it return 0."""
WRITE_BUFFER_BYTES = 1 << 8
"""Write-to-buffer window for a 1-byte-wide bank (CFI 0x2A = 8)."""
_ACCESS_SIZES = (1, 2, 4, 8)


class FlashCommand(enum.IntEnum):
    """Command bytes: the low byte of a bus write decoded as a command."""

    READ_ARRAY_ALT = 0x00
    LOCK_BLOCK = 0x01
    PROGRAM = 0x10
    BLOCK_ERASE = 0x20
    PROGRAM_ALT = 0x40
    CLEAR_STATUS = 0x50
    LOCK_SETUP = 0x60
    READ_STATUS = 0x70
    READ_ID = 0x90
    CFI_QUERY = 0x98
    CONFIRM = 0xD0
    WRITE_TO_BUFFER = 0xE8
    AMD_PROBE = 0xF0
    READ_ARRAY = 0xFF


class FlashStatus(enum.IntFlag):
    """Status register bits."""

    PROGRAM_ERROR = 1 << 4
    ERASE_ERROR = 1 << 5
    READY = 1 << 7


class FlashWriteKind(enum.Enum):
    """What a :class:`FlashWrite` did to the array."""

    PROGRAM = "program"
    ERASE = "erase"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class FlashWrite:
    """A change to the array, or one the device refused, for reports.

    ``command`` is the command that asked for it (0x10/0x40 program, 0x20 erase,
    0xE8 write to buffer). Events of the same kind and command that continue
    each other are merged, so an N-byte ``QemuFlashWrite`` is one event.
    """

    kind: FlashWriteKind
    command: int
    offset: int
    length: int


class FlashAccessError(SmmemuError, ValueError):
    """An access with a bad size, offset or value for the flash device."""

    def __init__(self, message: str, *, device: str, offset: int, size: int) -> None:
        super().__init__(message)
        self.device = device
        self.offset = offset
        self.size = size


class _Mode(enum.Enum):
    """What a read returns."""

    ARRAY = enum.auto()
    STATUS = enum.auto()
    IDENT = enum.auto()
    QUERY = enum.auto()


class _Step(enum.Enum):
    """What the next write means when it is not a fresh command."""

    PROGRAM_DATA = enum.auto()
    ERASE_CONFIRM = enum.auto()
    LOCK_CONFIRM = enum.auto()
    QUERY = enum.auto()
    BUFFER_COUNT = enum.auto()
    BUFFER_DATA = enum.auto()
    BUFFER_CONFIRM = enum.auto()


def _trailing_zeros32(value: int) -> int:
    """Count trailing zero bits of the low 32 bits (32 for zero), like QEMU's ctz32."""
    low = value & 0xFFFF_FFFF
    return 32 if low == 0 else (low & -low).bit_length() - 1


def _cfi_table(size: int, block_size: int) -> bytes:
    """The CFI query table QEMU builds for one device of a 1-byte-wide bank."""
    blocks_minus_one = size // block_size - 1
    table = bytearray(CFI_TABLE_LENGTH)
    fields = {
        0x10: ord("Q"), 0x11: ord("R"), 0x12: ord("Y"),
        0x13: 0x01, 0x15: 0x31,                          # Intel/Sharp set, PRI at 0x31
        0x1B: 0x45, 0x1C: 0x55,                          # Vcc min/max
        0x1F: 0x07, 0x20: 0x07, 0x21: 0x0A,              # typical timeouts
        0x23: 0x04, 0x24: 0x04, 0x25: 0x04,              # maximum timeouts
        0x27: _trailing_zeros32(size),                   # device size as QEMU computes it
        0x28: 0x02,                                      # x8/x16 interface
        0x2A: WRITE_BUFFER_BYTES.bit_length() - 1,       # write buffer 2^8 bytes
        0x2C: 0x01,                                      # one erase-block region
        0x2D: blocks_minus_one & 0xFF, 0x2E: (blocks_minus_one >> 8) & 0xFF,
        0x2F: (block_size >> 8) & 0xFF, 0x30: (block_size >> 16) & 0xFF,
        0x31: ord("P"), 0x32: ord("R"), 0x33: ord("I"), 0x34: ord("1"), 0x35: ord("0"),
        0x3F: 0x01,                                      # protection fields
    }
    for index, value in fields.items():
        table[index] = value
    return bytes(table)


@dataclass(slots=True)
class _WriteBuffer:
    """Staged bytes of one write-to-buffer sequence, committed only on 0xD0."""

    offset: int
    data: bytearray

    def covers(self, offset: int, size: int) -> bool:
        """True when ``size`` bytes at ``offset`` lie inside the staged window."""
        return self.offset <= offset and offset + size <= self.offset + len(self.data)

    def put(self, offset: int, payload: bytes) -> None:
        """Stage ``payload`` at device ``offset`` (inside the window)."""
        start = offset - self.offset
        self.data[start:start + len(payload)] = payload


class PflashCfi01:
    """One QEMU ``pflash_cfi01`` device: a byte array behind the Intel/Sharp command set.

    ``read``/``write`` take offsets relative to ``base``. ``contents`` is what a
    user saves back as the new VARS file; ``writes`` lists programs, erases and
    refusals for reports.
    """

    def __init__(self, data: bytes | bytearray, *, base: int, read_only: bool,
                 block_size: int = 0x1000, name: str = "pflash",
                 ident: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        if block_size <= 0 or block_size & (block_size - 1):
            raise ConfigError(f"{name}: block size {block_size:#x} is not a power of two",
                              field="block_size", value=block_size)
        if not data or len(data) % block_size:
            raise ConfigError(f"{name}: size {len(data):#x} is not a non-zero multiple of "
                              f"the block size {block_size:#x}", field="data", value=len(data))
        if base < 0:
            raise ConfigError(f"{name}: negative base {base:#x}", field="base", value=base)
        if any(not 0 <= word <= 0xFFFF for word in ident):
            raise ConfigError(f"{name}: identifier words must be 16-bit", field="ident",
                              value=ident)
        self.base = base
        self.size = len(data)
        self.name = name
        self.read_only = read_only
        self.block_size = block_size
        self.writes: list[FlashWrite] = []
        self._array = bytearray(data)
        self._ident = ident
        self._cfi = _cfi_table(self.size, block_size)
        self._mode = _Mode.ARRAY
        self._step: _Step | None = None
        self._status = FlashStatus.READY
        self._program_command = FlashCommand.PROGRAM
        self._counter = 0
        self._buffer: _WriteBuffer | None = None

    @property
    def contents(self) -> bytes:
        """A copy of the current array contents."""
        return bytes(self._array)

    def reset(self) -> None:
        """System reset: read-array mode, status ready, any staged buffer dropped."""
        self._read_array()
        self._status = FlashStatus.READY
        self._counter = 0

    # -- bus interface ----------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes (little-endian) at ``offset`` in the current mode."""
        self._check(offset, size)
        if size == 8:
            return self._read_cycle(offset, 4) | self._read_cycle(offset + 4, 4) << 32
        return self._read_cycle(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``offset``: a command or data cycle."""
        self._check(offset, size)
        if not 0 <= value < 1 << (8 * size):
            raise FlashAccessError(f"{self.name}: value {value:#x} does not fit a {size}-byte "
                                   f"write", device=self.name, offset=offset, size=size)
        if size == 8:
            self._write_cycle(offset, 4, value & 0xFFFF_FFFF)
            self._write_cycle(offset + 4, 4, value >> 32)
        else:
            self._write_cycle(offset, size, value)

    def _check(self, offset: int, size: int) -> None:
        if size not in _ACCESS_SIZES:
            raise FlashAccessError(f"{self.name}: unsupported access size {size}",
                                   device=self.name, offset=offset, size=size)
        if offset < 0 or offset + size > self.size:
            raise FlashAccessError(f"{self.name}: {size}-byte access at offset {offset:#x} is "
                                   f"outside the {self.size:#x}-byte device",
                                   device=self.name, offset=offset, size=size)

    # -- reads ------------------------------------------------------------------
    def _read_cycle(self, offset: int, size: int) -> int:
        mode = self._mode
        if mode is _Mode.STATUS:
            status = int(self._status)
            return status | (status << 16) if size > 2 else status
        if mode is _Mode.IDENT:
            index = offset & 0xFF
            id0, id1, id2, id3 = self._ident
            word = {0: id0 << 8 | id1, 1: id2 << 8 | id3}.get(index, 0)
            return word & ((1 << (8 * size)) - 1)
        if mode is _Mode.QUERY:
            index = offset & 0xFF
            return self._cfi[index] if index < CFI_TABLE_LENGTH else 0
        return int.from_bytes(self._array[offset:offset + size], "little")

    # -- writes -----------------------------------------------------------------
    def _write_cycle(self, offset: int, size: int, value: int) -> None:
        step = self._step
        command = value & 0xFF
        if step is None:
            self._command(offset, command)
        elif step is _Step.PROGRAM_DATA:
            self._program(offset, size, value)
        elif step is _Step.ERASE_CONFIRM or step is _Step.LOCK_CONFIRM:
            self._confirm(step, command)
        elif step is _Step.QUERY:
            if command == FlashCommand.READ_ARRAY:
                self._read_array()
        elif step is _Step.BUFFER_COUNT:
            self._counter = value & 0xFF
            self._step = _Step.BUFFER_DATA
        elif step is _Step.BUFFER_DATA:
            self._buffer_data(offset, size, value)
        else:
            self._buffer_confirm(command)

    def _command(self, offset: int, command: int) -> None:
        """A write while no sequence is open: decode it as a command."""
        if command in (FlashCommand.PROGRAM, FlashCommand.PROGRAM_ALT):
            self._program_command = FlashCommand(command)
            self._enter(_Mode.STATUS, _Step.PROGRAM_DATA)
        elif command == FlashCommand.BLOCK_ERASE:
            self._erase(offset)
            self._enter(_Mode.STATUS, _Step.ERASE_CONFIRM)
        elif command == FlashCommand.CLEAR_STATUS:
            self._status = FlashStatus(0)
            self._read_array()
        elif command == FlashCommand.LOCK_SETUP:
            self._enter(_Mode.STATUS, _Step.LOCK_CONFIRM)
        elif command == FlashCommand.READ_STATUS:
            self._enter(_Mode.STATUS, None)
        elif command == FlashCommand.READ_ID:
            self._enter(_Mode.IDENT, None)
        elif command == FlashCommand.CFI_QUERY:
            self._enter(_Mode.QUERY, _Step.QUERY)
        elif command == FlashCommand.WRITE_TO_BUFFER:
            self._status |= FlashStatus.READY
            self._enter(_Mode.STATUS, _Step.BUFFER_COUNT)
        else:
            # 0xFF, 0x00, 0xF0, and commands QEMU does not implement.
            self._read_array()

    def _enter(self, mode: _Mode, step: _Step | None) -> None:
        self._mode = mode
        self._step = step

    def _read_array(self) -> None:
        self._enter(_Mode.ARRAY, None)
        self._buffer = None

    def _program(self, offset: int, size: int, value: int) -> None:
        command = int(self._program_command)
        if self.read_only:
            self._status |= FlashStatus.PROGRAM_ERROR
            self._record(FlashWriteKind.REFUSED, command, offset, size)
        else:
            self._array[offset:offset + size] = value.to_bytes(size, "little")
            self._record(FlashWriteKind.PROGRAM, command, offset, size)
        self._status |= FlashStatus.READY
        self._step = None

    def _erase(self, offset: int) -> None:
        start = offset & ~(self.block_size - 1)
        if self.read_only:
            self._status |= FlashStatus.ERASE_ERROR
            self._record(FlashWriteKind.REFUSED, FlashCommand.BLOCK_ERASE, start, self.block_size)
        else:
            self._array[start:start + self.block_size] = b"\xff" * self.block_size
            self._record(FlashWriteKind.ERASE, FlashCommand.BLOCK_ERASE, start, self.block_size)
        self._status |= FlashStatus.READY

    def _confirm(self, step: _Step, command: int) -> None:
        """Second cycle of erase (0xD0) or lock setup (0xD0 or 0x01)."""
        accepted = {FlashCommand.CONFIRM}
        if step is _Step.LOCK_CONFIRM:
            accepted.add(FlashCommand.LOCK_BLOCK)
        if command in accepted:
            self._status |= FlashStatus.READY
            self._step = None
        else:
            self._read_array()

    def _buffer_data(self, offset: int, size: int, value: int) -> None:
        if self._buffer is None and self._counter:
            start = offset & ~(WRITE_BUFFER_BYTES - 1)
            window = self._array[start:start + WRITE_BUFFER_BYTES]
            self._buffer = _WriteBuffer(start, window)
        buffer = self._buffer
        if not self.read_only and buffer is not None and buffer.covers(offset, size):
            buffer.put(offset, value.to_bytes(size, "little"))
        else:
            self._status |= FlashStatus.PROGRAM_ERROR
            self._record(FlashWriteKind.REFUSED, FlashCommand.WRITE_TO_BUFFER, offset, size)
        self._status |= FlashStatus.READY
        if self._counter == 0:
            self._step = _Step.BUFFER_CONFIRM
        else:
            self._counter -= 1

    def _buffer_confirm(self, command: int) -> None:
        buffer = self._buffer
        failed = bool(self._status & FlashStatus.PROGRAM_ERROR)
        if command != FlashCommand.CONFIRM or failed or buffer is None:
            self._read_array()
            return
        end = buffer.offset + len(buffer.data)
        self._array[buffer.offset:end] = buffer.data
        self._record(FlashWriteKind.PROGRAM, FlashCommand.WRITE_TO_BUFFER, buffer.offset,
                     len(buffer.data))
        self._buffer = None
        self._status |= FlashStatus.READY
        self._step = None

    def _record(self, kind: FlashWriteKind, command: int, offset: int, length: int) -> None:
        command = int(command)
        if self.writes:
            last = self.writes[-1]
            if (last.kind, last.command, last.offset + last.length) == (kind, command, offset):
                self.writes[-1] = dataclasses.replace(last, length=last.length + length)
                return
        self.writes.append(FlashWrite(kind, command, offset, length))
