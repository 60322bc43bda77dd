"""One logical CPU: its engine, its SMM state, and the run loop that takes SMIs.

The run loop alternates ``emu_start`` segments. A segment ends on ``hlt``, on
a stop requested by a hook, or on a refused memory access; the loop then
decides what the CPU does next:

* an SMI became pending (APM_CNT write) while outside SMM: write the save-state
  map, enter SMM in the architectural entry state and run from SMBASE+0x8000;
* the SMM code executed RSM: check the image, restore, re-close SMRAM and
  continue the interrupted code, or take a latched SMI first;
* anything else ends the run with a :class:`~smmemu.results.StopReason`.

SMI timing (smm_semantics.md 7.3, unicorn_probe.md row 7): ``emu_stop`` in an
OUT hook only takes effect at the end of the translation block, so the OUT hook
only marks the SMI pending; a code hook on the non-SMRAM address ranges, which
costs nothing inside SMRAM, stops before the next instruction. The saved RIP is
therefore the instruction after the OUT and nothing after the OUT has run.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from smmemu.chipset.bus import PortBus
from smmemu.engine import Engine, RunFault
from smmemu.memory import PhysicalMemory, SmramAccess
from smmemu.profiles import Profile, SaveStateKind
from smmemu.results import FaultRecord, Finding, SmiRecord, SmiResult, StopReason
from smmemu.smm import context
from smmemu.smm.delivery import GateError, plan_delivery, translate
from smmemu.smm.msr import EMULATED_MSRS, MsrBank, MsrFault
from smmemu.smm.savestate import (
    CpuSnapshot,
    IoTrap,
    RestoreImage,
    map_size,
    read_restore_image,
    write_save_state,
)
from smmemu.smm.smram import SmramView

__all__ = ["Cpu", "CpuObserver", "FaultDecoder", "HostCallHandler", "RunState"]

log = logging.getLogger(__name__)

_CR0_ENTRY_CLEAR = (1 << 0) | (1 << 31) | (1 << 2) | (1 << 3)
_RSM_OPCODE = b"\x0f\xaa"
_Q = struct.Struct("<Q")
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_REVISION_SMBASE_RELOCATION = 1 << 17
_CR4_RESERVED = (1 << 15) | ~((1 << 25) - 1)

HostCallHandler = Callable[["Cpu", int], None]
"""Performs the service of the thunk at the given address; sets RAX on the CPU."""
FaultDecoder = Callable[[], FaultRecord | None]
"""Reads (and clears) the MM core's fault record after SMM code halted."""


class CpuObserver(Protocol):
    """Receives architectural events as they happen (the debugger implements this)."""

    def on_event(self, cpu: Cpu, event: str, detail: int) -> bool:
        """Report ``event``; return True to pause the CPU after it.

        ``event`` is ``smi-entry`` (detail: SMBASE), ``rsm`` (detail: the RIP
        execution resumes at) or ``exception`` (detail: the vector).
        """


class RunState(enum.Enum):
    """Where a CPU is in a run."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"


class _Watchdog:
    """Stops the engine when a run exceeds its wall-clock budget (one thread per CPU).

    Arming and disarming are plain attribute writes: the thread polls a few
    times per budget instead of being woken per run, which would cost a
    thread switch on every request (about 40 us measured by the benchmark).
    """

    _POLL = 0.05

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._deadline: float | None = None
        self._period = self._POLL
        self._closed = threading.Event()
        self.expired = False
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        self.expired = False
        self._period = min(self._POLL, seconds / 4)
        self._deadline = time.monotonic() + seconds
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="smmemu-watchdog",
                                            daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        self._deadline = None

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        while not self._closed.wait(self._period):
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                self._deadline = None
                self.expired = True
                self._stop()


@dataclass(slots=True)
class _SmiFrame:
    """Book-keeping for the SMI being serviced."""

    record: SmiRecord
    interrupted: bytes
    halted: bool
    """The map's AutoHALTRestart bit was set at entry (Intel map, SMI taken in HLT)."""

    @property
    def entry_image(self) -> RestoreImage:
        """What RSM would restore from the map as the CPU wrote it at entry."""
        return read_restore_image(self.record.kind, self.record.raw_save_state, 0)


@dataclass(slots=True)
class _Run:
    """Per-run state shared by the hooks and the loop."""

    smis: list[SmiRecord] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    stop: StopReason | None = None
    detail: str = ""


