"""The debugger core: takes over a Machine's run loop and stops the CPU where the user asked.

:class:`Debugger` installs itself as ``Machine.run_hook``, so every request
(``communicate``, ``software_smi``, a session step) runs through it unchanged,
and as the CPU's observer, so it sees SMI entry, RSM and exceptions as they
happen. It runs the CPU one of two ways (:mod:`smmemu.debug.execution`):

* **free**: ``Cpu.step(None)`` segments at full speed. Code breakpoints are
  per-address code hooks that pause the CPU before the instruction; CPU events
  pause through the observer. With no breakpoint set nothing is hooked at all:
  an attached, idle debugger costs one observer call per SMI entry and RSM.
* **stepping**: ``Cpu.step_instruction()`` one instruction at a time (about 4 us
  each), used while a watchpoint or an I/O or MSR breakpoint exists and for
  ``finish``/``until``. Watchpoints are memory hooks that record accesses; the
  stop is reported after the instruction completes, as x86 debug registers do.

Resuming from a stop always executes one instruction by single step first, so
a breakpoint at the current PC does not fire again ("skip once"). SMI entry
and RSM happen inside the step they belong to, so stepping follows the CPU from
``out 0xb2`` to SMBASE+0x8000, through the 16- and 32-bit entry code, and from
``rsm`` back into the interrupted code. A run that ends while the user steps or
continues carries the request over to the next run (a ``stepi`` on the final
``hlt`` stops at the first instruction of the next request).

The debugger follows CPU 0 of a one-CPU machine without a virtual clock.
Code that host services run through ``Cpu.call_guest`` executes inside one
step and cannot be stopped in; SMI IPIs and timer SMIs (``send_smi_ipi``,
``advance_time``) do not go through ``run_hook`` and are not debugged.
"""

from __future__ import annotations

from smmemu.cpu import Cpu, RunState
from smmemu.debug.breakpoints import BreakKind, BreakpointTable
from smmemu.debug.errors import DebugError, DebuggerQuit
from smmemu.debug.execution import Execution
from smmemu.debug.stopper import Stopper
from smmemu.debug.stops import Frontend, Resume, ResumeKind, Stop, StopKind
from smmemu.debug.target import Target
from smmemu.errors import GuidError, MachineClosedError
from smmemu.machine import Machine
from smmemu.results import SmiResult, StopReason
from smmemu.smm.savestate import map_size
from smmemu.uefi.guids import WELL_KNOWN, parse_guid

__all__ = ["Debugger"]

_EVENTS = {"smi-entry": BreakKind.SMI, "rsm": BreakKind.RSM, "exception": BreakKind.EXCEPTION}


