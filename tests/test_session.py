"""Session files: loading and validation, replay and the mismatch report."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from smmemu.errors import SessionError
from smmemu.machine import Machine
from smmemu.results import StopReason
from smmemu.session import (
    CommunicateStep,
    MachineSpec,
    Mismatch,
    SwSmiStep,
    load_session,
    parse_session,
    replay,
)
from smmemu.uefi.guids import ECHO_HANDLER_GUID, MM_SUPERVISOR_REQUEST_HANDLER_GUID
from smmemu.uefi.status import EfiStatus

SESSIONS = Path(__file__).resolve().parents[1] / "docs" / "sessions"
ECHO = str(ECHO_HANDLER_GUID)
FAULTY = "11111111-2222-3333-4444-555555555555"


def _with_faulty_handler(spec: MachineSpec) -> Machine:
    machine = spec.build()
    machine.install_handler(bytes.fromhex("0f0b"), FAULTY)  # ud2
    return machine


def test_supervisor_session_loads() -> None:
    session = load_session(SESSIONS / "supervisor.toml")
    assert session.name == "supervisor"
    assert session.machine == MachineSpec(profile="q35")
    assert [step.index for step in session.steps] == list(range(1, len(session.steps) + 1))
    first = session.steps[0]
    assert isinstance(first, CommunicateStep)
    assert first.guid == MM_SUPERVISOR_REQUEST_HANDLER_GUID
    assert len(first.payload) == 40
    assert first.expect.status == EfiStatus.SUCCESS
    assert first.expect.reply is not None
    assert first.expect.reply[24:28] == bytes.fromhex("00000100")
    bad_signature = session.steps[1]
    assert isinstance(bad_signature, CommunicateStep)
    (result,) = bad_signature.expect.fields
    assert (result.name, result.offset, result.size) == ("Result", 16, 8)
    assert result.value == EfiStatus.INVALID_PARAMETER == 0x8000000000000002
    assert result.is_status


def test_echo_and_swsmi_session_loads() -> None:
    session = load_session(SESSIONS / "echo_and_swsmi.toml")
    assert {step.buffer_id for step in session.steps if isinstance(step, CommunicateStep)} \
        == {0, 1}
    swsmi = session.steps[-1]
    assert isinstance(swsmi, SwSmiStep)
    assert (swsmi.command, swsmi.data) == (0x42, 0x01)
    assert swsmi.regs["r15"] == (1 << 64) - 1
    assert swsmi.expect.stop is StopReason.HALTED
    assert swsmi.expect.save_state["smm_revision"] == 0x20064


@pytest.mark.parametrize("name", ["supervisor.toml", "echo_and_swsmi.toml"])
def test_shipped_sessions_pass(name: str) -> None:
    report = replay(load_session(SESSIONS / name))
    assert report.passed, report.to_json()
    assert report.profile == "q35"
    assert all(step.stop is StopReason.HALTED and step.smis == 1 for step in report.steps)
    json.dumps(report.to_json())


def test_replay_uses_one_machine_from_the_factory() -> None:
    built: list[MachineSpec] = []

    def factory(spec: MachineSpec) -> Machine:
        built.append(spec)
        return spec.build()

    session = parse_session(f"""
[machine]
profile = "intel"
order = "ovmf"
budget = 5
[[step]]
kind = "communicate"
guid = "{ECHO}"
text = "a"
[[step]]
kind = "communicate"
guid = "{ECHO}"
text = "b"
""")
    report = replay(session, machine_factory=factory)
    assert built == [MachineSpec(profile="intel", budget=5.0, order="ovmf")]
    assert report.passed
    assert report.profile == "intel"
    assert [step.name for step in report.steps] == ["step 1", "step 2"]


def test_mismatches_name_field_expected_and_actual() -> None:
    session = parse_session(f"""
