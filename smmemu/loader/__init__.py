"""Loaders for real firmware: PE32+ MM drivers and the volumes and flash images holding them.

Following cle's design, each input format has a loader object with a ``name``, a cheap
``is_compatible(data)`` test and ``load(data)``. The registry is a plain tuple passed by the
caller, so extending it means passing a longer tuple; nothing is registered globally::

    from smmemu.loader import DEFAULT_LOADERS, identify
    identify(blob)                                   # "pe" or "firmware"
    identify(blob, loaders=(*DEFAULT_LOADERS, MyLoader()))

Modules: :mod:`.pe` (PE32+ parsing, relocation, page plan), :mod:`.fv` (driver discovery in
firmware volumes), :mod:`.depex` (dependency expressions and dispatch order).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from smmemu.loader.depex import Blocked, Depex, DepexOp, DispatchPlan, dispatch_order
from smmemu.loader.errors import (
    DepexError,
    FvFormatError,
    LoaderError,
    PeFormatError,
    PeRelocationError,
    UnknownFormatError,
)
from smmemu.loader.fv import FirmwareDriver, find_volumes, scan_firmware
from smmemu.loader.pe import PageRange, PeImage, PeSection, looks_like_pe

__all__ = [
    "DEFAULT_LOADERS",
    "Blocked",
    "Depex",
    "DepexError",
    "DepexOp",
    "DispatchPlan",
    "FirmwareDriver",
    "FirmwareLoader",
    "FvFormatError",
    "Loader",
    "LoaderError",
    "PageRange",
    "PeFormatError",
    "PeImage",
    "PeLoader",
    "PeRelocationError",
    "PeSection",
    "UnknownFormatError",
    "dispatch_order",
    "find_loader",
    "identify",
    "scan_firmware",
]

T_co = TypeVar("T_co", covariant=True)


class Loader(Protocol[T_co]):
    """One input format: recognise it cheaply, then load it."""

    @property
    def name(self) -> str:
        """Short identifier returned by :func:`identify`."""
        ...

    def is_compatible(self, data: bytes) -> bool:
        """True if ``data`` looks like this loader's format (a signature check, no parse)."""
        ...

    def load(self, data: bytes) -> T_co:
        """Parse ``data``; raises a :class:`LoaderError` subclass if it is malformed."""
        ...


class PeLoader:
    """A single PE/COFF image (an ``.efi`` file)."""

    name = "pe"

    def is_compatible(self, data: bytes) -> bool:
        """An MZ header pointing at a PE signature; architecture is checked by ``load``."""
        return looks_like_pe(data)

    def load(self, data: bytes) -> PeImage:
        """The validated :class:`PeImage`."""
        return PeImage.parse(data)


class FirmwareLoader:
    """A firmware volume or a flash image (``.fv``, ``.fd``, ``.rom``) holding volumes."""

    name = "firmware"

    def is_compatible(self, data: bytes) -> bool:
        """At least one ``_FVH`` header with a valid checksum (truncation is load's error)."""
        try:
            return bool(find_volumes(data))
        except FvFormatError:
            return True

    def load(self, data: bytes) -> list[FirmwareDriver]:
        """The MM drivers in the image."""
        return scan_firmware(data)


DEFAULT_LOADERS: tuple[Loader[object], ...] = (PeLoader(), FirmwareLoader())


def find_loader(data: bytes, loaders: Sequence[Loader[object]] = DEFAULT_LOADERS
                ) -> Loader[object]:
    """The first loader in ``loaders`` whose ``is_compatible`` accepts ``data``.

    Raises:
        UnknownFormatError: none does; the message lists what was tried.
    """
    for loader in loaders:
        if loader.is_compatible(data):
            return loader
    tried = ", ".join(loader.name for loader in loaders) or "none registered"
    head = bytes(data[:8]).hex(" ")
    raise UnknownFormatError(f"unrecognised firmware format ({len(data)} bytes starting "
                             f"{head or '(empty)'}); loaders tried: {tried}")


def identify(data: bytes, loaders: Sequence[Loader[object]] = DEFAULT_LOADERS) -> str:
    """The name of the loader that fits ``data`` (``"pe"`` or ``"firmware"`` by default).

    Raises:
        UnknownFormatError: no loader fits.
    """
    return find_loader(data, loaders).name
