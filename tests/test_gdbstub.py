"""The GDB remote stub: real gdb in batch mode, and the protocol spoken by hand."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import DEAD_LOOP_HANDLER

from smmemu import MM_SUPERVISOR_REQUEST_HANDLER_GUID, Machine, StopReason
from smmemu.debug import Debugger, GdbStub
from smmemu.debug.rsp import checksum, escape, unescape
from smmemu.debug.target_xml import REGISTERS
from smmemu.disasm import Mode, disassemble
from smmemu.uefi.communicate import MmSupervisorRequest, supervisor_request

GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (CI installs it)")
VERSION_INFO = supervisor_request(MmSupervisorRequest.VERSION_INFO, bytes(16))
TIMEOUT = 60


def version_info(machine: Machine) -> Callable[[], object]:
    return lambda: machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID, VERSION_INFO)


@dataclass
class Served:
    """What a stub served while gdb (or a test) talked to it."""

    output: str = ""
    results: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def serve(machine: Machine, requests: Sequence[Callable[[], object]]) -> tuple[GdbStub, Served,
                                                                              threading.Thread]:
    """A stub on a free loopback port; ``requests`` run on a thread of this process."""
    debugger = Debugger(machine, stop_on_exceptions=True)
    stub = GdbStub(debugger, "127.0.0.1", 0, accept_timeout=TIMEOUT)
    debugger.attach(stub)
    served = Served()

    def run() -> None:
        try:
            for request in requests:
                served.results.append(request())
        except BaseException as err:  # noqa: BLE001 - reported by the test
            served.errors.append(err)
        finally:
            debugger.close()

    thread = threading.Thread(target=run, name="requests", daemon=True)
    thread.start()
    return stub, served, thread


def gdb(machine: Machine, commands: Sequence[str],
        requests: Sequence[Callable[[], object]]) -> Served:
    """Run ``gdb -batch`` with ``commands`` against a stub serving ``requests``."""
    assert GDB is not None
    stub, served, thread = serve(machine, requests)
    argv = [GDB, "-batch", "-nx", "-ex", f"target remote 127.0.0.1:{stub.port}"]
    for command in commands:
        argv += ["-ex", command]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert not served.errors, served.errors
    served.output = done.stdout + done.stderr
    return served


def pc_line(address: int) -> str:
    return f"{address:#018x} in ?? ()"


# -- real gdb --------------------------------------------------------------------------------------
@needs_gdb
def test_gdb_connects_without_osabi_tricks_and_reads_the_first_instruction():
    with Machine("q35") as machine:
        start = machine.dxe_trampoline_address("trigger_patina")
        served = gdb(machine, ["info registers rip", "x/2i $pc", "p $cs", "p/x $cr3", "p/x $efer",
                               "p/x $fs_base", "detach"], [version_info(machine)])
        assert machine.run_hook is None
    out = served.output
    assert pc_line(start) in out
    assert f"rip            {start:#x}" in out
    assert "out    %al,$0xb2" in out
    assert "$1 = 8" in out
    assert "$2 = 0x2000" in out
    assert "$3 = 0xd01" in out
    assert "[Inferior 1 (Remote target) detached]" in out
    assert served.results[0].status == 0


@needs_gdb
def test_gdb_breaks_on_the_handler_registered_for_a_guid():
    with Machine("q35") as machine:
        handler = dict(machine.handler_table())[MM_SUPERVISOR_REQUEST_HANDLER_GUID]
        served = gdb(machine, [f"break *{handler:#x}", "continue", "p/x $pc",
                               "monitor info symbol $pc", "stepi", "x/i $pc", "detach"],
                     [version_info(machine)])
    out = served.output
    assert f"Breakpoint 1, {pc_line(handler)}" in out
    assert f"$1 = {handler:#x}" in out
    assert "<msup_handler>" in out
    assert f"{handler + 4:#x}:\ttest   %r8,%r8" in out


@needs_gdb
def test_gdb_stepi_count_through_the_entry_stub_to_the_first_64_bit_instruction():
    with Machine("q35") as machine:
        entry = machine.cpu.smbase + 0x8000
        symbols = machine.image.symbols
        served = gdb(machine, [f"break *{entry:#x}", "continue", "delete", "p/x $pc", "x/i $pc",
                               "monitor info mode", "stepi 8", "p/x $pc", "p $cs",
                               "monitor info mode", "stepi 22", "p/x $pc", "p $cs",
                               "monitor info mode", "monitor disas $pc 1", "detach"],
                     [version_info(machine)])
    out = served.output
    assert f"Breakpoint 1, {pc_line(entry)}" in out
    assert f"$1 = {entry:#x}" in out  # RIP is reported linear: CS.base + 0x8000
    assert f"{entry:#x}:\tcli" in out
    assert "16-bit real mode, in SMM" in out
    assert f"$2 = {symbols['pm32_entry']:#x}" in out
    assert "$3 = 8" in out
    assert "32-bit protected mode, in SMM" in out
    assert f"$4 = {symbols['lm64_entry']:#x}" in out
    assert "$5 = 24" in out
    assert "64-bit long mode, in SMM" in out
    assert "<lm64_entry>:" in out


@needs_gdb
def test_gdb_watchpoint_on_the_comm_buffer():
    with Machine("q35") as machine:
        address, _ = machine.comm_buffer(0)
        maximum_level = address + 0x38  # the reply's MaxSupervisorRequestLevel
        served = gdb(machine, [f"watch *(long *){maximum_level:#x}", "continue",
                               "monitor info symbol $pc", "detach"], [version_info(machine)])
    out = served.output
    assert f"Hardware watchpoint 1: *(long *){maximum_level:#x}" in out
    assert "Old value = 0\nNew value = 4" in out
    assert "<copy_bytes+" in out


@needs_gdb
def test_gdb_register_change_alters_the_handlers_result():
    with Machine("q35") as machine:
        symbols = machine.image.symbols
        start = symbols["msup_version_info"]
        code = machine.read_physical(start, 0x40, smm=True)
        store = next(i.address for i in disassemble(code, start, Mode.BITS64)
                     if i.text == "mov dword ptr [r8 + 0x18], edx")
        served = gdb(machine, [f"break *{store:#x}", "continue", "set $rdx = 0x12345678",
                               "p/x $rdx", "delete", "continue"], [version_info(machine)])
    out = served.output
    assert "$1 = 0x12345678" in out
    assert "[Inferior 1 (Remote target) exited normally]" in out
    reply = served.results[0].data
    assert int.from_bytes(reply[24:28], "little") == 0x12345678


@needs_gdb
def test_gdb_continues_to_rsm_and_to_the_next_smi_then_detaches():
    with Machine("q35") as machine:
        handler = dict(machine.handler_table())[MM_SUPERVISOR_REQUEST_HANDLER_GUID]
        after_out = machine.dxe_trampoline_address("trigger_patina") + 4  # where RSM returns
        served = gdb(machine, [f"break *{handler:#x}", "continue", f"break *{after_out:#x}",
                               "continue", "p $cs", "monitor info mode", "continue",
                               "monitor info mode", "info breakpoints", "detach"],
                     [version_info(machine), version_info(machine)])
        again = machine.software_smi(0x42)
        assert machine.run_hook is None
    out = served.output
    assert out.count(f"Breakpoint 1, {pc_line(handler)}") == 2  # the first SMI and the next
    assert f"Breakpoint 2, {pc_line(after_out)}" in out
    assert "64-bit long mode, outside SMM" in out
    assert "64-bit long mode, in SMM" in out
    assert [r.status for r in served.results] == [0, 0]
    assert again.ok


# -- the protocol by hand --------------------------------------------------------------------------
class Client:
    """A minimal RSP client: acknowledged mode, one request at a time."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def packet(self) -> bytes:
        while True:
            start = self.buffer.find(b"$")
            end = self.buffer.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buffer) >= end + 3:
                payload = self.buffer[start + 1:end]
                assert int(self.buffer[end + 1:end + 3], 16) == checksum(payload)
                self.buffer = self.buffer[end + 3:]
                self.socket.sendall(b"+")
                return unescape(payload)
            data = self.socket.recv(65536)
            assert data, "the stub closed the connection"
            self.buffer += data

    def send(self, payload: bytes) -> None:
        self.socket.sendall(b"$" + payload + b"#" + f"{checksum(payload):02x}".encode())

    def ask(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.packet()


def test_rsp_packets_by_hand():
    with Machine("q35") as machine:
        stub, served, thread = serve(machine, [version_info(machine)])
        client = Client(stub.port)
        features = client.ask(b"qSupported:multiprocess+;swbreak+;xmlRegisters=i386")
        assert b"PacketSize=" in features
        assert b"qXfer:features:read+" in features
        xml = client.ask(b"qXfer:features:read:target.xml:0,fff")
        assert xml.startswith(b"l")
        assert b"<architecture>i386:x86-64</architecture>" in xml
        assert b'<feature name="org.gnu.gdb.i386.core">' in xml
        assert client.ask(b"?") == b"T05thread:01;"
        registers = client.ask(b"g")
        assert len(registers) == 2 * sum(register.size for register in REGISTERS)
        assert int.from_bytes(bytes.fromhex(registers[2 * 16 * 8:2 * 17 * 8].decode()),
                              "little") == machine.dxe_trampoline_address("trigger_patina")
        assert client.ask(b"p10") == registers[2 * 16 * 8:2 * 17 * 8]
        assert client.ask(b"m9040,2") == b"89c8"
        assert client.ask(b"mffff800000000000,8").startswith(b"E")
        assert client.ask(b"qAttached") == b"1"
        assert client.ask(b"qC") == b"QC1"
        assert client.ask(b"qfThreadInfo") == b"m1"
        assert client.ask(b"qsThreadInfo") == b"l"
        assert client.ask(b"Hg0") == b"OK"
        assert client.ask(b"vCont?") == b"vCont;c;C;s;S"
        assert client.ask(b"qNoSuchPacket") == b""
        client.send(b"qRcmd," + b"info mode".hex().encode())
        output = b""
        while (reply := client.packet()) != b"OK":
            output += bytes.fromhex(reply[1:].decode())
        assert output == b"64-bit long mode, outside SMM\n"
        assert client.ask(b"s") == b"T05thread:01;"
        assert client.ask(b"D") == b"OK"
        thread.join(TIMEOUT)
    assert not served.errors
    assert served.results[0].status == 0


def test_rsp_interrupt_stops_a_handler_that_never_returns():
    guid = uuid.UUID("de0dde0d-0000-4000-8000-000000000001")
    with Machine("q35", budget=0.5) as machine:
        handler = machine.install_handler(DEAD_LOOP_HANDLER, guid)
        stub, served, thread = serve(machine, [lambda: machine.communicate(guid, b"x")])
        client = Client(stub.port)
        assert client.ask(b"?") == b"T05thread:01;"
        client.send(b"c")
        time.sleep(0.3)
        client.socket.sendall(b"\x03")
        assert client.packet() == b"T02thread:01;"
        pc = int.from_bytes(bytes.fromhex(client.ask(b"p10").decode()), "little")
        assert pc == handler
        assert client.ask(b"D") == b"OK"
        thread.join(TIMEOUT)
        after = machine.software_smi(0x42)
    assert served.results[0].smi.stop is StopReason.BUDGET_EXCEEDED
    assert after.ok


def test_rsp_escapes_round_trip():
    data = bytes(range(256))
    assert unescape(escape(data)) == data
    assert not set(escape(data)) & set(b"#$*") - {ord("}")}