[[step]]
name = "echo"
kind = "communicate"
guid = "{ECHO}"
hex = "00112233"
[step.expect]
status = "EFI_NOT_FOUND"
return_buffer_size = 99
reply_hex = "00112244"
reply_prefix_hex = "01"
[[step.expect.reply_field]]
offset = 2
size = 2
value = 0x3322
[[step.expect.reply_field]]
name = "beyond"
offset = 4
size = 4
value = 0
""")
    (step,) = replay(session).steps
    assert not step.passed
    assert step.mismatches == (
        Mismatch("status", "EFI_NOT_FOUND (0x800000000000000e)", "EFI_SUCCESS (0x0)"),
        Mismatch("return_buffer_size", "0x63", "0x1c"),
        Mismatch("reply_hex", "00112244", "00112233", "first difference at offset 0x3"),
        Mismatch("reply_prefix_hex", "01", "00", "first difference at offset 0x0"),
        Mismatch("reply_field beyond (offset 0x4, 4 bytes)", "0x0", "absent",
                 "the reply is only 4 bytes"),
    )


def test_swsmi_mismatches() -> None:
    session = parse_session("""
[[step]]
kind = "swsmi"
command = "0x42"
regs = { rbx = 7 }
[step.expect]
save_state = { rbx = 8, no_such_field = 1 }
registers = { rbx = 7 }
""")
    (step,) = replay(session).steps
    assert step.mismatches == (
        Mismatch("save_state.rbx", "0x8", "0x7"),
        Mismatch("save_state.no_such_field", "0x1", "absent"),
    )


def test_a_fault_fails_a_step_that_expects_a_normal_stop() -> None:
    session = parse_session(f"""
[[step]]
name = "fault"
kind = "communicate"
guid = "{FAULTY}"
hex = "00"
[[step]]
name = "fault expected"
kind = "communicate"
guid = "{FAULTY}"
hex = "00"
[step.expect]
stop = "smm-fault"
[[step]]
name = "machine still usable"
kind = "communicate"
guid = "{ECHO}"
hex = "00"
""")
    report = replay(session, machine_factory=_with_faulty_handler)
    fault, expected, usable = report.steps
    (mismatch,) = fault.mismatches
    assert (mismatch.field, mismatch.expected, mismatch.actual) == ("stop", "halted", "smm-fault")
    assert mismatch.detail.startswith("#UD in SMM at rip")
    assert expected.passed
    assert expected.stop is StopReason.SMM_FAULT
    assert usable.passed
    assert report.failed == (fault,)


def test_a_request_the_communicator_refuses_is_a_failed_step() -> None:
    session = parse_session(f"""
