"""The committed test MM drivers (firmware_blobs/drivers): image checks and reproducibility.

The images are built from C by firmware_blobs/drivers/build.py with Debian's clang and lld
(docs/decisions/0012-test-driver-toolchain.md). These tests check what the loader and the MM
core will rely on: x64 PE32+, subsystem 0x0B (edk2's GenFw value for both MM_STANDALONE and
DXE_SMM_DRIVER), 4 KiB section alignment, DIR64 base relocations, the entry point in code,
and the handler GUIDs in the image. The rebuild test runs when clang and lld-link of the
versions recorded in the manifest are on PATH.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from smmemu.loader.pe import PeImage

DRIVERS_DIR = Path(__file__).resolve().parent.parent / "firmware_blobs" / "drivers"
MANIFEST = DRIVERS_DIR / "drivers.manifest.json"
BUILD_SCRIPT = DRIVERS_DIR / "build.py"

EFI_BOOT_SERVICE_DRIVER = 0x0B
SMM_BASE2_GUID = uuid.UUID("f4ccbfb7-f6e0-47fd-9dd4-10a8f150c191")
SW_DISPATCH2_GUID = uuid.UUID("18a3c6dc-5eea-48c8-a1c1-b53389f98999")

# name -> (module type, GUIDs of its MmiHandlerRegister handlers, protocol GUIDs it uses)
EXPECTED: dict[str, tuple[str, tuple[uuid.UUID, ...], tuple[uuid.UUID, ...]]] = {
    "StandaloneEcho": ("MM_STANDALONE",
                       (uuid.UUID("3e0a7f4e-9d3c-4b0f-8a41-5d7e2c1b9a60"),), ()),
    "SwSmiCounter": ("DXE_SMM_DRIVER",
                     (uuid.UUID("5a1c0d2e-7f3b-4e91-b6a8-0c4d2f9e8b17"),),
                     (SMM_BASE2_GUID, SW_DISPATCH2_GUID)),
    "PoolUser": ("MM_STANDALONE",
                 (uuid.UUID("9b7e4c12-3a5d-4f60-8e2b-1c0f7a6d5e43"),), ()),
    "Faulty": ("MM_STANDALONE",
               (uuid.UUID("d0f1e2a3-b4c5-4d6e-8f70-8192a3b4c5d6"),), ()),
}
RELOCATED_BASE = 0x7F40_0000


def _manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return manifest


def _entry(name: str) -> dict[str, Any]:
    return next(d for d in _manifest()["drivers"] if d["name"] == name)


def _image(name: str) -> PeImage:
    return PeImage.parse((DRIVERS_DIR / f"{name}.efi").read_bytes(), f"{name}.efi")


def test_manifest_lists_the_four_drivers() -> None:
    drivers = _manifest()["drivers"]
    assert {d["name"] for d in drivers} == set(EXPECTED)
    for entry in drivers:
        module_type, handler_guids, _ = EXPECTED[entry["name"]]
        assert entry["module_type"] == module_type
        assert entry["subsystem"] == EFI_BOOT_SERVICE_DRIVER
        guids = {uuid.UUID(h["key"]) for h in entry["handlers"] if h["kind"] == "guid"}
        assert guids == set(handler_guids)
    sw = [h for h in _entry("SwSmiCounter")["handlers"] if h["kind"] == "sw"]
    assert [h["key"] for h in sw] == ["0x61"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_image_matches_manifest(name: str) -> None:
    data = (DRIVERS_DIR / f"{name}.efi").read_bytes()
    entry = _entry(name)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["size"]
    assert int(entry["entry_rva"], 16) == _image(name).entry_point_rva


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_image_is_an_x64_mm_driver_as_edk2_lays_it_out(name: str) -> None:
    image = _image(name)
    assert image.machine == 0x8664
    assert image.subsystem == EFI_BOOT_SERVICE_DRIVER
    assert image.subsystem_name == "EFI_BOOT_SERVICE_DRIVER"
    assert image.image_base == 0
    assert image.section_alignment == 0x1000
    assert not image.relocations_stripped
    assert all(sec.rva % 0x1000 == 0 for sec in image.sections)
    text = image.section(".text")
    assert text.executable
    assert not text.writable
    assert not any(sec.executable and sec.writable for sec in image.sections)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_point_is_in_a_code_section(name: str) -> None:
    image = _image(name)
    owners = [sec for sec in image.sections
              if sec.rva <= image.entry_point_rva < sec.rva + sec.memory_size]
    assert len(owners) == 1
    assert owners[0].executable
    assert owners[0].name == _entry(name)["entry_section"] == ".text"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reloc_section_has_dir64_relocations(name: str) -> None:
    image = _image(name)
    reloc = image.section(".reloc")
    assert reloc.raw_size > 0
    assert image.relocations
    assert {rel.type_name for rel in image.relocations} == {"DIR64"}
    assert len(image.relocations) == _entry(name)["dir64_relocations"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_handler_table_points_at_the_guid_and_at_code(name: str) -> None:
    """Each DIR64 slot is one half of a {GUID *, handler} entry in .data.

    ImageBase is 0, so before relocation a slot holds the RVA it points to; after relocating
    to another base it holds base + that RVA.
    """
    image = _image(name)
    moved = image.relocate(RELOCATED_BASE)
    data = image.section(".data")
    targets = []
    for rel in image.relocations:
        assert data.rva <= rel.rva < data.rva + data.memory_size
        (rva,) = struct.unpack_from("<Q", image.layout, rel.rva)
        (relocated,) = struct.unpack_from("<Q", moved, rel.rva)
        assert relocated == RELOCATED_BASE + rva
        assert rva < image.size_of_image
        targets.append(rva)
    _, handler_guids, _ = EXPECTED[name]
    guid_rvas = [image.layout.find(guid.bytes_le) for guid in handler_guids]
    code_targets = [rva for rva in targets
                    if any(s.executable and s.rva <= rva < s.rva + s.memory_size
                           for s in image.sections)]
    assert set(guid_rvas) <= set(targets)
    assert len(code_targets) == len(handler_guids)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_guids_are_in_the_image_once(name: str) -> None:
    image = _image(name)
    _, handler_guids, protocol_guids = EXPECTED[name]
    for guid in (*handler_guids, *protocol_guids):
        assert image.layout.count(guid.bytes_le) == 1, guid


def test_manifest_source_hashes_match_the_sources() -> None:
    """A source edited without rebuilding the images shows up even without a toolchain."""
    for entry in _manifest()["drivers"]:
        for path, digest in entry["sources"].items():
            assert hashlib.sha256((DRIVERS_DIR / path).read_bytes()).hexdigest() == digest, path


def _tool_version(tool: str) -> str:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


def test_rebuild_reproduces_committed_bytes() -> None:
    missing = [tool for tool in ("clang", "lld-link") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH (Debian: apt-get install -y clang "
                    f"lld); the committed images are checked without a rebuild")
    toolchain = _manifest()["toolchain"]
    for tool in ("clang", "lld-link"):
        found = _tool_version(tool)
        if found != toolchain[tool]:
            pytest.skip(f"{tool} is {found!r} but the images were built with "
                        f"{toolchain[tool]!r}; byte-exact output needs the same version")
    proc = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--check"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproduce byte for byte" in proc.stdout
