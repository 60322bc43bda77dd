"""A GDB remote stub for the debugger: real gdb connects, steps SMM code, breaks and watches.

It is a :class:`~smmemu.debug.stops.Frontend`: every stop of the debugger
becomes a stop reply, every resume packet becomes a :class:`Resume`. One
thread (the one running the request) serves the packets while the CPU is
stopped; :class:`~smmemu.debug.rsp.RspChannel` reads the socket on its own
thread so that gdb's interrupt (Ctrl-C, byte 0x03) stops a running CPU.

Supported packets (all others get the empty reply, "not supported"):

===============================  =============================================================
``qSupported``                   ``PacketSize=4000;qXfer:features:read+;swbreak+;hwbreak+;``
                                 ``vContSupported+;QStartNoAckMode+``
``qXfer:features:read:target.xml`` the i386:x86-64 description (:mod:`.target_xml`)
``QStartNoAckMode``              stop acknowledging packets
``?``                            the last stop (``T05thread:01;`` and friends)
``g`` / ``G``                    read / write every register (``target_xml`` order)
``p n`` / ``P n=v``              read / write one register
``m a,n`` / ``M a,n:hex`` / ``X`` read / write memory at *linear* addresses, translated
                                 with the CPU's current page tables and SMRAM view
``c`` / ``s`` / ``vCont;c|s``    continue / single-step (``C``/``S`` ignore the signal)
``vCont?``                       ``vCont;c;C;s;S``
``Z0``/``Z1`` ``z0``/``z1``      code breakpoints (both kinds stop before the instruction)
``Z2``/``Z3``/``Z4``, ``z2-4``   write / read / access watchpoints; the stop is reported
                                 after the instruction with ``watch:``/``rwatch:``/``awatch:``
``D``                            detach: the debugger lets go, the run goes on, the Machine
                                 stays usable
``k``                            closes the connection like ``D`` (a Machine cannot be killed)
``H``, ``T``, ``qC``, ``qAttached``, ``qfThreadInfo``, ``qsThreadInfo``: one thread, id 1,
                                 attached to an existing process
``qRcmd``                        ``monitor CMD``: the shell's inspection commands (``regs``,
                                 ``disas``, ``savestate``, ``handlers``, ``bt``, ``break smi``...)
===============================  =============================================================

Stop signals: SIGTRAP for breakpoints, steps, watchpoints and catchpoints,
SIGINT for an interrupt, and for an exception in SMM the signal gdb knows it
by (``#PF``/``#GP`` SIGSEGV, ``#UD`` SIGILL, ``#DE`` SIGFPE). When no run is
left, a waiting gdb gets ``W00`` (the process exited).

RIP: in 16- and 32-bit code the stub reports and accepts RIP as the *linear*
PC, CS.base + EIP (docs/decisions/0010-debugger-design.md), so ``x/i $pc``,
``break *ADDR`` and stepping all use the addresses the code really lives at.
"""

from __future__ import annotations

import io
import logging
import socket

from smmemu.debug.breakpoints import Access, BreakKind, Breakpoint
from smmemu.debug.commands import DebugShell
from smmemu.debug.errors import DebugError
from smmemu.debug.rsp import RspChannel, escape
from smmemu.debug.session import Debugger
from smmemu.debug.stops import Resume, ResumeKind, Stop, StopKind
from smmemu.debug.target_xml import REGISTERS, GdbRegister, target_xml

__all__ = ["GdbStub"]

log = logging.getLogger(__name__)

_SIGINT, _SIGILL, _SIGTRAP, _SIGFPE, _SIGBUS, _SIGSEGV = 2, 4, 5, 8, 7, 11
_VECTOR_SIGNALS = {0: _SIGFPE, 1: _SIGTRAP, 3: _SIGTRAP, 6: _SIGILL, 16: _SIGFPE, 17: _SIGBUS,
                   19: _SIGFPE}
_FEATURES = (b"PacketSize=4000;qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;"
             b"QStartNoAckMode+")
_WATCH_KINDS = {2: Access.WRITE, 3: Access.READ, 4: Access.ANY}
_WATCH_KEYS = {Access.WRITE: "watch", Access.READ: "rwatch", Access.ANY: "awatch"}
_EMPTY = b""
_OK = b"OK"
_ERROR = b"E01"
_OUTPUT_CHUNK = 256


