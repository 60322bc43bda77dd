"""Errors raised by the firmware loaders (PE images, firmware volumes, dependency expressions).

All of them are :class:`smmemu.errors.ImageError`: a file the user handed to smmemu that cannot be
used. Each carries the attributes a caller needs (an offset, a relocation type, an opcode) so no one
has to parse a message.
"""

from __future__ import annotations

from smmemu.errors import ImageError

__all__ = [
    "DepexError",
    "FvFormatError",
    "LoaderError",
    "PeFormatError",
    "PeRelocationError",
    "UnknownFormatError",
]


class LoaderError(ImageError):
    """Root of the loader errors; ``offset`` is where in the input the problem is, if known."""

    def __init__(self, message: str, *, offset: int | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.offset = offset


class UnknownFormatError(LoaderError):
    """No registered loader recognises the input."""


class PeFormatError(LoaderError):
    """A PE/COFF image that is malformed or not an x64 PE32+ UEFI image."""


class PeRelocationError(LoaderError):
    """An image that cannot be placed at the requested base.

    ``rva`` and ``reloc_type`` name the offending fixup when there is one.
    """

    def __init__(self, message: str, *, rva: int | None = None, reloc_type: int | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, offset=None, path=path)
        self.rva = rva
        self.reloc_type = reloc_type


class FvFormatError(LoaderError):
    """A firmware volume or flash image that cannot be walked."""


class DepexError(LoaderError):
    """A dependency expression that does not follow the PI grammar.

    ``opcode`` is the byte at ``offset`` when the problem is one opcode.
    """

    def __init__(self, message: str, *, offset: int | None = None,
                 opcode: int | None = None) -> None:
        super().__init__(message, offset=offset)
        self.opcode = opcode
