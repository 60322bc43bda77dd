"""DXE protocols that traditional SMM drivers' libraries look for in their constructors.

* ``EFI_SMM_ACCESS2_PROTOCOL`` (c2702b74-...; PI Vol. 4): SmmMemLib asks it
  for the SMRAM ranges. GetCapabilities reports TSEG as one
  ``EFI_SMRAM_DESCRIPTOR`` {PhysicalStart, CpuStart, PhysicalSize,
  RegionState = CLOSED | CACHEABLE}; Open, Close and Lock succeed.
* ``EFI_DEVICE_PATH_UTILITIES_PROTOCOL`` (0379be4e-...): DevicePathLib's
  constructor only needs it to exist; its functions report if called.
* ``EFI_RUNTIME_ARCH_PROTOCOL`` (b7dfb4e1-...; PI Vol. 2): empty lists, for
  depexes (SmmFaultTolerantWriteDxe's) that name it.
* The PCD protocols: edk2's ``PCD_PROTOCOL`` (11b34006-...) and PI's
  ``EFI_PCD_PROTOCOL`` (13a3f0f6-...). Dynamic PCD token numbers are assigned
  by each firmware build, so smmemu cannot know what a token means: every
  read returns the value configured for that token (``pcd`` overrides,
  default 0) and is listed in the run report; writes are kept.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from smmemu.cpu import Cpu
from smmemu.services.dxe import DxeServices
from smmemu.uefi.status import EfiStatus

__all__ = ["DEVICE_PATH_UTILITIES_GUID", "PCD_GUID", "PI_PCD_GUID", "RUNTIME_ARCH_GUID",
           "SMM_ACCESS2_GUID",
           "PcdProtocols", "PcdRead", "install_platform_protocols"]

RUNTIME_ARCH_GUID = uuid.UUID("b7dfb4e1-052f-449f-87be-9818fc91b733")
SMM_ACCESS2_GUID = uuid.UUID("c2702b74-800c-4131-8746-8fb5b89ce4ac")
DEVICE_PATH_UTILITIES_GUID = uuid.UUID("0379be4e-d706-437d-b037-edb82fb772a4")
PCD_GUID = uuid.UUID("11b34006-d85b-4d0a-a290-d5a571310ef7")
PI_PCD_GUID = uuid.UUID("13a3f0f6-264a-3ef0-f2e0-dec512342f34")
_SMRAM_CLOSED, _SMRAM_CACHEABLE = 0x2, 0x8
_PCD_FUNCTIONS = (
    "SetSku", "Get8", "Get16", "Get32", "Get64", "GetPtr", "GetBool", "GetSize", "Get8Ex",
    "Get16Ex", "Get32Ex", "Get64Ex", "GetPtrEx", "GetBoolEx", "GetSizeEx", "Set8", "Set16",
    "Set32", "Set64", "SetPtr", "SetBool", "Set8Ex", "Set16Ex", "Set32Ex", "Set64Ex",
    "SetPtrEx", "SetBoolEx", "CallbackOnSet", "CancelCallback", "GetNextToken",
    "GetNextTokenSpace",
)
_PI_PCD_FUNCTIONS = (
    "SetSku", "Get8Ex", "Get16Ex", "Get32Ex", "Get64Ex", "GetPtrEx", "GetBoolEx", "GetSizeEx",
    "Set8Ex", "Set16Ex", "Set32Ex", "Set64Ex", "SetPtrEx", "SetBoolEx", "CallbackOnSet",
    "CancelCallback", "GetNextToken", "GetNextTokenSpace",
)
_WIDTHS = {"8": 1, "16": 2, "32": 4, "64": 8, "Bool": 1}


@dataclass(frozen=True, slots=True)
class PcdRead:
    """A PCD read a driver made, for the run report."""

    token: int
    guid: uuid.UUID | None
    value: int
    overridden: bool
    caller: int = 0
    """Return address of the PCD protocol call (name it with ``Machine.symbolize``)."""
    kind: str = ""
    """The accessor: ``8``, ``16``, ``32``, ``64``, ``Bool`` or ``Ptr``."""


@dataclass(slots=True)
class PcdProtocols:
    """Both PCD protocols over one token table."""

    dxe: DxeServices
    overrides: dict[int, int]
    reads: list[PcdRead] = field(default_factory=list)
    _pointers: dict[int, int] = field(default_factory=dict)

    def install(self) -> None:
        """Build both interfaces and install them in the DXE protocol database."""
        for guid, names in ((PCD_GUID, _PCD_FUNCTIONS), (PI_PCD_GUID, _PI_PCD_FUNCTIONS)):
            mm = self.dxe.mm
            table = mm.pool(8 * len(names))
            for index, name in enumerate(names):
                label = f"{'Pcd' if guid == PCD_GUID else 'PiPcd'}->{name}"
                mm.memory.put_u64(table + 8 * index, mm.thunks.add(label, self._service(name)))
            self.dxe.db.install(mm.pool(16), guid, table)

    def _service(self, name: str) -> Callable[[Cpu], int]:
        extended = name.endswith("Ex")
        base = name.removesuffix("Ex")

        def run(cpu: Cpu) -> int:
            guid = self.dxe.mm.memory.guid(cpu.argument(0)) if extended else None
            token = cpu.argument(1 if extended else 0)
            if base.startswith("Get") and not base.startswith("GetNext"):
                return self._get(base[3:], guid, token)
            if base.startswith("Set") and base != "SetSku":
                value = cpu.argument(2 if extended else 1)
                if base == "SetPtr":
                    return EfiStatus.SUCCESS
                self.overrides[token] = value
                return EfiStatus.SUCCESS
            if base in ("GetNextToken", "GetNextTokenSpace"):
                return EfiStatus.NOT_FOUND
            return EfiStatus.SUCCESS

        return run

    def _get(self, kind: str, guid: uuid.UUID | None, token: int) -> int:
        overridden = token in self.overrides
        if kind == "Ptr":
            pointer = self._pointers.get(token)
            if pointer is None:
                pointer = self.dxe.mm.pool(256)
                self._pointers[token] = pointer
            self.reads.append(PcdRead(token, guid, pointer, overridden, self.dxe.mm.caller,
                                      kind))
            return pointer
        if kind == "Size":
            return 256 if token in self._pointers else 8
        value = self.overrides.get(token, 0)
        width = _WIDTHS.get(kind, 8)
        value &= (1 << (8 * width)) - 1
        self.reads.append(PcdRead(token, guid, value, overridden, self.dxe.mm.caller, kind))
        return value


def install_platform_protocols(dxe: DxeServices, tseg: tuple[int, int],
                               pcd_overrides: dict[int, int]) -> PcdProtocols:
    """Install SMM_ACCESS2, DEVICE_PATH_UTILITIES, RUNTIME_ARCH and the PCD protocols (DXE)."""
    mm = dxe.mm
    base, size = tseg

    def capabilities(cpu: Cpu) -> int:
        size_ptr, map_ptr = cpu.argument(1), cpu.argument(2)
        available = mm.memory.u64(size_ptr)
        mm.memory.put_u64(size_ptr, 32)
        if available < 32:
            return EfiStatus.BUFFER_TOO_SMALL
        mm.memory.write(map_ptr, struct.pack("<QQQQ", base, base, size,
                                             _SMRAM_CLOSED | _SMRAM_CACHEABLE))
        return EfiStatus.SUCCESS

    def succeed(_cpu: Cpu) -> int:
        return EfiStatus.SUCCESS

    access = mm.pool(40)
    for index, (name, run) in enumerate((("Open", succeed), ("Close", succeed),
                                         ("Lock", succeed), ("GetCapabilities", capabilities))):
        mm.memory.put_u64(access + 8 * index, mm.thunks.add(f"SmmAccess2->{name}", run))
    mm.memory.write(access + 32, b"\x00\x00")
    dxe.db.install(mm.pool(16), SMM_ACCESS2_GUID, access)

    utilities = mm.pool(64)
    for index in range(8):
        label = f"DevicePathUtilities function {index}"

        def unsupported(_cpu: Cpu, label: str = label) -> int:
            mm.report("unsupported-service", f"{label} called from {mm.where(mm.caller)}")
            return 0

        mm.memory.put_u64(utilities + 8 * index, mm.thunks.add(label, unsupported))
    dxe.db.install(mm.pool(16), DEVICE_PATH_UTILITIES_GUID, utilities)

    # EFI_RUNTIME_ARCH_PROTOCOL (PI Vol. 2, 12.8): every DXE has it before SMM drivers run,
    # and SMM drivers with runtime parts name it in their depex. Empty image and event
    # lists (heads pointing at themselves), no memory map, not yet at runtime.
    runtime = mm.pool(0x48)
    mm.memory.write(runtime, struct.pack("<QQQQQI4xQQQBB6x", runtime, runtime, runtime + 16,
                                         runtime + 16, 48, 1, 0, 0, 0, 0, 0))
    dxe.db.install(mm.pool(16), RUNTIME_ARCH_GUID, runtime)

    pcd = PcdProtocols(dxe, pcd_overrides)
    pcd.install()
    return pcd
