"""The ``smmemu`` command line, run in-process through ``main([...])``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smmemu.cli import main
from smmemu.machine import Machine
from smmemu.session import MachineSpec
from smmemu.smm.savestate import Amd64SaveStateMap

REPO = Path(__file__).resolve().parents[1]
SESSIONS = REPO / "docs" / "sessions"
ECHO = "12345678-1234-5678-1234-567890abcdef"
FAULTY = "11111111-2222-3333-4444-555555555555"
VERSION_LINE = ("MM Supervisor Version: 0x00010000, Patch Level: 0x00000001, "
                "Max Request Level: 0x4")
UD2 = bytes.fromhex("0f0b")  # ud2


@pytest.fixture
def faulty_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Machine the CLI builds gets a handler for FAULTY and a root handler that run ud2."""
    build = MachineSpec.build

    def build_faulty(spec: MachineSpec) -> Machine:
        machine = build(spec)
        machine.install_handler(UD2, FAULTY)
        return machine

    monkeypatch.setattr(MachineSpec, "build", build_faulty)


def test_run_prints_the_version_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == VERSION_LINE
    assert re.fullmatch(r"1 SMI in \d+\.\d\d ms \(profile q35\)", lines[1])
    assert len(lines) == 2
    assert err == ""


def test_no_command_runs_the_default_session(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "intel"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == VERSION_LINE
    assert lines[1].endswith("(profile intel)")


@pytest.mark.parametrize("argv", [["run", "--json"], ["--json", "run"]])
def test_run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True
    assert document["profile"] == "q35"
    assert document["version_info"] == {
        "version": "0x10000", "patch_level": "0x1", "max_request_level": "0x4"}
    assert document["supervisor_result"] == "0x0"
    assert document["comm_result"]["status"] == "0x0"
    assert document["comm_result"]["data"].startswith("4d535550")
    assert document["comm_result"]["smi"]["smis"][0]["rsm"] is True


def test_run_reports_a_fault_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    build = MachineSpec.build

    def with_faulting_root_handler(spec: MachineSpec) -> Machine:
        machine = build(spec)
        machine.install_handler(UD2)  # a root handler runs after every GUID'd dispatch
        return machine

    monkeypatch.setattr(MachineSpec, "build", with_faulting_root_handler)
    assert main(["run"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("MM Supervisor VERSION_INFO failed: the SMI ended with smm-fault")
    assert "fault:\n  #UD in SMM" in out
    assert out.count("#UD in SMM") == 1


def test_communicate_echo_shows_a_hex_dump(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["communicate", "--guid", ECHO, "--hex", "68 65 6c 6c 6f", "--buffer-id", "1",
                 "--order", "ovmf"]) == 0
    out = capsys.readouterr().out
    assert "status:             EFI_SUCCESS (0x0)" in out
    assert "return buffer size: 29 (24-byte header + 5 bytes of reply)" in out
    assert "  00000000  68 65 6c 6c 6f" in out
    assert out.rstrip().endswith("stop halted")
    assert "|hello|" in out


def test_communicate_unknown_guid_is_not_found(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["communicate", "--guid", "00000000-0000-0000-0000-000000000001",
                 "--hex", "00"]) == 0
    assert "EFI_NOT_FOUND (0x800000000000000e)" in capsys.readouterr().out


def test_communicate_json_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(20)))
    assert main(["communicate", "--guid", ECHO, "--file", str(payload), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["status_name"] == "EFI_SUCCESS"
    assert document["ok"] is True
    assert document["comm_result"]["data"] == bytes(range(20)).hex()
    assert document["comm_result"]["return_buffer_size"] == 44


@pytest.mark.usefixtures("faulty_machines")
def test_communicate_fault_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["communicate", "--guid", FAULTY, "--hex", "01"]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith(", stop smm-fault")
    assert "fault:" in out
    assert "#UD in SMM at rip" in out
    assert "ud2" in out


def test_bad_guid_exits_2_naming_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["communicate", "--guid", "not-a-guid", "--hex", "00"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "'not-a-guid'" in err


def test_odd_hex_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["communicate", "--guid", ECHO, "--hex", "abc"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "odd number of hex digits" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["communicate", "--guid", ECHO, "--file", "/nonexistent/payload"],
     "cannot read payload file /nonexistent/payload"),
    (["communicate", "--guid", ECHO, "--hex", "00", "--buffer-id", "5"],
     "no comm buffer with id 5"),
    (["swsmi", "--command", "0x100"], "command must be a byte, got 0x100"),
    (["swsmi", "--command", "1", "--reg", "rsp=0"], "cannot set register(s) rsp"),
    (["run", "--image", "/nonexistent/core.bin"], "cannot read MM core image"),
])
def test_host_errors_exit_2(argv: list[str], message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("smmemu: error: ")
    assert message in err


def test_swsmi_shows_save_state_and_registers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["swsmi", "--command", "0x42", "--data", "1", "--reg", "rbx=0x1234",
                 "--reg", "r9=4660", "--all"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stop: halted (1 SMI in ")
    assert "rax 0x0000000000000142" in out
    assert "rbx 0x0000000000001234" in out
    assert " r9 0x0000000000001234" in out
    assert "smm_revision 0x00020064" in out
    assert "cs 0x0008" in out
    assert "cs_attributes" in out  # --all
    assert "registers after RSM" in out
    assert "no general-purpose register changed" in out


def test_swsmi_marks_registers_the_mm_core_changed(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    build = MachineSpec.build

    def with_rbx_writer(spec: MachineSpec) -> Machine:
        machine = build(spec)
        rbx = machine.profile.smbase + 0xFE00 + Amd64SaveStateMap.offset_of("RBX")
        # mov rax, rbx_slot ; mov qword ptr [rax], 0x77 ; xor eax, eax ; ret
        code = b"\x48\xb8" + rbx.to_bytes(8, "little") + bytes.fromhex("48c70077000000 31c0 c3")
        machine.install_handler(code)  # a root handler: runs on every SMI
        return machine

    monkeypatch.setattr(MachineSpec, "build", with_rbx_writer)
    assert main(["swsmi", "--command", "0x5", "--reg", "rbx=0x1234"]) == 0
    out = capsys.readouterr().out
    after = out[out.index("registers after RSM"):]
    assert "*rbx 0x0000000000000077" in after
    assert "*rax" not in after
    assert "changed: rbx 0x1234 -> 0x77" in after


def test_swsmi_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["swsmi", "--command", "0x42", "--reg", "rbx=0x1234", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True
    assert document["regs"] == {"rax": "0x42", "rbx": "0x1234"}
    assert document["changed"] == {}
    state = document["smi_result"]["smis"][0]["save_state"]
    assert state["rbx"] == "0x1234"
    assert state["smm_revision"] == "0x20064"


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("profile q35: ")
    assert "0x07800000-0x07ffffff       8 MiB  TSEG (SMRAM)" in out
    assert "comm buffer 1 (user)" in out
    assert "0x00b2-0x00b3  ICH9 APM" in out
    assert "gMmSupervisorRequestHandlerGuid" in out
    assert "version 0x00010000, patch level 0x00000001, max request level 0x4" in out


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json", "--profile", "intel"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["profile"]["name"] == "intel"
    assert document["profile"]["smm_revision"] == "0x30064"
    names = {region["name"] for region in document["memory"]}
    assert {"DRAM", "TSEG (SMRAM)", "comm buffer 0 (supervisor)"} <= names
    handlers = {h["guid"]: h for h in document["handlers"]}
    supervisor = handlers["8c633b23-1260-4ea6-830f-7ddc97382111"]
    assert supervisor["name"] == "gMmSupervisorRequestHandlerGuid"
    assert supervisor["address"].startswith("0x")
    assert document["image"]["version"] == "0x10000"


@pytest.mark.parametrize("name", ["supervisor.toml", "echo_and_swsmi.toml"])
def test_shipped_sessions_pass(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["session", str(SESSIONS / name)]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith(("PASS ", "FAIL "))]
    assert steps
    assert all(line.startswith("PASS ") for line in steps)
    assert lines[-1].endswith(" passed, 0 failed")


def test_session_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["session", str(SESSIONS / "supervisor.toml"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["passed"] is True
    assert document["profile"] == "q35"
    assert document["steps"][0]["name"] == "version info"
    assert all(step["passed"] and step["mismatches"] == [] for step in document["steps"])


def test_session_with_a_wrong_expectation_shows_the_diff(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = tmp_path / "wrong.toml"
    session.write_text(f"""
[[step]]
name = "echo"
kind = "communicate"
guid = "{ECHO}"
hex = "0102"
[step.expect]
status = "EFI_NOT_FOUND"
reply_hex = "0103"

[[step]]
name = "still fine"
kind = "swsmi"
command = 0x10
""", encoding="utf-8")
    assert main(["session", str(session)]) == 1
    out = capsys.readouterr().out
    assert "FAIL echo\n" in out
    assert "PASS still fine\n" in out
    assert "  status\n    expected: EFI_NOT_FOUND (0x800000000000000e)\n" \
           "    actual:   EFI_SUCCESS (0x0)\n" in out
    assert "  reply_hex (first difference at offset 0x1)\n    expected: 0103\n" \
           "    actual:   0102\n" in out
    assert out.rstrip().endswith("2 steps: 1 passed, 1 failed")


def test_session_global_profile_overrides_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "intel", "session", str(SESSIONS / "echo_and_swsmi.toml")]) == 1
    out = capsys.readouterr().out
    assert "profile intel" in out
    assert "save_state.smm_revision\n    expected: 0x20064\n    actual:   0x30064" in out


def test_malformed_session_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = tmp_path / "bad.toml"
    session.write_text('[[step]]\nkind = "swsmi"\ncommand = 1\n[[step]]\nkind = "dance"\n',
                       encoding="utf-8")
    assert main(["session", str(session)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("smmemu: error: ")
    assert "step 2" in err
    assert "'kind'" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "communicate" in capsys.readouterr().out


def test_python_dash_m_smmemu_run() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "smmemu", "run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == VERSION_LINE
