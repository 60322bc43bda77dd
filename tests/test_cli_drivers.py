"""``--load``, ``--load-standalone`` and ``--firmware`` on the commands, and the load report."""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import pytest

from smmemu.cli import main

REPO = Path(__file__).resolve().parents[1]
DRIVERS = REPO / "firmware_blobs" / "drivers"
ECHO = "3e0a7f4e-9d3c-4b0f-8a41-5d7e2c1b9a60"  # StandaloneEcho reverses the payload
COUNTER = "5a1c0d2e-7f3b-4e91-b6a8-0c4d2f9e8b17"  # SwSmiCounter's query
OVMF = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
LOCKBOX = "2a3cfebd-27e8-4d0a-8b79-d688c2a3e1c0"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    status = main([*argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_communicate_reaches_a_handler_of_a_loaded_standalone_driver(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, document = run_json(capsys, "communicate", "--load-standalone",
                                str(DRIVERS / "StandaloneEcho.efi"), "--guid", ECHO,
                                "--hex", b"abc".hex())

    assert status == 0
    assert document["comm_result"]["data"] == b"cba".hex()  # type: ignore[index]


def test_load_report_maps_each_handler_guid_to_image_and_offset(
        capsys: pytest.CaptureFixture[str]) -> None:
    status, document = run_json(capsys, "info", "--load-standalone",
                                str(DRIVERS / "StandaloneEcho.efi"),
                                "--load", str(DRIVERS / "SwSmiCounter.efi"))

    assert status == 0
    drivers = document["drivers"]
    assert isinstance(drivers, dict)
    images = {image["name"]: image for image in drivers["images"]}
    assert images["StandaloneEcho"]["standalone"] is True
    assert images["SwSmiCounter"]["standalone"] is False
    assert {image["entry_status_name"] for image in images.values()} == {"EFI_SUCCESS"}
    symbols = {h["guid"]: h["symbol"] for h in drivers["handlers"]}
    assert symbols[ECHO].startswith("StandaloneEcho+0x1")
    assert symbols[COUNTER].startswith("SwSmiCounter+0x1")


def test_drivers_load_in_the_order_given(capsys: pytest.CaptureFixture[str]) -> None:
    _, document = run_json(capsys, "info", "--load", str(DRIVERS / "SwSmiCounter.efi"),
                           "--load-standalone", str(DRIVERS / "StandaloneEcho.efi"))

    drivers = document["drivers"]
    assert isinstance(drivers, dict)
    assert [image["name"] for image in drivers["images"]] == ["SwSmiCounter", "StandaloneEcho"]


def test_text_report_lists_images_handlers_and_findings(
        capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["swsmi", "--command", "0x61", "--load", str(DRIVERS / "SwSmiCounter.efi")])

    out = capsys.readouterr().out
    assert status == 0
    assert "images:" in out
    assert "SwSmiCounter" in out
    assert f"{COUNTER} -> SwSmiCounter+0x" in out
    assert "unresolved protocol requests: none" in out
    assert "findings: none" in out


def test_commands_without_drivers_print_no_load_report(
        capsys: pytest.CaptureFixture[str]) -> None:
    _, document = run_json(capsys, "info")

    assert "drivers" not in document


def test_unreadable_driver_is_a_usage_error_naming_the_file(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.efi"

    status = main(["info", "--load", str(missing)])

    assert status == 2
    assert str(missing) in capsys.readouterr().err


def test_malformed_driver_is_a_host_error_not_a_traceback(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.efi"
    bogus.write_bytes(b"MZ" + bytes(62))

    status = main(["info", "--load", str(bogus)])

    assert status == 2
    assert "smmemu: error:" in capsys.readouterr().err


@pytest.mark.skipif(not OVMF.exists(), reason=f"{OVMF} not installed (apt ovmf)")
def test_firmware_lockbox_save_through_communicate_file(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    request = tmp_path / "save.bin"
    box = uuid.UUID("11112222-3333-4444-5555-666677778888")
    request.write_bytes(struct.pack("<IIQ", 1, 48, 0) + box.bytes_le
                        + struct.pack("<QQ", 0x30_0000, 32))

    status, document = run_json(capsys, "communicate", "--firmware", str(OVMF),
                                "--guid", LOCKBOX, "--file", str(request))

    assert status == 0
    reply = bytes.fromhex(document["comm_result"]["data"])  # type: ignore[index]
    assert struct.unpack_from("<IIQ", reply) == (0xFFFF_FFFF, 48, 0)  # handled, EFI_SUCCESS
    drivers = document["drivers"]
    assert isinstance(drivers, dict)
    states = {entry["name"]: entry["state"] for entry in drivers["firmware"]}
    assert states["SmmLockBox"] == "dispatched"
    symbols = {h["guid"]: h["symbol"] for h in drivers["handlers"]}
    assert symbols[LOCKBOX].startswith("SmmLockBox+0x")


def test_stub_option_installs_a_protocol_and_reports_its_calls(
        capsys: pytest.CaptureFixture[str]) -> None:
    guid = "01020304-0506-0708-090a-0b0c0d0e0f01"
    _, document = run_json(capsys, "info", "--stub", f"{guid}:2:0")

    drivers = document["drivers"]
    assert isinstance(drivers, dict)
    assert drivers["stubs"] == [{
        "guid": guid, "name": guid, "functions": 2, "status": "0x0", "environment": "both"}]
    assert drivers["findings"] == []  # installed, not yet called
    assert main(["info", "--stub", "not-a-guid"]) == 2
    assert "malformed GUID" in capsys.readouterr().err


@pytest.mark.skipif(not OVMF.exists(), reason=f"{OVMF} not installed (apt ovmf)")
def test_varstore_pcd_and_possible_cpus_reach_the_machine(
        capsys: pytest.CaptureFixture[str]) -> None:
    varstore = OVMF.with_name("OVMF_VARS_4M.fd")
    _, document = run_json(capsys, "info", "--firmware", str(OVMF), "--varstore",
                           str(varstore), "--pcd", "26=1", "--possible-cpus", "2")

    drivers = document["drivers"]
    assert isinstance(drivers, dict)
    states = {entry["name"]: entry["entry_status"] for entry in drivers["firmware"]}
    assert states["VariableSmm"] == "0x0"  # the variable store flash is there
    reads = [r for r in drivers["pcd_reads"] if r["token"] == 26]
    assert reads
    assert all(r["overridden"] and r["value"] == "0x1" for r in reads)


def test_malformed_pcd_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--pcd", "26"]) == 2
    assert "TOKEN=VALUE" in capsys.readouterr().err


def test_mode_option_selects_the_mm_core_behaviour(capsys: pytest.CaptureFixture[str]) -> None:
    # Traditional mode hands handlers the comm buffer itself; standalone mode an SMRAM copy.
    for mode, in_place in (("traditional", True), ("standalone", False)):
        status, document = run_json(capsys, "communicate", "--mode", mode, "--load",
                                    str(DRIVERS / "SwSmiCounter.efi"), "--guid", COUNTER,
                                    "--hex", "00" * 8)
        drivers = document["drivers"]
        assert isinstance(drivers, dict)
        assert status == 0
        assert (drivers["mode"], drivers["requests_in_place"]) == (mode, in_place)
    assert main(["info", "--mode", "bogus"]) == 2
