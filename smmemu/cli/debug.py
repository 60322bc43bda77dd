"""``smmemu debug``: step-debug a request's guest runs at a prompt, from a script, or with gdb.

::

    smmemu debug run                                  the MM Supervisor VERSION_INFO request
    smmemu debug communicate --guid G --hex H         one MM communicate request
    smmemu debug swsmi --command 0x42 [--reg rbx=1]   one software SMI
    smmemu debug session FILE.toml                    every step of a session file

Each takes ``--commands FILE`` (run a debugger script, no terminal) or
``--gdb [HOST:]PORT`` (serve the GDB remote protocol, 127.0.0.1 unless HOST is
given). The debugger stops at the first instruction of the first run; the
request's outcome is printed when it completes, without timings, so a scripted
session prints the same text on every run (docs/debugging.md).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from smmemu.cli import Subparsers, guid, hex_bytes, machine_spec, number, register_value
from smmemu.cli.render import guest_problems, hexdump, print_lines, register_grid, status_text
from smmemu.debug import DebuggerQuit, DebugShell, GdbStub
from smmemu.debug.session import Debugger
from smmemu.dxe.communicator import TriggerOrder
from smmemu.errors import ConfigError
from smmemu.machine import Machine
from smmemu.results import SmiResult
from smmemu.session import MachineSpec, SessionReport, load_session, replay
from smmemu.uefi.communicate import (
    MmSupervisorRequest,
    MmSupervisorRequestHeader,
    MmSupervisorVersionInfo,
    supervisor_request,
)
from smmemu.uefi.guids import MM_SUPERVISOR_REQUEST_HANDLER_GUID

__all__ = ["register", "run"]

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_DEFAULT_HOST = "127.0.0.1"


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``debug`` and its actions."""
    parser = subparsers.add_parser(
        "debug", help="step-debug a request: breakpoints, stepping, watchpoints, or gdb",
        description="Run a request under the debugger: an interactive prompt, a command "
                    "script (--commands) or a GDB remote stub (--gdb). Global options go "
                    "before the action: smmemu debug --profile intel run.")
    actions = parser.add_subparsers(title="what to debug", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    mode = common.add_mutually_exclusive_group()
    mode.add_argument("--commands", type=Path, metavar="FILE",
                      help="run the debugger commands in FILE instead of prompting")
    mode.add_argument("--gdb", type=_endpoint, metavar="[HOST:]PORT",
                      help="serve the GDB remote protocol (host 127.0.0.1 by default)")
    actions.add_parser("run", parents=[common], help="the MM Supervisor VERSION_INFO request"
                       ).set_defaults(debug_action=_debug_run)
    communicate = actions.add_parser("communicate", parents=[common],
                                     help="one MM communicate request")
    communicate.add_argument("--guid", required=True, type=guid, metavar="GUID")
    payload = communicate.add_mutually_exclusive_group(required=True)
    payload.add_argument("--hex", type=hex_bytes, metavar="HEX", help="payload as hex digits")
    payload.add_argument("--file", type=Path, metavar="FILE", help="payload from a file")
    communicate.add_argument("--buffer-id", type=number, default=0, metavar="N")
    communicate.add_argument("--order", choices=[order.value for order in TriggerOrder],
                             default=TriggerOrder.PATINA.value)
    communicate.set_defaults(debug_action=_debug_communicate)
    swsmi = actions.add_parser("swsmi", parents=[common], help="one software SMI")
    swsmi.add_argument("--command", type=number, required=True, metavar="BYTE")
    swsmi.add_argument("--data", type=number, default=0, metavar="BYTE")
    swsmi.add_argument("--reg", type=register_value, action="append", default=[],
                       metavar="NAME=VALUE", help="a GPR value at the OUT (repeatable)")
    swsmi.set_defaults(debug_action=_debug_swsmi)
    session = actions.add_parser("session", parents=[common], help="a session file's steps")
    session.add_argument("file", type=Path, metavar="FILE.toml")
    session.set_defaults(debug_action=_debug_session)
    parser.set_defaults(handler=run)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        value = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {port!r} ([HOST:]PORT)") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return host or _DEFAULT_HOST, value


def run(args: argparse.Namespace) -> int:
    """Run the chosen action under the debugger; 1 when the request fails."""
    action: Callable[[argparse.Namespace], int] = args.debug_action
    try:
        return action(args)
    except DebuggerQuit:
        print("debugger: quit")
        return 0


# -- attaching ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _debugging(args: argparse.Namespace, machine: Machine) -> Iterator[Debugger]:
    """Attach the front-end the options ask for; close it when the requests are done."""
    if args.gdb is not None:
        host, port = args.gdb
        debugger = Debugger(machine, stop_on_exceptions=True)
        try:
            stub = GdbStub(debugger, host, port)
        except OSError as err:
            raise ConfigError(f"cannot listen on {host}:{port} for gdb: {err.strerror}",
                              field="gdb", value=f"{host}:{port}") from err
        print(f"smmemu: waiting for gdb on {host}:{stub.port} "
              f"(gdb -ex 'target remote {host}:{stub.port}')", file=sys.stderr, flush=True)
        debugger.attach(stub)
        interrupts: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        debugger = Debugger(machine, budget=machine.budget, stop_at_end=True)
        script = None if args.commands is None else _read_script(args.commands)
        shell = DebugShell(debugger, stdout=sys.stdout, script=script)
        debugger.attach(shell)
        interrupts = contextlib.nullcontext() if script is not None else _ctrl_c(debugger, shell)
    try:
        with interrupts:
            yield debugger
    finally:
        debugger.close()


def _read_script(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read the command script {path}: {err.strerror}",
                          field="commands", value=str(path)) from err


@contextlib.contextmanager
def _ctrl_c(debugger: Debugger, shell: DebugShell) -> Iterator[None]:
    """Ctrl-C stops the running CPU (even in SMM code, where no Python runs) or cancels a line.

    The signal's wakeup byte reaches a helper thread at once, whatever the main
    thread is doing; the Python-level handler only interrupts a prompt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        if shell.reading:
            raise KeyboardInterrupt

    def watch() -> None:
        while reader.recv(1):
            debugger.interrupt()

    previous = signal.signal(signal.SIGINT, on_signal)
    old_fd = signal.set_wakeup_fd(writer.fileno())
    threading.Thread(target=watch, name="smmemu-debug-ctrl-c", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, previous)
        writer.close()
        reader.close()


# -- the actions -------------------------------------------------------------------------------
def _debug_run(args: argparse.Namespace) -> int:
    with machine_spec(args).build() as machine, _debugging(args, machine):
        request = supervisor_request(MmSupervisorRequest.VERSION_INFO,
                                     bytes(MmSupervisorVersionInfo.size()))
        result = machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID, request)
    header = MmSupervisorRequestHeader.size()
    ok = result.smi.ok and result.status == 0 and len(result.data) >= header
    if ok and int(MmSupervisorRequestHeader.from_bytes(result.data).Result) == 0:
        info = MmSupervisorVersionInfo.from_bytes(result.data[header:])
        print(f"MM Supervisor Version: 0x{info.Version:08x}, Patch Level: "
              f"0x{info.PatchLevel:08x}, Max Request Level: {info.MaxSupervisorRequestLevel:#x}")
    else:
        ok = False
        print(f"MM Supervisor VERSION_INFO failed: status {status_text(result.status)}")
        print_lines(_reply(result.data))
    print_lines(_outcome(result.smi))
    return 0 if ok else 1


def _debug_communicate(args: argparse.Namespace) -> int:
    payload: bytes
    if args.hex is not None:
        payload = args.hex
    else:
        try:
            payload = Path(args.file).read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read payload file {args.file}: {err.strerror}",
                              field="file", value=str(args.file)) from err
    with machine_spec(args, order=args.order).build() as machine, _debugging(args, machine):
        result = machine.communicate(args.guid, payload, buffer_id=args.buffer_id)
    print(f"status:             {status_text(result.status)}")
    print(f"return buffer size: {result.return_buffer_size}")
    print_lines(_reply(result.data))
    if result.header_error is not None:
        print(f"header error:       {result.header_error}")
    print_lines(_outcome(result.smi))
    return 0 if result.smi.ok and result.header_error is None else 1


def _debug_swsmi(args: argparse.Namespace) -> int:
    with machine_spec(args).build() as machine, _debugging(args, machine):
        result = machine.software_smi(args.command, args.data, regs=dict(args.reg))
    print_lines(_outcome(result))
    print("registers at the end of the run:")
    print_lines(register_grid(result.registers, _GPRS))
    return 0 if result.ok else 1


def _debug_session(args: argparse.Namespace) -> int:
    session = load_session(args.file)
    debugging: list[contextlib.ExitStack] = []

    def build(spec: MachineSpec) -> Machine:
        machine = machine_spec(args, spec).build()
        stack = contextlib.ExitStack()
        stack.enter_context(_debugging(args, machine))
        debugging.append(stack)
        return machine

    try:
        report = replay(session, machine_factory=build)
    finally:
        for stack in debugging:
            stack.close()
    print_lines(_session_text(report))
    return 0 if report.passed else 1


# -- text --------------------------------------------------------------------------------------
def _reply(data: bytes) -> list[str]:
    return ["reply:", *hexdump(data)] if data else ["reply: (empty)"]


def _outcome(smi: SmiResult) -> list[str]:
    count = len(smi.smis)
    return [f"result: {smi.stop.value}, {count} SMI{'' if count == 1 else 's'}",
            *guest_problems(smi)]


def _session_text(report: SessionReport) -> list[str]:
    lines = [f"session {report.name}, profile {report.profile}"]
    for step in report.steps:
        lines.append(f"{'PASS' if step.passed else 'FAIL'} {step.name}")
        for mismatch in step.mismatches:
            detail = f" ({mismatch.detail})" if mismatch.detail else ""
            lines.append(f"  {mismatch.field}{detail}: expected {mismatch.expected}, "
                         f"actual {mismatch.actual}")
    failed = len(report.failed)
    lines.append(f"{len(report.steps)} steps: {len(report.steps) - failed} passed, "
                 f"{failed} failed")
    return lines
