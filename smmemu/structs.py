"""A small base for ctypes mirrors of the specifications' C typedefs.

Guest-visible layouts are ``ctypes.LittleEndianStructure`` subclasses whose
field names keep the spelling of the C headers they mirror, so a name greps
across edk2 and smmemu. Layout tests compare each field's offset with the
spec's table.
"""

from __future__ import annotations

import ctypes
from typing import Self

__all__ = ["LeStruct"]


class LeStruct(ctypes.LittleEndianStructure):
    """Packed little-endian structure with byte-level helpers."""

    _pack_ = 1
    _layout_ = "ms"

    @classmethod
    def size(cls) -> int:
        """``sizeof`` of the structure."""
        return ctypes.sizeof(cls)

    @classmethod
    def offset_of(cls, name: str) -> int:
        """Byte offset of field ``name``."""
        return int(getattr(cls, name).offset)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> Self:
        """A copy of the structure decoded from the first ``size()`` bytes of ``data``."""
        return cls.from_buffer_copy(bytes(data[: cls.size()]))

    def to_bytes(self) -> bytes:
        """The structure's bytes."""
        return bytes(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LeStruct):
            return NotImplemented
        return type(self) is type(other) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        parts = []
        for name, *_ in self._fields_:
            if name.startswith("Reserved"):
                continue
            value = getattr(self, name)
            text = bytes(value).hex() if isinstance(value, ctypes.Array) else hex(value)
            parts.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"
