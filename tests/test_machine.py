"""Machine construction, errors on bad input, and isolation between Machines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from smmemu import (
    ECHO_HANDLER_GUID,
    ConfigError,
    ImageError,
    Machine,
    MachineClosedError,
    MemoryAccessError,
    ProfileError,
)
from smmemu.disasm import Mode, disassemble
from smmemu.firmware.image import DEFAULT_IMAGE


def test_unknown_profile_is_refused_by_name() -> None:
    with pytest.raises(ProfileError, match="unknown profile 'pc'") as info:
        Machine("pc")
    assert info.value.value == "pc"


def test_unreadable_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read MM core image"):
        Machine(image=tmp_path / "missing.bin")


def _copy_image(tmp_path: Path) -> tuple[Path, Path]:
    blob = tmp_path / "core.bin"
    manifest = tmp_path / "core.manifest.json"
    shutil.copy(DEFAULT_IMAGE, blob)
    shutil.copy(DEFAULT_IMAGE.with_name("mm_core.manifest.json"), manifest)
    return blob, manifest


def test_image_that_does_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    blob, _ = _copy_image(tmp_path)
    data = bytearray(blob.read_bytes())
    data[0x40] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="sha256"):
        Machine(image=blob)


def test_malformed_manifest_is_refused(tmp_path: Path) -> None:
    blob, manifest = _copy_image(tmp_path)
    manifest.write_text("{not json", encoding="utf-8")
    with pytest.raises(ImageError, match="malformed image manifest"):
        Machine(image=blob)


def test_image_for_another_tseg_is_refused(tmp_path: Path) -> None:
    blob, manifest = _copy_image(tmp_path)
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["constants"]["TSEG_BASE"] = "0x0f800000"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ImageError, match="expects TSEG at 0xf800000"):
        Machine(image=blob)


def test_manifest_symbols_outside_the_image_are_refused(tmp_path: Path) -> None:
    blob, manifest = _copy_image(tmp_path)
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["load_address"] = "0x00038000"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ImageError, match="outside the image"):
        Machine(image=blob)


def test_bad_budget_and_trigger_order_are_refused() -> None:
    with pytest.raises(ConfigError, match="budget"):
        Machine(budget=0)
    with pytest.raises(ConfigError, match="trigger order 'chipsec'"):
        Machine(trigger_order="chipsec")


def test_software_smi_validates_its_arguments(q35: Machine) -> None:
    with pytest.raises(ConfigError, match="command must be a byte"):
        q35.software_smi(0x100)
    with pytest.raises(ConfigError, match="cannot set register"):
        q35.software_smi(0x10, regs={"rip": 0})
    assert q35.software_smi(0x10).ok


def test_host_access_outside_ram_is_refused(q35: Machine) -> None:
    with pytest.raises(MemoryAccessError, match="outside RAM"):
        q35.read_physical(q35.profile.dram_size - 4, 8)


def test_two_machines_do_not_interact() -> None:
    with Machine("q35") as a, Machine("intel") as b:
        a.write_physical(0x30_0000, b"AAAA")
        b.write_physical(0x30_0000, b"BBBB")
        a.communicate(ECHO_HANDLER_GUID, b"a" * 10)
        assert b.read_physical(0x30_0000, 4) == b"BBBB"
        assert a.read_physical(0x30_0000, 4) == b"AAAA"
        assert b.communicate(ECHO_HANDLER_GUID, b"b").data == b"b"
        assert (a.smi_count, b.smi_count) == (3, 3)  # relocation, boot, one request


def test_closed_machine_refuses_use() -> None:
    m = Machine()
    m.close()
    with pytest.raises(MachineClosedError):
        m.communicate(ECHO_HANDLER_GUID, b"x")


def test_trampolines_disassemble_to_their_documented_assembly(q35: Machine) -> None:
    for trampoline in q35.dxe_trampolines():
        text = "; ".join(i.text for i in disassemble(trampoline.code, 0, Mode.BITS64))
        assert text == trampoline.assembly, trampoline.name
