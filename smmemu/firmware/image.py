"""The MM core image: a flat blob plus its manifest, loaded into SMRAM.

The bundled image is built from ``firmware_blobs/mm_core/*.s`` by
``make firmware`` (see :mod:`smmemu.firmware.build`); its manifest records the
load address, size, sha256, entry points and every symbol. The loader checks
the blob against the manifest before anything runs, so a stale or damaged
image is refused with a clear error rather than executed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smmemu.errors import ImageError

__all__ = ["DEFAULT_IMAGE", "CoreInfo", "MmCoreImage"]

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "firmware_blobs" / "mm_core.bin"
"""The bundled image (the manifest sits next to it as ``mm_core.manifest.json``)."""

_REQUIRED_SYMBOLS = (
    "smi_entry", "smi_entry_end", "smi_entry_cpu_index", "smm_relocation_entry",
    "smm_relocation_end", "core_info", "mmi_manage", "mmi_handler_register", "isr_dead_loop",
)
_REQUIRED_CONSTANTS = (
    "TSEG_BASE", "MAX_CPUS", "SMBASE_TILE", "BOOT_INFO", "CORE_STATE", "FAULT_RECORD",
    "FAULT_RECORD_SIZE", "HANDLER_TABLE", "MM_HEAP", "MM_HEAP_END", "RELOC_MAILBOX",
    "RELOC_DONE",
)
_CORE_INFO_SIGNATURE = b"SMEMCORE"


@dataclass(frozen=True, slots=True)
class CoreInfo:
    """The identification block the VERSION_INFO request answers from."""

    version: int
    patch_level: int
    max_request_level: int


@dataclass(frozen=True, slots=True)
class MmCoreImage:
    """A verified MM core image."""

    path: Path
    blob: bytes
    load_address: int
    symbols: dict[str, int]
    constants: dict[str, int]
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path | None = None) -> MmCoreImage:
        """Load and verify an image and its manifest (``<name>.manifest.json`` beside it).

        Raises:
            ImageError: if either file is unreadable or they disagree.
        """
        blob_path = Path(path) if path is not None else DEFAULT_IMAGE
        manifest_path = blob_path.with_name(blob_path.stem + ".manifest.json")
        try:
            blob = blob_path.read_bytes()
        except OSError as err:
            raise ImageError(
                f"cannot read MM core image {blob_path}: {err.strerror}", path=str(blob_path)
            ) from err
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ImageError(
                f"cannot read the image manifest {manifest_path}: {err.strerror}",
                path=str(manifest_path),
            ) from err
        except json.JSONDecodeError as err:
            raise ImageError(
                f"malformed image manifest {manifest_path}: {err}", path=str(manifest_path)
            ) from err
        return cls.from_parts(blob_path, blob, manifest)

    @classmethod
    def from_parts(cls, path: Path, blob: bytes, manifest: dict[str, Any]) -> MmCoreImage:
        """Verify ``blob`` against ``manifest``.

        Raises:
            ImageError: on any mismatch or missing field.
        """
        try:
            load_address = int(manifest["load_address"], 16)
            size = int(manifest["size"])
            digest = str(manifest["sha256"])
            symbols = {name: int(value, 16) for name, value in manifest["symbols"].items()}
            constants = {name: int(value, 16) for name, value in manifest["constants"].items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ImageError(
                f"image manifest for {path} lacks or mangles {err}", path=str(path)
            ) from err
        if len(blob) != size:
            raise ImageError(
                f"{path} is {len(blob)} bytes, its manifest says {size}", path=str(path)
            )
        actual = hashlib.sha256(blob).hexdigest()
        if actual != digest:
            raise ImageError(
                f"{path} has sha256 {actual}, its manifest says {digest}", path=str(path)
            )
        missing = [name for name in _REQUIRED_SYMBOLS if name not in symbols]
        if missing:
            raise ImageError(f"{path} lacks required symbols: {', '.join(missing)}", path=str(path))
        outside = sorted(name for name, address in symbols.items()
                         if not load_address <= address <= load_address + size)
        if outside:
            raise ImageError(f"{path}: manifest symbols outside the image: "
                             f"{', '.join(outside[:5])}", path=str(path))
        missing = [name for name in _REQUIRED_CONSTANTS if name not in constants]
        if missing:
            raise ImageError(f"{path} lacks required layout constants: {', '.join(missing)}",
                             path=str(path))
        image = cls(path, blob, load_address, symbols, constants, manifest)
        if image.blob[image.offset("core_info") :][:8] != _CORE_INFO_SIGNATURE:
            raise ImageError(f"{path}: core_info does not start with 'SMEMCORE'", path=str(path))
        return image

    def offset(self, symbol: str) -> int:
        """Offset of ``symbol`` inside the blob."""
        return self.symbols[symbol] - self.load_address

    @property
    def msr_sites(self) -> dict[int, bool]:
        """Addresses of the image's ``rdmsr`` (False) and ``wrmsr`` (True) instructions."""
        sites = self.manifest.get("msr_sites", {})
        return {int(address, 16): mnemonic == "wrmsr" for address, mnemonic in sites.items()}

    @property
    def msr_numbers(self) -> dict[int, int]:
        """Site address -> MSR number, for the MSR sites whose MSR the code alone fixes.

        Those follow ``mov ecx, imm32`` directly and carry no label.
        """
        numbers = self.manifest.get("msr_numbers", {})
        return {int(address, 16): int(msr, 16) for address, msr in numbers.items()}

    @property
    def end(self) -> int:
        """First address after the image."""
        return self.load_address + len(self.blob)

    @property
    def info(self) -> CoreInfo:
        """Version fields from the image's ``core_info`` block."""
        version, patch, max_level = struct.unpack_from(
            "<IIQ", self.blob, self.offset("core_info") + 8
        )
        return CoreInfo(version, patch, max_level)

    def symbolize(self, address: int) -> str | None:
        """``symbol+0xoff`` for an address inside the image, else None."""
        if not self.load_address <= address < self.end:
            return None
        best = max(
            (item for item in self.symbols.items() if item[1] <= address),
            key=lambda item: item[1],
            default=None,
        )
        if best is None:
            return None
        name, base = best
        return name if address == base else f"{name}+{address - base:#x}"
