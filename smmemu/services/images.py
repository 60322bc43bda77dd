"""Loading MM drivers into SMRAM and running their entry points in SMM.

An image is relocated into pages from the SMRAM heap (``smmemu.loader.pe``),
gets an image handle carrying ``EFI_LOADED_IMAGE_PROTOCOL``, and waits for
dispatch. Dispatch happens in SMM, the way edk2 does it: the host sends an
MMI on ``gEventMmDispatchGuid`` (StandaloneMmCore's ``MmDriverDispatchHandler``;
PiSmmCore's equivalent listens on gEfiEventDxeDispatchGuid), and
the handler, registered in the MM core's own handler table, calls each
pending entry point: ``(ImageHandle, MmSystemTable)`` for MM_STANDALONE
drivers, ``(ImageHandle, SystemTable)`` with the DXE system table for
traditional DXE_SMM_DRIVERs.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

from smmemu.cpu import Cpu
from smmemu.loader.pe import PeImage
from smmemu.services.dxe import DxeServices
from smmemu.services.heap import PAGE
from smmemu.services.runtime import MmRuntime
from smmemu.uefi.status import EfiStatus

__all__ = ["LOADED_IMAGE_GUID", "MM_DISPATCH_GUID", "DriverManager", "LoadedImage"]

LOADED_IMAGE_GUID = uuid.UUID("5b1b31a1-9562-11d2-8e3f-00a0c969723b")
_LOADED_IMAGE = struct.Struct("<I4xQQQQQI4xQQQIIQ")
"""EFI_LOADED_IMAGE_PROTOCOL (UEFI 2.10, 9.1): Revision, ParentHandle, SystemTable,
DeviceHandle, FilePath, Reserved, LoadOptionsSize, LoadOptions, ImageBase, ImageSize,
ImageCodeType, ImageDataType, Unload; 0x60 bytes."""
_RUNTIME_CODE, _RUNTIME_DATA = 5, 6  # the memory types PiSmmCore gives SMM images
MM_DISPATCH_GUID = uuid.UUID("7e6efffa-69b4-4c1b-a4c7-aff9c9244feb")


@dataclass(slots=True)
class LoadedImage:
    """A driver placed in SMRAM."""

    name: str
    base: int
    size: int
    entry: int
    standalone: bool
    handle: int
    pe: PeImage
    status: int | None = None
    """The entry point's EFI_STATUS, once dispatched (None before, or if it never returned)."""
    error: str | None = None
    exports: dict[str, int] = field(default_factory=dict)

    @property
    def dispatched(self) -> bool:
        """Whether the entry point ran to a return."""
        return self.status is not None

    def contains(self, address: int) -> bool:
        """Whether ``address`` lies in the image."""
        return self.base <= address < self.base + self.size

    def symbolize(self, address: int) -> str:
        """``name+0xoff`` (or ``name!export+0xoff``)."""
        best = max(((n, a) for n, a in self.exports.items() if a <= address),
                   key=lambda item: item[1], default=None)
        if best is not None:
            return f"{self.name}!{best[0]}+{address - best[1]:#x}"
        return f"{self.name}+{address - self.base:#x}"


class DriverManager:
    """Places images and dispatches their entry points."""

    def __init__(self, mm: MmRuntime, dxe: DxeServices) -> None:
        self._mm = mm
        self._dxe = dxe
        self.images: list[LoadedImage] = []
        self.dispatch_handler = mm.thunks.add("MmDriverDispatchHandler", self._dispatch)

    def load(self, data: bytes, name: str, *, standalone: bool) -> LoadedImage:
        """Parse, relocate and place ``data``; the entry point runs at the next dispatch.

        Raises:
            ImageError: a malformed image, or one that cannot be relocated.
            MemoryError: the SMRAM heap is exhausted.
        """
        pe = PeImage.parse(data, name)
        pages = (pe.size_of_image + PAGE - 1) // PAGE
        base = self._mm.heap.allocate_pages(pages)
        if base is None:
            raise MemoryError(f"no room in the SMRAM heap for {name} ({pages} pages)")
        try:
            laid_out = pe.relocate(base)
        except Exception:
            self._mm.heap.free(base, pages=pages)  # refused: the pages go back
            raise
        self._mm.memory.write(base, laid_out)
        handle = self._mm.pool(16)
        loaded = self._mm.pool(_LOADED_IMAGE.size)
        self._mm.memory.write(loaded, _LOADED_IMAGE.pack(
            0x1000, 0, self._dxe.system_table, 0, 0, 0, 0, 0, base, pe.size_of_image,
            _RUNTIME_CODE, _RUNTIME_DATA, 0))
        self._mm.db.install(handle, LOADED_IMAGE_GUID, loaded)
        self._dxe.db.install(handle, LOADED_IMAGE_GUID, loaded)
        image = LoadedImage(name, base, pe.size_of_image, base + pe.entry_point_rva, standalone,
                            handle, pe, exports={n: base + rva for n, rva in pe.exports.items()})
        self.images.append(image)
        return image

    def code_ranges(self, image: LoadedImage) -> list[tuple[int, bytes]]:
        """The executable sections of ``image`` as placed, for instruction sweeps."""
        out = []
        for section in image.pe.sections:
            if section.executable:
                address = image.base + section.rva
                out.append((address, self._mm.memory.read(address, section.memory_size)))
        return out

    def _dispatch(self, cpu: Cpu) -> int:
        """The MMI handler on gEventMmDispatchGuid: run every pending entry point."""
        for image in self.images:
            if image.dispatched or image.error is not None:
                continue
            table = self._mm.tables.mmst if image.standalone else self._dxe.system_table
            status = cpu.call_guest(image.entry, [image.handle, table])
            if status is None:
                image.error = "the entry point did not return (see the run's stop reason)"
                break
            image.status = status
        return EfiStatus.SUCCESS