class Debugger:
    """Debugs the runs of CPU 0 of ``machine`` through a :class:`~smmemu.debug.stops.Frontend`.

    Args:
        machine: a one-CPU Machine without a virtual clock.
        budget: wall-clock seconds one resume may take before the CPU is
            stopped (reported as an interrupt); None waits forever.
        stop_at_start: stop before the first instruction of the first run.
        stop_at_end: stop once more when a run is over (to inspect the result).
        stop_on_exceptions: stop at every exception delivered in SMM, with or
            without a catchpoint (the GDB stub reports them as signals).

    Raises:
        DebugError: a machine with several CPUs or a virtual clock.
    """

    def __init__(self, machine: Machine, *, budget: float | None = None,
                 stop_at_start: bool = True, stop_at_end: bool = False,
                 stop_on_exceptions: bool = False) -> None:
        if len(machine.cpus) != 1 or machine.virtual_budget_ns is not None:
            raise DebugError("the debugger follows one CPU: build the Machine with cpus=1 and "
                             "without a virtual clock")
        self.machine = machine
        self.target = Target(machine)
        self.cpu = machine.cpu
        self.breakpoints = BreakpointTable()
        self.stopper = Stopper(machine.cpu)
        self.execution = Execution(self.target, self.breakpoints, self.stopper)
        self.execution.report_end = stop_at_end
        self.budget = budget
        self.stop_at_end = stop_at_end
        self.stop_on_exceptions = stop_on_exceptions
        self.entry_save_state: bytes | None = None
        """The save-state map as the CPU wrote it at the last SMI entry."""
        self._map_size = map_size(machine.profile.save_state)
        self._stop_at_start = stop_at_start
        self._frontend: Frontend | None = None
        self._last_frontend: Frontend | None = None
        self._pending: Resume | None = None
        self._quit = False

    # -- attaching ---------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the debugger drives the Machine's runs."""
        return self._frontend is not None

    @property
    def runs(self) -> int:
        """Guest runs started since the debugger was created."""
        return self.execution.run

    def attach(self, frontend: Frontend) -> None:
        """Take over the Machine's runs; ``frontend`` is asked what to do at every stop."""
        self._frontend = self._last_frontend = frontend
        self.machine.run_hook = self._run
        self.cpu.observer = self

    def detach(self) -> None:
        """Give the Machine back: no hooks, no observer, runs go through ``Cpu.run`` again."""
        self._frontend = None
        if self.machine.run_hook == self._run:
            self.machine.run_hook = None
        if self.cpu.observer is self:
            self.cpu.observer = None
        if self._machine_alive():
            self.execution.remove_hooks()

    def _machine_alive(self) -> bool:
        """False once the Machine was closed (its engines dropped every hook already)."""
        try:
            self.machine.read_physical(0, 1)
        except MachineClosedError:
            return False
        return True

    def close(self) -> None:
        """The session is over: detach, tell the last front-end, end the helper thread."""
        self.detach()
        if self._last_frontend is not None:
            self._last_frontend.finished()
            self._last_frontend = None
        self.stopper.close()

    def interrupt(self, reason: str = "interrupt") -> None:
        """Stop the running CPU as soon as possible (safe from any thread)."""
        self.stopper.interrupt(reason)

    # -- the CPU observer --------------------------------------------------------------------
    def on_event(self, cpu: Cpu, event: str, detail: int) -> bool:
        """Record SMI entries; pause on the events the user asked for."""
        if event == "smi-entry":
            profile = self.machine.profile
            view, offset = self.machine.memory.view_at(cpu.smbase + profile.save_state_offset,
                                                       self._map_size)
            self.entry_save_state = bytes(view[offset:offset + self._map_size])
        kind = _EVENTS.get(event)
        if kind is None:
            return False
        for entry in self.breakpoints.active(kind):
            if entry.value is not None and entry.value != detail:
                continue
            if self.execution.triggers(entry):
                self.execution.event_hit = (event, detail, entry)
                return True
        if kind is BreakKind.EXCEPTION and self.stop_on_exceptions:
            self.execution.event_hit = (event, detail, None)
            return True
        return False

    # -- runs ----------------------------------------------------------------------------------
    def _run(self, cpu: Cpu, rip: int) -> SmiResult:
        """``Machine.run_hook``: drive one guest run, stopping for the front-end."""
        execution = self.execution
        execution.run += 1
        execution.result = None
        cpu.start(rip)
        try:
            self._drive()
        except BaseException:
            self.detach()
            raise
        finally:
            if self.target.running:
                self._finish_undebugged()
        result = execution.take_result() or cpu.result()
        if self._quit:
            self._quit = False
            raise DebuggerQuit("quit from the debugger")
        return result

    def _drive(self) -> None:
        stop = self._first_stop()
        while stop is not None and self._frontend is not None:
            if stop.kind is StopKind.END and not self.stop_at_end:
                return
            action = self._frontend.stopped(stop)
            if action.kind in (ResumeKind.DETACH, ResumeKind.QUIT):
                self._quit = action.kind is ResumeKind.QUIT
                self.detach()
                return
            if stop.kind is StopKind.END:
                self._pending = action
                return
            stop = self.execution.execute(action, self.budget, from_stop=True)
            if stop is None or stop.kind is StopKind.END:
                self._pending = action

    def _first_stop(self) -> Stop | None:
        if self._stop_at_start:
            self._stop_at_start = False
            return self.execution.stop(StopKind.START)
        pending, self._pending = self._pending, None
        if pending is not None and pending.kind in (ResumeKind.STEP, ResumeKind.NEXT):
            return self.execution.stop(StopKind.STEP, detail="a new run began")
        return self.execution.execute(Resume(ResumeKind.CONTINUE), self.budget, from_stop=False)

    def _finish_undebugged(self) -> None:
        """Run the rest of the run without stopping, under the Machine's budget."""
        cpu = self.cpu
        self.stopper.take()
        self.stopper.arm(self.machine.budget)
        try:
            while cpu.state is RunState.RUNNING:
                if self.stopper.take() == "budget":
                    cpu.stop_with(StopReason.BUDGET_EXCEEDED, "budget exceeded")
                    break
                cpu.step(None)
        finally:
            self.stopper.disarm()
            self.stopper.take()

    # -- locations -----------------------------------------------------------------------------
    def handler_address(self, text: str) -> int:
        """The handler registered for a GUID, a well-known GUID name, or ``root`` (the first).

        Raises:
            DebugError: no handler is registered for it.
        """
        wanted = text.strip()
        named = {name.lower(): guid for guid, name in WELL_KNOWN.items()}
        guid = named.get(wanted.lower())
        if guid is None and wanted.lower() != "root":
            try:
                guid = parse_guid(wanted)
            except GuidError as err:
                raise DebugError(str(err)) from None
        for registered, address in self.machine.handler_table():
            if registered == guid:
                return address
        raise DebugError(f"no MMI handler is registered for {wanted}")
