"""The built-in debugger: ``smmemu debug ... --commands`` scripts and the Debugger API."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from helpers import UD2_HANDLER

from smmemu import MM_SUPERVISOR_REQUEST_HANDLER_GUID, Machine, StopReason
from smmemu.cli import main
from smmemu.debug import Debugger, DebugShell, Resume, ResumeKind, Stop
from smmemu.debug.errors import DebugError
from smmemu.debug.expr import evaluate
from smmemu.debug.target import CpuMode
from smmemu.uefi.communicate import MmSupervisorRequest, supervisor_request

SCRIPTS = Path(__file__).parent / "debug_scripts"
SUPERVISOR = str(MM_SUPERVISOR_REQUEST_HANDLER_GUID)
FAULTY = "fa017fa0-0000-4000-8000-000000000001"
VERSION_INFO = supervisor_request(MmSupervisorRequest.VERSION_INFO, bytes(16))


def debug(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["debug", *argv])
    return status, capsys.readouterr().out


def run_script(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str,
               *action: str) -> tuple[int, str]:
    script = tmp_path / "script.txt"
    script.write_text(text, encoding="utf-8")
    return debug(capsys, *(action or ("run",)), "--commands", str(script))


def shell_on(machine: Machine, lines: list[str]) -> tuple[Debugger, io.StringIO]:
    """A debugger driven by ``lines`` on ``machine`` (output in the returned buffer)."""
    out = io.StringIO()
    debugger = Debugger(machine, budget=machine.budget, stop_at_end=True)
    debugger.attach(DebugShell(debugger, stdout=out, script=lines))
    return debugger, out


# -- checked-in scripts ----------------------------------------------------------------------------
def test_script_breaks_on_the_supervisor_handler_by_guid(capsys):
    status, out = debug(capsys, "run", "--commands", str(SCRIPTS / "supervisor_version.txt"))
    assert status == 0
    assert f"Breakpoint 1, handler {SUPERVISOR}" in out
    assert "<msup_handler> (64-bit long mode, in SMM" in out
    assert "<msup_success>:" in out  # stepped over the version copy
    assert "finish: returned, rax = 0x0" in out
    # the reply in SMRAM after the copy, then in comm buffer 0 after RSM: Version 0x00010000,
    # PatchLevel 1, MaxSupervisorRequestLevel 4
    assert out.count("0x0000000100010000") == 2
    assert "0x0000000000100038:  0x0000000000000004" in out
    assert "MM Supervisor Version: 0x00010000, Patch Level: 0x00000001" in out


def test_scripted_session_prints_the_same_on_every_run(capsys):
    first = debug(capsys, "run", "--commands", str(SCRIPTS / "supervisor_version.txt"))
    second = debug(capsys, "run", "--commands", str(SCRIPTS / "supervisor_version.txt"))
    assert first == second
    assert not re.search(r"\d ms\b|elapsed|0x7f[0-9a-f]{10}", first[1])


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.txt")))
def test_every_checked_in_script_runs_without_errors(capsys, name):
    status, out = debug(capsys, "run", "--commands", str(SCRIPTS / name))
    assert status == 0, out
    assert "error:" not in out


def test_stepi_counts_through_the_entry_stub_to_the_first_64_bit_instruction(capsys, tmp_path):
    with Machine("q35") as machine:
        symbols = machine.image.symbols
    status, out = run_script(capsys, tmp_path, "break smi\ncontinue\nstepi 8\nstepi 21\nstepi\n")
    assert status == 0
    stops = out.split("(smmdbg) ")
    entry, after_16, before_64, first_64 = stops[2], stops[3], stops[4], stops[5]
    assert "SMI entry (catchpoint 1)" in entry
    assert "<smi_entry> (16-bit real mode, in SMM" in entry
    assert "mode: 16-bit real mode -> 32-bit protected mode" in after_16
    assert f"{symbols['pm32_entry']:#018x} <pm32_entry>" in after_16
    # CR0.PG with EFER.LME set activates long mode; CS is still a 32-bit segment until the ljmp
    assert "mode: 32-bit protected mode -> 32-bit compatibility mode" in before_64
    assert "ljmp 0x18:" in before_64
    assert "mode: 32-bit compatibility mode -> 64-bit long mode" in first_64
    assert f"{symbols['lm64_entry']:#018x} <lm64_entry> (64-bit long mode" in first_64


def test_watchpoint_on_the_comm_buffer_reports_the_copy_back(capsys):
    status, out = debug(capsys, "run", "--commands", str(SCRIPTS / "comm_buffer_watch.txt"))
    assert status == 0
    assert "Watchpoint 1 (0x100038)" in out
    assert "write of 8 bytes at 0x100038: 0x0000000000000000 -> 0x0000000000000004" in out
    assert "<copy_bytes+" in out


def test_register_change_alters_the_handlers_reply(capsys):
    status, out = debug(capsys, "run", "--commands", str(SCRIPTS / "change_version.txt"))
    assert status == 0
    assert "mov dword ptr [r8 + 0x18], edx" in out
    assert "rdx = 0x12345678" in out
    assert "MM Supervisor Version: 0x12345678, Patch Level: 0x00000001" in out


def test_stepping_across_rsm_lands_in_the_interrupted_code(capsys):
    status, out = debug(capsys, "run", "--commands", str(SCRIPTS / "rsm_return.txt"))
    assert status == 0
    before, after = out.split("(smmdbg) stepi", 1)
    assert "rsm" in before
    assert "changed: nothing" in before
    assert "<trigger_patina+0x4> (64-bit long mode, outside SMM)" in after


# -- breakpoint kinds ------------------------------------------------------------------------------
def test_io_and_msr_breakpoints_stop_before_the_access(capsys, tmp_path):
    status, out = run_script(capsys, tmp_path,
                             "break io 0xb2 out\nbreak msr 0x1b\ncontinue\ncontinue\nregs\n")
    assert status == 0
    assert "Breakpoint 1, out port 0xb2 (before it)" in out
    assert "out 0xb2, al" in out
    assert "Breakpoint 2, rdmsr MSR 0x1b (before it)" in out
    assert "rcx 0x000000000000001b" in out


def test_non_smram_watchpoint_sees_smm_reading_outside_smram(capsys, tmp_path):
    status, out = run_script(capsys, tmp_path, "rwatch non-smram\ncontinue\ninfo breakpoints\n")
    assert status == 0
    assert "Watchpoint 1 (non-SMRAM memory)" in out
    assert re.search(r"read of \d bytes at 0x1[13]0000", out)  # a mailbox, read from SMM
    assert "in SMM" in out.split("Watchpoint 1 (non-SMRAM memory)")[1]


def test_conditional_breakpoint_stops_only_on_its_request(capsys, tmp_path):
    # supervisor.toml's third step is the unknown request 7; runs 1 and 2 end without a stop
    script = (f"break handler {SUPERVISOR} if u32($r8 + 8) == 7\n" + "continue\n" * 3
              + "print u32($r8 + 8)\n" + "continue\n" * 6)
    status, out = run_script(capsys, tmp_path, script, "session", "docs/sessions/supervisor.toml")
    assert status == 0
    assert out.count("Breakpoint 1, handler") == 1
    assert "0x7 (7)" in out
    assert "run 2 ended" in out.split("Breakpoint 1, handler")[0]
    assert "5 steps: 5 passed, 0 failed" in out


def test_temporary_breakpoint_is_deleted_when_it_stops(capsys, tmp_path):
    status, out = run_script(capsys, tmp_path,
                             "tbreak msup_version_info\ninfo breakpoints\ncontinue\n"
                             "info breakpoints\n")
    assert status == 0
    assert "Temporary breakpoint 1" in out
    assert "Breakpoint 1, msup_version_info" in out
    assert out.rstrip().count("no breakpoints, watchpoints or catchpoints") == 1


def test_exception_catchpoint_stops_in_the_core_isr():
    with Machine("q35") as machine:
        handler = machine.install_handler(UD2_HANDLER, FAULTY)
        debugger, out = shell_on(machine, ["break exception 6", "continue", "bt", "continue"])
        result = machine.communicate(FAULTY, b"ping")
        debugger.close()
    text = out.getvalue()
    assert "exception 6 #UD (catchpoint 1)" in text
    assert "<isr_06>" in text
    assert result.smi.stop is StopReason.SMM_FAULT
    assert result.smi.fault is not None
    assert result.smi.fault.rip == handler


# -- the API ---------------------------------------------------------------------------------------
def test_detach_leaves_the_machine_usable_for_another_smi():
    with Machine("q35") as machine:
        debugger, out = shell_on(machine, [f"break handler {SUPERVISOR}", "continue", "detach"])
        first = machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID, VERSION_INFO)
        assert machine.run_hook is None
        assert machine.cpu.observer is None
        second = machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID, VERSION_INFO)
        smi = machine.software_smi(0x42)
        debugger.close()
    assert "Breakpoint 1" in out.getvalue()
    assert first.status == second.status == 0
    assert first.data == second.data
    assert smi.ok


def test_an_idle_debugger_installs_no_hooks_and_changes_nothing():
    class NeverStops:
        def stopped(self, stop: Stop) -> Resume:
            raise AssertionError(stop)

        def finished(self) -> None:
            pass

    with Machine("q35") as machine:
        plain = machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID, VERSION_INFO)
        hooks = len(machine.cpu.engine._hooks)
        debugger = Debugger(machine, budget=machine.budget, stop_at_start=False)
        debugger.attach(NeverStops())
        debugged = machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID, VERSION_INFO)
        assert len(machine.cpu.engine._hooks) == hooks
        debugger.close()
    assert debugged.data == plain.data
    assert debugged.status == plain.status
    assert len(debugged.smi.smis) == 1


def test_stepping_the_final_hlt_stops_at_the_next_request():
    with Machine("q35") as machine:
        stops: list[Stop] = []
        actions = iter([Resume(ResumeKind.CONTINUE), Resume(ResumeKind.STEP),
                        Resume(ResumeKind.DETACH)])

        class Recorder:
            def stopped(self, stop: Stop) -> Resume:
                stops.append(stop)
                return next(actions)

            def finished(self) -> None:
                pass

        debugger = Debugger(machine, stop_at_end=True)
        debugger.attach(Recorder())
        machine.software_smi(0x42)
        machine.software_smi(0x43)
        debugger.close()
    assert [stop.kind.value for stop in stops] == ["start", "end", "step"]
    assert stops[2].run == 2
    assert stops[2].pc == machine.dxe_trampoline_address("raw_smi")


def test_the_debugger_follows_one_cpu_only():
    with Machine("q35", cpus=2) as machine, pytest.raises(DebugError, match="one CPU"):
        Debugger(machine)


def test_quit_finishes_the_run_and_skips_the_rest(capsys, tmp_path):
    status, out = run_script(capsys, tmp_path, "quit\n")
    assert status == 0
    assert out.rstrip().endswith("debugger: quit")


def test_errors_in_a_script_are_reported_and_the_script_goes_on(capsys, tmp_path):
    status, out = run_script(capsys, tmp_path,
                             "x/4xg 0xffff800000000000\nbreak nosuchsymbol\nbogus\n"
                             "print 1/0\nset $cs = 1\nprint $rip\n")
    assert status == 0
    assert "error: linear address 0xffff800000000000 is not mapped" in out
    assert "error: no symbol, constant or register named 'nosuchsymbol'" in out
    assert "error: unknown command 'bogus'" in out
    assert "division or modulo by zero" in out
    assert "error: cs is read-only" in out
    assert "0x9040 (36928) <trigger_patina>" in out


def test_memory_views_show_smram_only_to_smm(capsys, tmp_path):
    with Machine("q35") as machine:
        smbase = machine.cpu.smbase
    status, out = run_script(capsys, tmp_path,
                             f"x/2xb -n {smbase + 0x8000:#x}\nx/2xb -s {smbase + 0x8000:#x}\n"
                             f"x/1i -s {smbase + 0x8000:#x}\n")
    assert status == 0
    assert f"{smbase + 0x8000:#018x} <smi_entry>:  0xff  0xff" in out
    assert f"{smbase + 0x8000:#018x} <smi_entry>:  0xfa  0x66" in out


def test_session_and_swsmi_actions_run_under_the_debugger(capsys, tmp_path):
    status, out = run_script(capsys, tmp_path, "continue\n" * 12, "session",
                             "docs/sessions/supervisor.toml")
    assert status == 0
    assert "run 5 ended: halted" in out
    assert "5 steps: 5 passed, 0 failed" in out
    status, out = run_script(capsys, tmp_path, "break smi\ncontinue\nsavestate\n", "swsmi",
                             "--command", "0x42", "--reg", "rbx=0x1234")
    assert status == 0
    assert re.search(r"\brbx 0x1234\b", out)
    assert "rbx 0x0000000000001234" in out


def test_expressions():
    class Scope:
        def register(self, name: str) -> int:
            if name == "rax":
                return 5
            raise DebugError(f"no register {name!r}")

        def lookup(self, name: str) -> int | None:
            return {"sym": 0x1000}.get(name)

        def read(self, address: int, size: int) -> bytes:
            return bytes(range(address, address + size))

    scope = Scope()
    assert evaluate("$rax == 5 && !0", scope) == 1
    assert evaluate("sym + 0x10", scope) == 0x1010
    assert evaluate("u16(2)", scope) == 0x0302
    assert evaluate("~0", scope) == (1 << 64) - 1
    with pytest.raises(DebugError, match="cannot parse"):
        evaluate("1 +", scope)
    with pytest.raises(DebugError, match="unsupported"):
        evaluate("'text'", scope)


def test_modes_follow_the_cpu_through_the_entry_stub():
    with Machine("q35") as machine:
        modes: list[CpuMode] = []

        class Stepper:
            def stopped(self, stop: Stop) -> Resume:
                mode = debugger.target.mode()
                if not modes or modes[-1] is not mode:
                    modes.append(mode)
                if len(modes) == 6:
                    return Resume(ResumeKind.DETACH)
                return Resume(ResumeKind.STEP)

            def finished(self) -> None:
                pass

        debugger = Debugger(machine)
        debugger.attach(Stepper())
        result = machine.software_smi(0x42)
        debugger.close()
    # the trampoline, SMI entry, CR0.PE (CS still 16-bit), the ljmp to 32-bit code, CR0.PG with
    # EFER.LME (compatibility mode), the ljmp to 64-bit code
    assert modes == [CpuMode.LONG64, CpuMode.REAL, CpuMode.PROTECTED16, CpuMode.PROTECTED32,
                     CpuMode.COMPAT32, CpuMode.LONG64]
    assert result.ok