[[step]]
kind = "communicate"
guid = "{ECHO}"
hex = "00"
buffer_id = 7
""")
    (step,) = replay(session).steps
    (mismatch,) = step.mismatches
    assert mismatch.field == "error"
    assert "no comm buffer with id 7" in mismatch.actual
    assert step.stop is None


def test_image_path_is_relative_to_the_session_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[machine]\nimage = "core.bin"\n[[step]]\nkind = "swsmi"\ncommand = 1\n',
                    encoding="utf-8")
    session = load_session(path)
    assert session.machine.image == tmp_path / "core.bin"
    assert session.name == "s"


@pytest.mark.parametrize(("body", "step", "fragments"), [
    ('[[step]]\nguid = "x"', 1, ["field 'kind'", "missing"]),
    ('[[step]]\nkind = "swsmi"\ncommand = 1\n[[step]]\nkind = "dance"', 2,
     ["step 2", "'dance'"]),
    ('[[step]]\nname = "hello"\nkind = "communicate"\nguid = "nope"\nhex = "00"', 1,
     ["step 1 ('hello')", "field 'guid'", "'nope'"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "abc"', 1,
     ["field 'hex'", "odd number of hex digits"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "zz"', 1,
     ["field 'hex'", "not hexadecimal"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"', 1, ["field 'hex'", "missing"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "00"\ntext = "a"', 1,
     ["field 'text'", "not both"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\ntext = ""', 1,
     ["field 'text'", "empty"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "00"\ncommand = 1', 1,
     ["field 'command'", "unknown key"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "00"\n[step.expect]\nstatuss = 0',
     1, ["field 'expect.statuss'", "unknown key"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "00"\n[step.expect]\n'
     'status = "EFI_NOPE"', 1, ["field 'expect.status'", "EFI_NOPE"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "00"\n[step.expect]\n'
     'stop = "crashed"', 1, ["field 'expect.stop'", "'crashed'", "smm-fault"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "00"\n'
     '[[step.expect.reply_field]]\noffset = 0\nsize = 3\nvalue = 0', 1,
     ["field 'expect.reply_field[1].size'", "1, 2, 4 or 8"]),
    (f'[[step]]\nkind = "communicate"\nguid = "{ECHO}"\nhex = "00"\n'
     '[[step.expect.reply_field]]\noffset = 0\nsize = 1\nvalue = 256', 1,
     ["field 'expect.reply_field[1].value'", "does not fit 8 bits"]),
    ('[[step]]\nkind = "swsmi"\ncommand = 0x100', 1, ["field 'command'", "0x100"]),
    ('[[step]]\nkind = "swsmi"\ncommand = true', 1, ["field 'command'", "a boolean"]),
    ('[[step]]\nkind = "swsmi"\ncommand = 1\nregs = { rbx = "lots" }', 1,
     ["field 'regs.rbx'", "'lots'"]),
    ('[[step]]\nkind = "swsmi"\ncommand = 1\nregs = 5', 1, ["field 'regs'", "table"]),
    ('[[step]]\nkind = "swsmi"\ncommand = 1\n[step.expect]\nregisters = { rax = -1 }', 1,
     ["field 'expect.registers.rax'", "does not fit 64 bits"]),
])
def test_invalid_steps_name_the_step_and_field(body: str, step: int,
                                               fragments: list[str]) -> None:
    with pytest.raises(SessionError) as caught:
        parse_session(body, path=Path("bad.toml"))
    assert caught.value.step == step
    assert caught.value.path == "bad.toml"
    message = str(caught.value)
    assert message.startswith("bad.toml: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(("body", "fragment"), [
    ("", "at least one [[step]]"),
    ("step = 3", "expected an array of tables"),
    ("[[step]\n", "invalid TOML"),
    ('colour = "blue"\n[[step]]\nkind = "swsmi"\ncommand = 1', "field 'colour'"),
    ('[machine]\nprofile = "pdp11"\n[[step]]\nkind = "swsmi"\ncommand = 1', "'pdp11'"),
    ('[machine]\norder = "random"\n[[step]]\nkind = "swsmi"\ncommand = 1', "'random'"),
    ('[machine]\nbudget = 0\n[[step]]\nkind = "swsmi"\ncommand = 1', "must be positive"),
])
def test_invalid_sessions_outside_steps(body: str, fragment: str) -> None:
    with pytest.raises(SessionError, match=r"^<session>: ") as caught:
        parse_session(body)
    assert caught.value.step is None
    assert fragment in str(caught.value)


def test_unreadable_session_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(SessionError, match="cannot read session") as caught:
        load_session(missing)
    assert caught.value.path == str(missing)


def test_guid_and_numbers_accept_their_spellings() -> None:
    session = parse_session(f"""
[[step]]
kind = "communicate"
guid = "{{{ECHO.upper()}}}"
hex = "00"
buffer_id = "0x1"
[step.expect]
status = 0
return_buffer_size = "25"
[[step.expect.reply_field]]
offset = 0
size = 1
value = "efi_success"
""")
    (step,) = session.steps
    assert isinstance(step, CommunicateStep)
    assert step.guid == uuid.UUID(ECHO)
    assert step.buffer_id == 1
    assert step.expect.status == 0
    assert step.expect.return_buffer_size == 25
    assert step.expect.fields[0].value == 0
    assert replay(session).passed