class GdbStub:
    """Serves gdb for ``debugger`` on ``host:port`` (port 0: any free port, see :attr:`port`).

    Args:
        debugger: the debugger to drive (attach the stub with ``debugger.attach``).
        host: the address to listen on (loopback by default).
        port: the TCP port; 0 picks a free one.
        accept_timeout: seconds to wait for gdb at the first stop (None: forever).
    """

    def __init__(self, debugger: Debugger, host: str = "127.0.0.1", port: int = 0, *,
                 accept_timeout: float | None = None) -> None:
        self.debugger = debugger
        self.target = debugger.target
        self._listener: socket.socket | None = socket.create_server((host, port))
        self.port: int = self._listener.getsockname()[1]
        self._accept_timeout = accept_timeout
        self._channel: RspChannel | None = None
        self._shell = DebugShell(debugger, stdout=io.StringIO(), script=[])
        self._waiting = False
        self._last: Stop | None = None
        self._xml = target_xml().encode()

    # -- the Frontend protocol -----------------------------------------------------------------
    def stopped(self, stop: Stop) -> Resume:
        """Report the stop to gdb (if it waits for one) and serve packets until it resumes."""
        self._last = stop
        if self._channel is None:
            if not self._accept():
                return Resume(ResumeKind.DETACH)
        elif self._waiting:
            self._send(self._stop_reply(stop))
        self._waiting = False
        return self._serve()

    def finished(self) -> None:
        """No run is left: a waiting gdb learns that the process exited."""
        if self._channel is not None and self._waiting:
            self._send(b"W00")
        self._close()

    # -- connection ----------------------------------------------------------------------------
    def _accept(self) -> bool:
        listener = self._listener
        if listener is None:
            return False
        listener.settimeout(self._accept_timeout)
        try:
            connection, peer = listener.accept()
        except OSError:
            log.warning("no gdb connected to port %d; detaching", self.port)
            self._close()
            return False
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("gdb connected from %s:%d", *peer[:2])
        self._channel = RspChannel(connection, self.debugger.interrupt)
        return True

    def _close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._waiting = False

    def _send(self, payload: bytes) -> None:
        if self._channel is not None:
            self._channel.send(payload)

    def _serve(self) -> Resume:
        while self._channel is not None:
            packet = self._channel.receive()
            if packet is None:
                log.info("gdb disconnected; detaching")
                self._close()
                return Resume(ResumeKind.DETACH)
            try:
                reply, resume = self._dispatch(packet)
            except DebugError as err:
                log.debug("packet %r failed: %s", packet[:32], err)
                reply, resume = _ERROR, None
            if resume is not None:
                self._waiting = True
                return resume
            if reply is not None:
                self._send(reply)
        return Resume(ResumeKind.DETACH)

    # -- packets ---------------------------------------------------------------------------------
    def _dispatch(self, packet: bytes) -> tuple[bytes | None, Resume | None]:
        text = packet.decode("latin-1")
        head = text[:1]
        if head in ("c", "s"):
            return self._resume_packet(head, text[1:])
        if text.startswith("vCont"):
            return self._vcont(text)
        if head == "D":
            self._send(_OK)
            self._close()
            return None, Resume(ResumeKind.DETACH)
        if head == "k":
            self._close()
            return None, Resume(ResumeKind.DETACH)
        if head == "X":
            return self._write_binary(packet[1:]), None
        if text == "QStartNoAckMode" and self._channel is not None:
            self._send(_OK)
            self._channel.acknowledge = False
            return None, None
        return self._query(text), None

    def _query(self, text: str) -> bytes:
        head = text[:1]
        if text == "?":
            return self._stop_reply(self._last) if self._last is not None else b"S05"
        if head == "g":
            return b"".join(self._read_register(r) for r in REGISTERS).hex().encode()
        if head == "G":
            self._write_registers(bytes.fromhex(text[1:]))
            return _OK
        if head == "p":
            return self._read_register(REGISTERS[int(text[1:], 16)]).hex().encode()
        if head == "P":
            number, _, value = text[1:].partition("=")
            self._write_register(REGISTERS[int(number, 16)], bytes.fromhex(value))
            return _OK
        if head == "m":
            address, length = (int(part, 16) for part in text[1:].split(","))
            return self.target.read(address, length).hex().encode()
        if head == "M":
            where, _, data = text[1:].partition(":")
            address, _length = (int(part, 16) for part in where.split(","))
            self.target.write(address, bytes.fromhex(data))
            return _OK
        if head in "Zz":
            return self._breakpoint_packet(text)
        if head in "HT":
            return _OK
        return self._general_query(text)

    def _general_query(self, text: str) -> bytes:
        if text.startswith("qSupported"):
            return _FEATURES
        if text.startswith("qXfer:features:read:target.xml:"):
            offset, length = (int(part, 16) for part in text.rsplit(":", 1)[1].split(","))
            chunk = self._xml[offset:offset + length]
            more = offset + length < len(self._xml)
            return (b"m" if more else b"l") + escape(chunk)
        if text == "qAttached" or text.startswith("qAttached:"):
            return b"1"
        if text == "qC":
            return b"QC1"
        if text == "qfThreadInfo":
            return b"m1"
        if text == "qsThreadInfo":
            return b"l"
        if text.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(text[6:]).decode("utf-8", "replace"))
        return _EMPTY

    def _resume_packet(self, head: str, rest: str) -> tuple[None, Resume]:
        if rest and ";" not in rest:
            self.target.set_pc(int(rest, 16))
        kind = ResumeKind.STEP if head == "s" else ResumeKind.CONTINUE
        return None, Resume(kind)

    def _vcont(self, text: str) -> tuple[bytes | None, Resume | None]:
        if text == "vCont?":
            return b"vCont;c;C;s;S", None
        actions = [part.split(":")[0] for part in text.split(";")[1:]]
        if not actions:
            return _ERROR, None
        first = actions[0][:1]
        if first in "sS":
            return None, Resume(ResumeKind.STEP)
        if first in "cC":
            return None, Resume(ResumeKind.CONTINUE)
        return _ERROR, None

    def _monitor(self, command: str) -> bytes:
        output = self._shell.monitor(command)
        for start in range(0, len(output), _OUTPUT_CHUNK):
            self._send(b"O" + output[start:start + _OUTPUT_CHUNK].encode().hex().encode())
        return _OK

    # -- registers -------------------------------------------------------------------------------
    def _register_value(self, register: GdbRegister) -> int:
        name = register.name
        if name == "rip":
            return self.target.pc()
        if register.group == "float" or name.startswith("st"):
            return 0x37F if name == "fctrl" else 0
        return self.target.register(name)

    def _read_register(self, register: GdbRegister) -> bytes:
        value = self._register_value(register) & ((1 << register.bits) - 1)
        return value.to_bytes(register.size, "little")

    def _write_register(self, register: GdbRegister, raw: bytes) -> None:
        value = int.from_bytes(raw[:register.size], "little")
        if value == self._register_value(register) & ((1 << register.bits) - 1):
            return
        name = register.name
        if name == "rip":
            self.target.set_pc(value)
        elif register.group == "float" or name.startswith("st"):
            log.debug("x87 register %s is not emulated; write ignored", name)
        else:
            self.target.set_register(name, value)

    def _write_registers(self, raw: bytes) -> None:
        offset = 0
        for register in REGISTERS:
            chunk = raw[offset:offset + register.size]
            if len(chunk) < register.size:
                break
            self._write_register(register, chunk)
            offset += register.size

    def _write_binary(self, body: bytes) -> bytes:
        where, _, data = body.partition(b":")
        address, length = (int(part, 16) for part in where.decode("latin-1").split(","))
        if length:
            self.target.write(address, data[:length])
        return _OK

    # -- breakpoints -----------------------------------------------------------------------------
    def _breakpoint_packet(self, text: str) -> bytes:
        insert = text[0] == "Z"
        kind_text, address_text, length_text = text[1:].split(";")[0].split(",")
        kind, address, length = int(kind_text), int(address_text, 16), int(length_text, 16)
        table = self.debugger.breakpoints
        if kind in (0, 1):
            existing = table.find("gdb", BreakKind.CODE, address, Access.ANY, kind)
            if insert and existing is None:
                table.add(BreakKind.CODE, f"gdb Z{kind}", address=address, owner="gdb",
                          length=kind)
            elif not insert and existing is not None:
                table.remove(existing.number)
            return _OK
        access = _WATCH_KINDS.get(kind)
        if access is None:
            return _EMPTY
        existing = table.find("gdb", BreakKind.WATCH, address, access, length)
        if insert and existing is None:
            ranges = tuple(self.target.physical_ranges(address, length))
            table.add(BreakKind.WATCH, f"gdb {_WATCH_KEYS[access]} {address:#x}",
                      address=address, length=length, ranges=ranges, access=access, owner="gdb")
        elif not insert and existing is not None:
            table.remove(existing.number)
        return _OK

    # -- stop replies ----------------------------------------------------------------------------
    def _stop_reply(self, stop: Stop) -> bytes:
        signal = _SIGTRAP
        extra = ""
        entry = stop.breakpoint
        if stop.kind is StopKind.INTERRUPT:
            signal = _SIGINT
        elif stop.kind is StopKind.EVENT and stop.event == "exception" and entry is None:
            signal = _VECTOR_SIGNALS.get(stop.event_value or 0, _SIGSEGV)
        elif stop.kind is StopKind.BREAKPOINT and entry is not None and entry.owner == "gdb":
            extra = "hwbreak:;" if entry.length == 1 else "swbreak:;"
        elif stop.kind is StopKind.WATCHPOINT and entry is not None and entry.owner == "gdb":
            extra = f"{_WATCH_KEYS[entry.access]}:{_watched_address(stop, entry):x};"
        return f"T{signal:02x}thread:01;{extra}".encode()


def _watched_address(stop: Stop, entry: Breakpoint) -> int:
    """The address gdb watches that the first hit touched (gdb matches it to its watchpoint)."""
    base = entry.address or 0
    if not stop.hits or not entry.ranges:
        return base
    offset = 0
    hit = stop.hits[0]
    for start, end in entry.ranges:
        if start <= hit.address < end or hit.address < start < hit.address + hit.size:
            return base + offset + max(0, hit.address - start)
        offset += end - start
    return base