class Cpu:
    """A CPU that runs non-SMM code and services SMIs with the MM core in SMRAM."""

    def __init__(
        self,
        index: int,
        profile: Profile,
        memory: PhysicalMemory,
        ports: PortBus,
        fault_decoder: FaultDecoder,
        on_abandon: Callable[[], None],
        *,
        smbase: int | None = None,
        preemptive: bool = False,
    ) -> None:
        self.index = index
        self._profile = profile
        self._memory = memory
        self._ports = ports
        self._fault_decoder = fault_decoder
        self._on_abandon = on_abandon
        self.engine = Engine()
        self.layout = self.engine.layout
        self.engine.map_host(0, memory.smram_base, memory.dram.address)
        self.smram = SmramView(self.engine, memory, lambda: self.engine.reg("rip"))
        self.smbase = profile.smbase if smbase is None else smbase
        self.in_smm = False
        self.halted = False
        """True while the CPU sits in HLT outside SMM (the end of every run)."""
        self.smi_count = 0
        self._smi_pending = False
        self._last_insn = 0
        self._last_io: tuple[int, int, bool] | None = None
        self._io_trap: IoTrap | None = None
        self._real_mode = Engine.real_mode_template(0)
        self._templates: dict[int, bytes] = {}
        self._frame: _SmiFrame | None = None
        self._run: _Run = _Run()
        self._rsm_requested = False
        self._exception_stop: tuple[StopReason, str] | None = None
        self._watchdog = _Watchdog(self.engine.stop)
        self.msr = MsrBank(profile, is_bsp=index == 0)
        self._msr_sites: dict[int, bool] = {}
        """Watched ``rdmsr`` (False) / ``wrmsr`` (True) sites; a snapshot restore resets it."""
        self._hooked: set[tuple[str, int]] = set()
        """Code hooks installed (Unicorn hooks stay when a restore forgets a site)."""
        self._msr_stop: tuple[int, bool] | None = None
        self._msr_fixup: tuple[int, int] | None = None
        self.nmi_pending = False
        self.nmi_masked = False
        """NMIs are blocked: an NMI handler has not executed IRET yet, or the CPU is in SMM."""
        self._smm_inside_nmi = False
        self._nmi_now = False
        self._iret_stop = False
        self._stepping_iret = False
        self._iret_sites: set[int] = set()
        self.observer: CpuObserver | None = None
        self.host_calls: HostCallHandler | None = None
        """Performs the service behind a host-call thunk (``ud2`` in SMRAM)."""
        self.host_call_range = (0, 0)
        self.guest_return_thunk = 0
        self._host_call: int | None = None
        self._guest_calls = 0
        self._guest_returned = 0
        self.paused: str | None = None
        """Why the CPU paused (a debugger request or an observed event), or None."""
        self._pause: str | None = None
        self._stepped_from: int | None = None
        self._counting = False
        self.state = RunState.IDLE
        self._next_rip = 0
        self._started = 0.0
        self.executed = 0
        """Bytes of code executed under preemption: the CPU's virtual clock, 1 ns per byte."""
        self._quantum_end = 0
        self._preempted = False
        self._install_hooks()
        self._preemptive = preemptive
        if preemptive:
            self.engine.on_block(self._on_block)

    # -- hooks ----------------------------------------------------------------
    def _install_hooks(self) -> None:
        engine = self.engine
        engine.on_port_out(self._on_port_out)
        engine.on_port_in(self._on_port_in)
        engine.on_interrupt(self._on_interrupt)
        engine.on_invalid_instruction(self._on_invalid_instruction)
        engine.on_protection_fault(self._on_protection_fault)
        engine.on_code(0, self._memory.smram_base - 1, self._on_outside_code)
        engine.on_code(self._memory.smram_end, 0xFFFF_FFFF_FFFF_FFFF, self._on_outside_code)

    def watch_msr_sites(self, sites: dict[int, bool], *,
                        fixed: dict[int, int] | None = None) -> None:
        """Intercept the ``rdmsr`` (False) / ``wrmsr`` (True) instructions at ``sites``.

        ``fixed`` maps sites whose MSR the code alone determines to that MSR; a
        site fixed to an MSR smmemu does not emulate needs no hook (Unicorn runs it).

        An access that succeeds is emulated without stopping the CPU: a write is
        applied in the hook and the native ``wrmsr`` (a no-op for these MSRs in
        Unicorn) runs; a read lets the native ``rdmsr`` run and a second hook on
        the next instruction loads the emulated value into EDX:EAX. Only an
        access that raises #GP stops the CPU, to deliver the exception.
        """
        for address, is_write in sites.items():
            if self._msr_sites.get(address) is is_write:
                continue
            if fixed is not None and address in fixed and fixed[address] not in EMULATED_MSRS:
                continue
            self._msr_sites[address] = is_write
            self._hook_once("msr", address, self._on_msr_site)
            if not is_write:
                self._hook_once("fixup", address + 2, self._on_msr_fixup)
            self.engine.invalidate_code(address, address + 3)

    def _hook_once(self, kind: str, address: int, callback: Callable[[int, int], None]) -> None:
        if (kind, address) not in self._hooked:
            self._hooked.add((kind, address))
            self.engine.on_code(address, address, callback)

    def _on_msr_site(self, address: int, _size: int) -> None:
        engine = self.engine
        msr = engine.reg("rcx") & 0xFFFF_FFFF
        is_write = self._msr_sites.get(address)
        if msr not in EMULATED_MSRS or is_write is None:
            return
        try:
            if is_write:
                value = (engine.reg("rdx") & 0xFFFF_FFFF) << 32 | engine.reg("rax") & 0xFFFF_FFFF
                self.msr.write(msr, value, in_smm=self.in_smm)
            else:
                value = self.msr.read(msr, in_smm=self.in_smm, smbase=self.smbase,
                                      smi_count=self.smi_count)
                self._msr_fixup = (address + 2, value)
        except MsrFault:
            self._msr_stop = (address, is_write)
            engine.stop()

    def watch_iret_sites(self, sites: list[int]) -> None:
        """Watch ``iretq`` instructions: IRET ends NMI blocking.

        SDM Vol. 3C, "NMI Handling While in SMM".
        """
        for address in sites:
            if address not in self._iret_sites:
                self._iret_sites.add(address)
                self._hook_once("iret", address, self._on_iret)
                self.engine.invalidate_code(address, address + 2)

    def _on_iret(self, address: int, _size: int) -> None:
        if not self.nmi_masked or self._stepping_iret or address not in self._iret_sites:
            return
        if self.nmi_pending:
            # Deliver the held NMI right after this IRET: stop, run the IRET alone, deliver.
            self._iret_stop = True
            self.engine.stop()
        else:
            self.nmi_masked = False

    def inject_nmi(self) -> bool:
        """An NMI arrives. Returns True when it is delivered now, False when it is held.

        NMIs are held while blocked (in SMM, or until the NMI handler's IRET) and
        delivered as soon as the block ends. Outside SMM the NMI goes through
        the current IDT, vector 2.
        """
        if self.nmi_masked:
            self.nmi_pending = True
            return False
        if self.state is RunState.RUNNING:
            self._nmi_now = True
            self.nmi_pending = True
            self.engine.stop()
            return True
        self._deliver_nmi(self.engine.reg("rip"))
        return True

    def _deliver_nmi(self, rip: int) -> None:
        self.nmi_pending = False
        self.nmi_masked = True
        self._deliver(2, rip)

    def _on_msr_fixup(self, address: int, _size: int) -> None:
        pending = self._msr_fixup
        if pending is not None and pending[0] == address:
            self._msr_fixup = None
            self.engine.set_reg("rax", pending[1] & 0xFFFF_FFFF)
            self.engine.set_reg("rdx", pending[1] >> 32)

    def _on_block(self, _address: int, size: int) -> None:
        if self.executed >= self._quantum_end:
            self._preempted = True
            self.engine.stop()
            return
        self.executed += size

    def _on_port_out(self, port: int, size: int, value: int) -> None:
        self._last_io = (port, size, False)
        self._ports.write(port, size, value)
        self._last_io = None

    def _on_port_in(self, port: int, size: int) -> int:
        return self._ports.read(port, size)

    def _on_outside_code(self, address: int, _size: int) -> None:
        if self.in_smm and self.smbase <= address < self.smbase + 0x1_0000:
            # Still the CPU's own SMBASE area (the reset SMBASE 0x30000 during relocation,
            # which QEMU backs with its smbase-smram window).
            return
        if self.in_smm and self.msr.code_check_enabled:
            self._run.findings.append(Finding(
                "machine-check", f"SMM code fetch outside SMRAM at {address:#x} with "
                "SMM_Code_Chk_En set: unrecoverable machine check", address))
            self._exception_stop = (StopReason.MACHINE_CHECK,
                                    f"machine check: SMM fetch at {address:#x} outside SMRAM")
            self.engine.stop()
            return
        if self.in_smm:
            self._run.findings.append(Finding(
                "smm-callout", f"SMM code fetched an instruction outside SMRAM at {address:#x}",
                address))
            self._exception_stop = (StopReason.SMM_FAULT, f"call-out to {address:#x}")
            self.engine.stop()
            return
        if self._smi_pending:
            if self._entry_in_hook_allowed(address):
                # SMI entry before this instruction, in this same run: the entry context
                # is loaded and writing RIP makes Unicorn leave the current block and
                # continue there (unicorn_probe.md row 6 does the same for RSM).
                self.engine.set_reg("rip", self._enter_smm())
                return
            self.engine.stop()
            return
        self._last_insn = address

    def _on_invalid_instruction(self) -> bool:
        blob = self.engine.save_context()
        rip = int(_Q.unpack_from(blob, self.layout.eip)[0])
        if self.in_smm:
            low, high = self.host_call_range
            if low <= rip < high:
                self._host_call = rip
                self.engine.stop()
                return True
            if self._rsm_at(blob, rip):
                frame = self._frame
                if frame is not None and self._rsm_in_hook_allowed(frame):
                    # Execution carries on from the restored context in this same run
                    # (unicorn_probe.md row 6): one emu_start less per SMI.
                    self._rsm_unchanged(frame)
                    return True
                self._rsm_requested = True
                self.engine.stop()
                return True
            self._deliver(6, rip)
            return True
        self._exception_stop = (StopReason.GUEST_FAULT, f"#UD outside SMM at {rip:#x}")
        self.engine.stop()
        return True

    def _on_interrupt(self, vector: int) -> None:
        rip = self.engine.reg("rip")
        if not self.in_smm:
            self._exception_stop = (StopReason.GUEST_FAULT,
                                    f"exception {vector} outside SMM at rip {rip:#x}")
            self.engine.stop()
            return
        self._deliver(vector, rip)

    def _on_protection_fault(self, kind: str, address: int, size: int, _value: int) -> bool:
        if not self.in_smm and self._memory.in_smram(address, size) and kind == "fetch":
            self._memory.findings.append(
                SmramAccess("guest", "fetch", address, size, None, address))
        return False

    # -- SMI signalling -------------------------------------------------------
    def raise_smi(self) -> None:
        """SMI# asserted for this CPU: taken at the next instruction boundary (or after RSM)."""
        if self._last_io is not None and not self.in_smm:
            port, size, is_in = self._last_io
            self._io_trap = IoTrap(port, size, is_in, False, self._last_insn)
        self._smi_pending = True

    # -- running --------------------------------------------------------------
    @property
    def smi_pending(self) -> bool:
        """An SMI is latched and not yet taken."""
        return self._smi_pending

    def run(self, rip: int, *, budget: float) -> SmiResult:
        """Run non-SMM code from ``rip`` until it halts, servicing every SMI it raises."""
        self.start(rip)
        return self._finish_alone(budget)

    def service_pending_smi(self, *, budget: float) -> SmiResult:
        """Take a pending SMI on a halted CPU (an SMI IPI) and run until it halts again.

        The SMI wakes the CPU from HLT: the Intel map's auto-HALT restart bit is
        set, and RSM either halts again (bit left set) or resumes after the HLT.
        """
        self.wake()
        return self._finish_alone(budget)

    def _finish_alone(self, budget: float) -> SmiResult:
        self._watchdog.arm(budget)
        try:
            while self.state is RunState.RUNNING:
                self.step(None)
        finally:
            self._watchdog.disarm()
        return self.result()

    def start(self, rip: int) -> None:
        """Begin a run of non-SMM code at ``rip`` (driven by :meth:`step`)."""
        self._run = _Run()
        self._started = time.perf_counter()
        self._next_rip = rip
        self.halted = False
        self.state = RunState.RUNNING

    def wake(self) -> None:
        """Begin a run that takes the pending SMI where the CPU waits."""
        self._run = _Run()
        self._started = time.perf_counter()
        self.state = RunState.RUNNING
        self._next_rip = self.engine.reg("rip")
        if self._smi_pending and not self.in_smm:
            self._next_rip = self._enter_smm(halted=self.halted)
        self.halted = False

    def step(self, quantum: int | None) -> None:
        """Run one segment: up to ``quantum`` bytes of code when preemptive, else to a stop."""
        if self.state is not RunState.RUNNING:
            return
        self.paused = None
        self._quantum_end = self.executed + quantum if quantum is not None else 1 << 62
        if self._counting:
            self._leave_counting()
        self._next_rip = self._segment(self._next_rip)
        if self._run.stop is not None:
            self.state = RunState.DONE

    def _leave_counting(self) -> None:
        """Back to free runs after single steps.

        Besides dropping the counted translations, absorb a Unicorn quirk: the
        first free ``emu_start`` after counted ones looks up addresses of earlier
        counted runs in the current page tables (seen: the non-SMM ``out 0xb2``
        that was stepped into SMM, looked up under SMM paging). Each miss is a
        silent #PF that sets CR2 and ``old_exception``, so the next real
        exception turns into #DF or a silent triple fault (unicorn_probe.md row
        5). A zero-length run (``until`` = the start) takes those lookups; the
        context from before it is then put back.
        """
        engine = self.engine
        engine.flush_translations()
        self._counting = False
        blob = engine.save_context()
        start = self._linear(self._next_rip)
        with contextlib.suppress(RunFault):
            engine.run(self._next_rip, start, 0)
        engine.restore_context(blob)

    def step_instruction(self) -> None:
        """Execute exactly one instruction (unicorn_probe.md row 16: ``count=1`` is exact).

        SMI entry, RSM and exception delivery happen inside the step they
        belong to, so stepping follows the CPU from the OUT into SMBASE+0x8000
        and from RSM back into the interrupted code.
        """
        if self.state is not RunState.RUNNING:
            return
        self.paused = None
        self._quantum_end = 1 << 62
        if not self._counting:
            self.engine.flush_translations()
            self._counting = True
        self._next_rip = self._segment(self._next_rip, count=1)
        if self._run.stop is not None:
            self.state = RunState.DONE

    @property
    def next_rip(self) -> int:
        """Where the CPU continues (RIP; an offset from CS.base outside 64-bit mode)."""
        return self._next_rip if self.state is RunState.RUNNING else self.engine.reg("rip")

    @next_rip.setter
    def next_rip(self, rip: int) -> None:
        """Move where a paused CPU continues (a debugger writing RIP)."""
        self.engine.set_reg("rip", rip)
        if self.state is RunState.RUNNING:
            self._next_rip = rip

    def request_pause(self, reason: str) -> None:
        """Pause before the current instruction (call from a code or memory hook)."""
        self._pause = reason
        self.engine.stop()

    def _notify(self, event: str, detail: int) -> None:
        if self.observer is not None and self.observer.on_event(self, event, detail):
            self.paused = event

    def stop_with(self, stop: StopReason, detail: str) -> None:
        """End the current run from outside (the machine's budget ran out)."""
        if self.state is RunState.RUNNING:
            self._finish(stop, self._where(detail))
            self.state = RunState.DONE

    def result(self) -> SmiResult:
        """The outcome of the run that just ended (leaves SMM if it ended inside)."""
        if self.in_smm:
            self._abandon_smi()
        self.state = RunState.IDLE
        return SmiResult(
            stop=self._run.stop or StopReason.HALTED, smis=self._run.smis,
            registers=self.registers(), findings=self._run.findings, detail=self._run.detail,
            elapsed=time.perf_counter() - self._started,
        )

    def _segment(self, rip: int, count: int = 0) -> int:
        """Run one ``emu_start`` segment and decide what follows; returns the next RIP."""
        self._rsm_requested = False
        self._exception_stop = None
        self._msr_stop = None
        self._preempted = False
        self._iret_stop = False
        self._nmi_now = False
        self._pause = None
        self._host_call = None
        self._stepped_from = rip if count else None
        try:
            self.engine.run(rip, count=count)
        except RunFault as run_fault:
            return self._on_run_fault(run_fault)
        return self._after_segment()

    def _after_segment(self) -> int:
        """Decide what follows a segment that ended without a refused access."""
        if self._watchdog.expired:
            self._finish(StopReason.BUDGET_EXCEEDED, self._where("budget exceeded"))
            return 0
        if self._pause is not None:
            self.paused, self._pause = self._pause, None
            return self.engine.reg("rip")
        if self._preempted and not (self._exception_stop or self._msr_stop
                                    or self._rsm_requested):
            return self.engine.reg("rip")
        if self._exception_stop is not None:
            self._finish(*self._exception_stop)
            return 0
        if self._msr_stop is not None:
            return self._emulate_msr(*self._msr_stop)
        if self._host_call is not None:
            return self._perform_host_call(self._host_call)
        if self._iret_stop:
            self._stepping_iret = True
            try:
                if not self._counting:
                    self.engine.flush_translations()
                self.engine.run(self.engine.reg("rip"), count=1)
                if not self._counting:
                    self.engine.flush_translations()
            finally:
                self._stepping_iret = False
            self.nmi_masked = False
            self._deliver_nmi(self.engine.reg("rip"))
            return self.engine.reg("rip")
        if self._nmi_now:
            self._deliver_nmi(self.engine.reg("rip"))
            return self.engine.reg("rip")
        if self._rsm_requested:
            return self._rsm()
        if self._smi_pending and not self.in_smm:
            return self._enter_smm()
        if self._stepped_from is not None and not self._stepped_onto_hlt():
            return self.engine.reg("rip")
        if self.in_smm:
            fault = self._fault_decoder()
            if fault is not None:
                self._finish(StopReason.SMM_FAULT, f"{fault.name} in SMM at rip {fault.rip:#x}",
                             fault=fault)
            else:
                self._finish(StopReason.SMM_HALT, self._where("hlt in SMM"))
            return 0
        self._finish(StopReason.HALTED, "")
        self.halted = True
        return 0

    def _stepped_onto_hlt(self) -> bool:
        """Whether the single-stepped instruction was ``hlt`` (the run then ends)."""
        start = self._stepped_from
        return start is not None and self._read_code(self._linear(start), 1) == b"\xf4"

    def _where(self, what: str) -> str:
        rip = self.engine.reg("rip")
        mode = "SMM" if self.in_smm else "non-SMM"
        return f"{what} at rip {rip:#x} ({mode})"

    def _finish(self, stop: StopReason, detail: str, *, fault: FaultRecord | None = None) -> None:
        self._run.stop = stop
        self._run.detail = detail
        if self._frame is not None:
            self._frame.record.stop = stop
            self._frame.record.fault = fault
            self._frame.record.detail = detail

    def _on_run_fault(self, fault: RunFault) -> int:
        rip = self.engine.reg("rip")
        if not self.in_smm and fault.kind in ("read", "write") and not fault.unmapped:
            # A non-SMM data access to closed SMRAM: switch to the black hole and retry.
            self.smram.to_blackhole()
            return rip
        if not self.in_smm and fault.kind == "fetch":
            self._finish(StopReason.SMRAM_FETCH,
                         f"non-SMM code jumped into SMRAM or unmapped memory at {rip:#x}")
            return 0
        mode = "SMM" if self.in_smm else "non-SMM"
        what = "unmapped" if fault.unmapped else "protected"
        self._finish(StopReason.GUEST_FAULT,
                     f"{mode} {fault.kind} of {what} memory at rip {rip:#x}")
        return 0

    # -- SMM entry ------------------------------------------------------------
    def _template(self, smbase: int) -> bytes:
        template = self._templates.get(smbase)
        if template is None:
            template = context.smm_template(self.layout, self._real_mode, smbase)
            self._templates[smbase] = template
        return template

    def _save_state_view(self) -> tuple[memoryview, int]:
        """The host buffer and offset of this CPU's save-state map (SMRAM, or DRAM at 0x30000)."""
        kind = self._profile.save_state
        return self._memory.view_at(self.smbase + self._profile.save_state_offset,
                                    map_size(kind))

    def _enter_smm(self, *, halted: bool = False) -> int:
        engine = self.engine
        self._smi_pending = False
        interrupted = engine.save_context()
        snap = context.snapshot(self.layout, interrupted, rflags=engine.reg("rflags"))
        io = self._io_trap_for(snap) if self._io_trap is not None else None
        self._io_trap = None
        view, offset = self._save_state_view()
        kind = self._profile.save_state
        write_save_state(kind, view, offset, snap, smbase=self.smbase,
                         revision=self._profile.smm_revision, io=io, halted=halted)
        raw = bytes(view[offset:offset + map_size(kind)])
        record = SmiRecord(index=self.smi_count, smbase=self.smbase, kind=kind,
                           raw_save_state=raw)
        self._run.smis.append(record)
        self._frame = _SmiFrame(record, interrupted, halted and kind is SaveStateKind.INTEL64)
        self.smi_count += 1
        engine.restore_context(context.entry_blob(self.layout, interrupted,
                                                  self._template(self.smbase)))
        engine.set_reg("cr0", snap.cr0 & ~_CR0_ENTRY_CLEAR & 0xFFFF_FFFF)
        engine.flush_tlb()
        self.smram.open()
        self.in_smm = True
        # SMM blocks NMIs; if one was already blocked (SMI inside an NMI handler), remember it.
        self._smm_inside_nmi = self.nmi_masked
        self.nmi_masked = True
        self._notify("smi-entry", self.smbase)
        return 0x8000

    def _io_trap_for(self, snap: CpuSnapshot) -> IoTrap | None:
        """Complete the pending I/O trap: was the OUT/IN the DX or the immediate form?"""
        trap = self._io_trap
        if trap is None or self._profile.save_state is SaveStateKind.AMD64:
            # The AMD64 map's IO_DWord does not tell the two forms apart.
            return trap
        code = self._read_code_paged(trap.rip, 2, snap.cr0, snap.cr3)
        opcode = code[1] if code[:1] == b"\x66" else (code[0] if code else 0)
        return IoTrap(trap.port, trap.size, trap.is_in, opcode in (0xEC, 0xED, 0xEE, 0xEF),
                      trap.rip)

    # -- RSM ------------------------------------------------------------------
    def _rsm(self) -> int:
        frame = self._frame
        if frame is None:
            self._finish(StopReason.SHUTDOWN, "RSM without an SMI frame")
            return 0
        if self._map_unchanged(frame):
            return self._rsm_unchanged(frame)
        image = read_restore_image(self._profile.save_state, *self._save_state_view())
        reason = _shutdown_reason(image)
        if reason is not None:
            self._run.findings.append(Finding("rsm-shutdown", reason))
            self._finish(StopReason.SHUTDOWN, f"RSM shut the CPU down: {reason}")
            return 0
        engine = self.engine
        before = frame.entry_image
        engine.restore_context(context.rsm_blob(self.layout, engine.save_context(),
                                                frame.interrupted, image.gprs, image.rip))
        for name in ("cr4", "cr3", "cr0", "efer", "rflags", "dr6", "dr7"):
            value = getattr(image, name)
            if value != getattr(before, name):
                engine.set_reg(name, value)
        engine.flush_tlb()
        if image.revision & _REVISION_SMBASE_RELOCATION:
            self.smbase = image.smbase
        self._leave_smm(frame)
        rip = image.rip
        self._notify("rsm", rip)
        if image.io_smi and image.io_restart == 0xFF:
            # I/O instruction restart (SDM "I/O Instruction Restart"): run the I/O again.
            return self._resume_after_rsm(image.io_rip, halt=False)
        return self._resume_after_rsm(
            rip, halt=bool(before.auto_halt_restart & 1 and image.auto_halt_restart & 1))

    def _leave_smm(self, frame: _SmiFrame) -> None:
        """The bookkeeping of RSM once the state is restored: SMRAM closed, NMIs as before."""
        frame.record.rsm = True
        self._frame = None
        self.in_smm = False
        self.smram.close()
        if not self._smm_inside_nmi:
            self.nmi_masked = False

    def _resume_after_rsm(self, rip: int, *, halt: bool) -> int:
        """Where the CPU goes after RSM: a pending SMI, a held NMI, or ``rip``.

        ``halt``: auto-HALT restart left set, so the CPU returns to the HLT state
        (an SMI or an unblocked NMI wakes it again).
        """
        if self._smi_pending:
            # Taken at the boundary of the instruction the CPU resumes at: with I/O
            # restart that is the I/O instruction, not the RIP the map restored.
            self.engine.set_reg("rip", rip)
            return self._enter_smm(halted=halt)
        if self.nmi_pending and not self.nmi_masked:
            self._deliver_nmi(rip)
            return self.engine.reg("rip")
        if halt:
            self._finish(StopReason.HALTED, "")
            self.halted = True
            return 0
        return rip

    def _entry_in_hook_allowed(self, address: int) -> bool:
        """Whether a pending SMI can be entered inside the code hook instead of after a stop.

        Not when another code hook covers ``address``: it would run after this one,
        already in SMM, for an instruction the CPU never executes there.
        """
        return (self._unwatched and not self.in_smm and self.state is RunState.RUNNING
                and self.engine.code_hooks_at(address) <= 1)

    def _rsm_in_hook_allowed(self, frame: _SmiFrame) -> bool:
        """Whether RSM can complete inside the #UD hook instead of after a stop.

        Only the plain case: nobody observes or steps the CPU, no block hook
        preempts it, nothing is pending that RSM would act on, the map is as the
        CPU wrote it and the CPU returns to running code (not to HLT).
        """
        return (self._unwatched and not (self._smi_pending or self.nmi_pending or frame.halted)
                and self._map_unchanged(frame))

    @property
    def _unwatched(self) -> bool:
        """Nobody observes or single-steps the CPU and no block hook preempts it."""
        return not (self.observer is not None or self._counting or self._preemptive)

    def _map_unchanged(self, frame: _SmiFrame) -> bool:
        """Whether the save-state map still holds what the CPU wrote at entry."""
        view, offset = self._save_state_view()
        raw = frame.record.raw_save_state
        return view[offset:offset + len(raw)] == raw

    def _rsm_unchanged(self, frame: _SmiFrame) -> int:
        """RSM from a map SMM left as the CPU wrote it: back to the interrupted state.

        The map then holds exactly the interrupted GPRs, RIP, control registers and
        segments, so RSM's consistency checks pass (the CPU ran in that state) and
        nothing needs re-deriving; state RSM does not restore stays as SMM left it.
        """
        engine = self.engine
        engine.restore_context(context.rsm_blob(self.layout, engine.save_context(),
                                                frame.interrupted))
        engine.flush_tlb()
        self._leave_smm(frame)
        rip = int(_Q.unpack_from(frame.interrupted, self.layout.eip)[0])
        self._notify("rsm", rip)
        return self._resume_after_rsm(rip, halt=frame.halted)

    def _abandon_smi(self) -> None:
        """Leave SMM after a terminal stop: back to the interrupted context, SMRAM closed."""
        if self._frame is not None:
            self.engine.restore_context(self._frame.interrupted)
            self.engine.flush_tlb()
            self._frame = None
        self.in_smm = False
        self._smi_pending = False
        self.smram.close()
        self._on_abandon()

    # -- host calls -------------------------------------------------------------
    def _perform_host_call(self, thunk: int) -> int:
        """Run the service behind ``thunk`` and return to its caller, as ``ret`` would."""
        if thunk == self.guest_return_thunk:
            self._guest_returned += 1
            return 0
        if self.host_calls is None:
            self._deliver(6, thunk)
            return self.engine.reg("rip")
        self.host_calls(self, thunk)
        if self._run.stop is not None:
            return 0
        rsp = self.engine.reg("rsp")
        target = int.from_bytes(self._read_linear(rsp, 8), "little")
        self.engine.set_reg("rsp", rsp + 8)
        return target

    def argument(self, index: int) -> int:
        """Argument ``index`` (0-based) of the EFIAPI call being serviced."""
        if index < 4:
            return self.engine.reg(("rcx", "rdx", "r8", "r9")[index])
        address = self.engine.reg("rsp") + 0x28 + (index - 4) * 8
        return int.from_bytes(self._read_linear(address, 8), "little")

    def call_guest(self, function: int, args: list[int]) -> int | None:
        """Call the EFIAPI ``function(*args)`` in SMM from a host call; its RAX, or None.

        The call runs on the current stack below RSP and returns to a host thunk;
        every register is restored afterwards. None when the callee ended the run
        (a fault, a budget).
        """
        engine = self.engine
        saved = engine.save_context()
        base = (engine.reg("rsp") - 0x200) & ~0xF
        entry_rsp = base - 0x8
        frame = self.guest_return_thunk.to_bytes(8, "little") + bytes(0x20)
        frame += b"".join(value.to_bytes(8, "little") for value in args[4:])
        physical = self._linear_to_physical(entry_rsp)
        if physical is None:
            return None
        self._memory.write(physical, frame, smm=True)
        for register, value in zip(("rcx", "rdx", "r8", "r9"), args[:4], strict=False):
            engine.set_reg(register, value)
        engine.set_reg("rsp", entry_rsp)
        self._guest_calls += 1
        depth = self._guest_calls
        rip = function
        try:
            while self._guest_returned < depth and self._run.stop is None:
                rip = self._segment(rip)
            if self._run.stop is not None:
                return None
            result = engine.reg("rax")
        finally:
            self._guest_calls -= 1
            self._guest_returned = min(self._guest_returned, self._guest_calls)
        engine.restore_context(saved)
        return result

    # -- MSRs -------------------------------------------------------------------
    def _emulate_msr(self, address: int, is_write: bool) -> int:
        """Perform the stopped ``rdmsr``/``wrmsr`` at ``address``; returns the next RIP."""
        engine = self.engine
        msr = engine.reg("rcx") & 0xFFFF_FFFF
        try:
            if is_write:
                value = (engine.reg("rdx") & 0xFFFF_FFFF) << 32 | engine.reg("rax") & 0xFFFF_FFFF
                self.msr.write(msr, value, in_smm=self.in_smm)
            else:
                value = self.msr.read(msr, in_smm=self.in_smm, smbase=self.smbase,
                                      smi_count=self.smi_count)
                engine.set_reg("rax", value & 0xFFFF_FFFF)
                engine.set_reg("rdx", value >> 32)
        except MsrFault as fault:
            if not self.in_smm:
                self._finish(StopReason.GUEST_FAULT,
                             f"#GP outside SMM: {'wrmsr' if is_write else 'rdmsr'} {msr:#x} "
                             f"at rip {address:#x}: {fault}")
                return 0
            self._deliver(13, address, error_code=0)
            if self._exception_stop is not None:
                self._finish(*self._exception_stop)
                return 0
            return engine.reg("rip")
        return address + 2

    # -- exceptions in SMM ------------------------------------------------------
    def _linear(self, rip: int) -> int:
        """CS.base + RIP: hooks report RIP, which is an offset outside 64-bit mode."""
        return self._linear_in(self.engine.save_context(), rip)

    def _linear_in(self, blob: bytes, rip: int) -> int:
        """CS.base + RIP under the context ``blob``."""
        return (int(_Q.unpack_from(blob, self.layout.seg("cs") + 8)[0]) + rip) & _MASK64

    def _rsm_at(self, blob: bytes, rip: int) -> bool:
        """Whether the instruction at ``rip`` that raised #UD is RSM (0F AA).

        The CPU fetched its bytes, so they are read through Unicorn's own
        translation: the first byte, and the second only after a 0F (which the CPU
        then fetched too). The host page walk under ``blob``'s paging is the fallback.
        """
        linear = self._linear_in(blob, rip)
        first = self.engine.read_fetched(linear, 1, context=blob)
        if first is None:
            cr = self.layout.cr
            cr0, cr3 = int(_Q.unpack_from(blob, cr)[0]), int(_Q.unpack_from(blob, cr + 24)[0])
            return self._read_code_paged(linear, 2, cr0, cr3) == _RSM_OPCODE
        if first != _RSM_OPCODE[:1]:
            return False
        return self.engine.read_fetched((linear + 1) & _MASK64, 1, context=blob) == _RSM_OPCODE[1:]

    def _read_code(self, linear: int, size: int) -> bytes:
        return self._read_code_paged(linear, size, self.engine.reg("cr0"), self.engine.reg("cr3"))

    def _linear_to_physical(self, linear: int) -> int | None:
        return self._translate(linear, self.engine.reg("cr0"), self.engine.reg("cr3"))

    def _translate(self, linear: int, cr0: int, cr3: int) -> int | None:
        if not cr0 & (1 << 31):
            return linear & 0xFFFF_FFFF
        return translate(self._memory.qword, cr3, linear)

    def _read_code_paged(self, linear: int, size: int, cr0: int, cr3: int) -> bytes:
        physical = self._translate(linear, cr0, cr3)
        if physical is None:
            return b""
        try:
            return self._memory.read(physical, size, smm=True)
        except Exception:  # noqa: BLE001 - any unreadable address simply has no bytes
            return b""

    def _read_linear(self, linear: int, size: int) -> bytes:
        physical = self._linear_to_physical(linear)
        if physical is None:
            raise GateError(f"linear address {linear:#x} is not mapped")
        return self._memory.read(physical, size, smm=True)

    def _stack_physical(self, linear: int) -> int:
        physical = self._linear_to_physical(linear)
        if physical is None:
            raise GateError(f"exception stack {linear:#x} is not mapped")
        return physical

    def _deliver(self, vector: int, rip: int, *, error_code: int | None = None) -> None:
        """Deliver ``vector`` through the MM core's IDT, as the CPU would."""
        engine = self.engine
        blob = engine.save_context()
        if error_code is None:
            error_code = context.error_code(self.layout, blob)
        try:
            plan = plan_delivery(
                self._read_linear, vector=vector, idtr=engine.table_reg("idtr")[1:3],
                tss_base=engine.table_reg("tr")[1], rip=rip, cs=engine.reg("cs"),
                rflags=engine.reg("rflags"), rsp=engine.reg("rsp"), ss=engine.reg("ss"),
                error_code=error_code,
            )
            stack = self._stack_physical(plan.frame_address)
        except GateError as err:
            self._run.findings.append(Finding("smm-shutdown", f"vector {vector}: {err}"))
            self._exception_stop = (StopReason.SHUTDOWN,
                                    f"exception {vector} at rip {rip:#x} could not be "
                                    f"delivered ({err}): the CPU shuts down")
            engine.stop()
            return
        self._memory.write(stack, plan.frame, smm=True)
        engine.restore_context(context.reset_old_exception(self.layout, blob))
        engine.set_reg("rsp", plan.rsp)
        engine.set_reg("rflags", plan.rflags)
        engine.set_reg("rip", plan.handler)
        if self.observer is not None and self.observer.on_event(self, "exception", vector):
            self.request_pause(f"exception {vector}")

    # -- state ------------------------------------------------------------------
    def registers(self) -> dict[str, int]:
        """GPRs, RIP, RFLAGS, CR0, CR3, CR4 and EFER of the CPU now."""
        regs = context.read_registers(self.layout, self.engine.save_context())
        regs["rflags"] = self.engine.reg("rflags")
        return regs

    def close(self) -> None:
        """Stop the watchdog and release the engine."""
        self._watchdog.close()
        self.engine.close()


def _shutdown_reason(image: RestoreImage) -> str | None:
    """The SDM's RSM consistency checks (SDM Vol. 3C, RSM; smm_semantics.md 3)."""
    cr0, cr4, efer = image.cr0, image.cr4, image.efer
    if cr0 & (1 << 31) and not cr0 & 1:
        return f"CR0 {cr0:#x} has PG set with PE clear"
    if cr0 & (1 << 29) and not cr0 & (1 << 30):
        return f"CR0 {cr0:#x} has NW set with CD clear"
    if cr4 & _CR4_RESERVED & 0xFFFF_FFFF_FFFF_FFFF:
        return f"CR4 {cr4:#x} sets a reserved bit"
    if efer & (1 << 10) and not (cr4 & (1 << 5) and cr0 & (1 << 31) and cr0 & 1
                                 and efer & (1 << 8)):
        return f"EFER {efer:#x} has LMA set without PAE, PG, PE and LME"
    return None


def u64(data: bytes, offset: int) -> int:
    """Little-endian u64 at ``offset``."""
    return int(struct.unpack_from("<Q", data, offset)[0])
