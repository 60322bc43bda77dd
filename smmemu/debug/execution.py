"""Running the CPU until a stop condition holds: free runs, single steps and the hooks they need.

:class:`Execution` carries out one resume request (continue, stepi, nexti,
finish, until, advance) inside a run and returns the :class:`Stop` that ended
it. It owns the engine hooks behind the breakpoint table: one code hook per
breakpoint address and one memory hook per watched range, installed when a
resume starts and removed when their entries are gone. See
:mod:`smmemu.debug.session` for the two ways it runs the CPU.
"""

from __future__ import annotations

import functools

from smmemu.cpu import RunState
from smmemu.debug.breakpoints import BreakKind, Breakpoint, BreakpointTable
from smmemu.debug.decode import next_instruction
from smmemu.debug.errors import DebugError
from smmemu.debug.expr import evaluate
from smmemu.debug.stopper import Stopper
from smmemu.debug.stops import Resume, ResumeKind, Stop, StopKind, WatchHit
from smmemu.debug.target import Target
from smmemu.errors import SmmemuError
from smmemu.results import SmiResult

__all__ = ["Execution"]

_MASK64 = (1 << 64) - 1
_RUN_OVER = Stop(StopKind.END, 0)
"""The end of a run when nobody looks at it (an idle debugger does not pay for a full stop)."""


class Execution:
    """Resumes the CPU of ``target`` and finds the next stop."""

    def __init__(self, target: Target, breakpoints: BreakpointTable, stopper: Stopper) -> None:
        self.target = target
        self.cpu = target.cpu
        self.breakpoints = breakpoints
        self.stopper = stopper
        self.run = 0
        """The number of the current run (stamped on every stop)."""
        self.result: SmiResult | None = None
        """The outcome of the current run once it is over."""
        self.event_hit: tuple[str, int, Breakpoint | None] | None = None
        """Set by the CPU observer when an event pauses the CPU: (event, detail, entry)."""
        self._code_hooks: dict[int, int] = {}
        self._watch_hooks: dict[int, list[int]] = {}
        self._armed = False
        self._internal: dict[int, int | None] = {}
        self._internal_kind = StopKind.UNTIL
        self._code_hit: Breakpoint | int | None = None
        self._watch_hits: list[WatchHit] = []
        self._notes: list[str] = []
        self.report_end = True
        """Whether the end of a run is a full stop (with the result) or a bare marker."""

    def take_result(self) -> SmiResult | None:
        """The outcome of the run if it ended under the debugger (cleared for the next run)."""
        result, self.result = self.result, None
        return result

    # -- stops ---------------------------------------------------------------------------------
    def stop(self, kind: StopKind, *, breakpoint: Breakpoint | None = None,
             hits: tuple[WatchHit, ...] = (), detail: str = "", event: str | None = None,
             event_value: int | None = None) -> Stop:
        """A stop at the current PC, with any condition errors noted in ``detail``."""
        notes = [*self._notes, detail] if detail else self._notes
        self._notes = []
        # The end of a run has no PC worth the cost: the CPU waits for the next request.
        pc = 0 if kind is StopKind.END else self.target.pc()
        return Stop(kind, pc, breakpoint=breakpoint, hits=hits,
                    detail="; ".join(notes), event=event, event_value=event_value,
                    result=self.result if kind is StopKind.END else None, run=self.run)

    def triggers(self, entry: Breakpoint) -> bool:
        """Whether ``entry`` stops the CPU now (its condition holds); counts the hit.

        A condition that cannot be evaluated stops the CPU, with the error noted.
        A temporary entry is deleted when it triggers.
        """
        if entry.condition:
            try:
                holds = evaluate(entry.condition, self.target) != 0
            except DebugError as err:
                self._notes.append(f"error in the condition of breakpoint {entry.number}: {err}")
                holds = True
            if not holds:
                return False
        entry.hits += 1
        if entry.temporary and entry.number in self.breakpoints.entries:
            self.breakpoints.remove(entry.number)
        return True

    # -- hooks ---------------------------------------------------------------------------------
    def sync_hooks(self) -> None:
        """Install the hooks the table needs now and remove the ones it no longer needs."""
        if not (self.breakpoints.entries or self._internal or self._code_hooks
                or self._watch_hooks):
            return
        engine = self.cpu.engine
        wanted = self.breakpoints.code_addresses() | set(self._internal)
        changed = False
        for address in [a for a in self._code_hooks if a not in wanted]:
            engine.remove_hook(self._code_hooks.pop(address))
            changed = True
        for address in sorted(wanted - set(self._code_hooks)):
            self._code_hooks[address] = engine.on_code(address, address, self._on_code)
            changed = True
        if changed:
            # Code hooks are compiled into translated blocks (unicorn_probe.md 6).
            engine.flush_translations()
        watches = {entry.number: entry for entry in self.breakpoints.active(BreakKind.WATCH)}
        for number in [n for n in self._watch_hooks if n not in watches]:
            for handle in self._watch_hooks.pop(number):
                engine.remove_hook(handle)
        for number, entry in watches.items():
            if number not in self._watch_hooks:
                callback = functools.partial(self._on_access, entry)
                self._watch_hooks[number] = [engine.on_memory_access(start, end - 1, callback)
                                             for start, end in entry.ranges]

    def remove_hooks(self) -> None:
        """Remove every hook (detaching)."""
        engine = self.cpu.engine
        for handle in self._code_hooks.values():
            engine.remove_hook(handle)
        for handles in self._watch_hooks.values():
            for handle in handles:
                engine.remove_hook(handle)
        if self._code_hooks:
            engine.flush_translations()
        self._code_hooks.clear()
        self._watch_hooks.clear()

    def _on_code(self, address: int, _size: int) -> None:
        if not self._armed or self._code_hit is not None:
            return
        if address in self._internal:
            floor = self._internal[address]
            if floor is None or self.cpu.engine.reg("rsp") >= floor:
                self._code_hit = address
                self.cpu.request_pause("breakpoint")
                return
        for entry in self.breakpoints.code_at(address):
            if self.triggers(entry):
                self._code_hit = entry
                self.cpu.request_pause(f"breakpoint {entry.number}")
                return

    def _on_access(self, entry: Breakpoint, is_write: bool, address: int, size: int,
                   value: int) -> None:
        if not entry.access.matches(is_write) or (entry.outside_smram and not self.cpu.in_smm):
            return
        try:
            now: int | None = int.from_bytes(
                self.target.machine.read_physical(address, size, smm=True), "little")
        except SmmemuError:
            now = None
        if is_write:
            self._watch_hits.append(WatchHit(entry, True, address, size,
                                             value & ((1 << (8 * size)) - 1), now))
        else:
            self._watch_hits.append(WatchHit(entry, False, address, size, now))

    # -- resuming ------------------------------------------------------------------------------
    def execute(self, action: Resume, budget: float | None, *, from_stop: bool) -> Stop | None:
        """Carry out ``action``; the stop that ended it, or None if the run was already over."""
        if not self.target.running:
            return None
        self.stopper.take()
        self.stopper.arm(budget)
        try:
            kind = action.kind
            if kind is ResumeKind.STEP:
                return self._step(action.count)
            if kind is ResumeKind.NEXT:
                return self._next(action.count)
            if kind is ResumeKind.FINISH:
                return self._finish()
            if kind is ResumeKind.UNTIL:
                return self._until()
            internal: dict[int, int | None] = {}
            if action.location is not None:
                internal[action.location] = None
            return self._go(internal, StopKind.UNTIL, from_stop=from_stop)
        finally:
            self.stopper.disarm()
            self._armed = False

    def _go(self, internal: dict[int, int | None], kind: StopKind, *, from_stop: bool) -> Stop:
        """Run until a breakpoint, an event, a watchpoint, an ``internal`` address or the end.

        ``internal`` maps linear addresses to the lowest RSP at which they stop
        (None: any), and such a stop has ``kind``.
        """
        self._internal, self._internal_kind = internal, kind
        try:
            self.sync_hooks()
            if from_stop:
                stop = self._single() or self._check_location()
                if stop is not None:
                    return stop
            if self.breakpoints.needs_stepping():
                while True:
                    stop = self._single() or self._check_location()
                    if stop is not None:
                        return stop
            return self._free_run()
        finally:
            self._internal = {}

    def _free_run(self) -> Stop:
        cpu = self.cpu
        self._armed = True
        while cpu.state is RunState.RUNNING:
            if self.stopper.pending:
                return self._interrupted()
            self._code_hit = None
            self.event_hit = None
            cpu.step(None)
            if cpu.paused is not None:
                stop = self._paused_stop()
                if stop is not None:
                    return stop
        return self._ended()

    def _single(self) -> Stop | None:
        """Execute one instruction; a stop if it ended the run or hit an event or watchpoint."""
        self._watch_hits.clear()
        self._code_hit = None
        self.event_hit = None
        self.cpu.step_instruction()
        if not self.target.running:
            return self._ended()
        if self._watch_hits:
            stop = self._watch_stop()
            if stop is not None:
                return stop
        if self.cpu.paused is not None:
            return self._paused_stop()
        return self._interrupted() if self.stopper.pending else None

    def _check_location(self) -> Stop | None:
        """A stop for what is at the new PC: an internal target, a breakpoint, I/O or an MSR."""
        pc = self.target.pc()
        if pc in self._internal:
            floor = self._internal[pc]
            if floor is None or self.target.register("rsp") >= floor:
                return self.stop(self._internal_kind)
        for entry in self.breakpoints.code_at(pc):
            if self.triggers(entry):
                return self.stop(StopKind.BREAKPOINT, breakpoint=entry)
        io_entries = self.breakpoints.active(BreakKind.IO)
        msr_entries = self.breakpoints.active(BreakKind.MSR)
        if not io_entries and not msr_entries:
            return None
        insn = next_instruction(self.target)
        for entries, access, kind, names in (
                (io_entries, insn.io_access(self.target), StopKind.IO, ("in", "out")),
                (msr_entries, insn.msr_access(self.target), StopKind.MSR, ("rdmsr", "wrmsr"))):
            if access is None:
                continue
            number, is_write = access
            for entry in entries:
                if ((entry.value is None or entry.value == number)
                        and entry.access.matches(is_write) and self.triggers(entry)):
                    return self.stop(kind, breakpoint=entry, event=names[is_write],
                                     event_value=number)
        return None

    def _paused_stop(self) -> Stop | None:
        hit, self._code_hit = self._code_hit, None
        event, self.event_hit = self.event_hit, None
        pc = self.target.pc()
        if isinstance(hit, Breakpoint) and hit.address == pc:
            return self.stop(StopKind.BREAKPOINT, breakpoint=hit)
        if isinstance(hit, int) and hit == pc:
            return self.stop(self._internal_kind)
        if event is not None:
            name, value, entry = event
            return self.stop(StopKind.EVENT, breakpoint=entry, event=name, event_value=value)
        return self._interrupted() if self.stopper.pending else None

    def _watch_stop(self) -> Stop | None:
        hits = list(self._watch_hits)
        self._watch_hits.clear()
        fired = [entry for entry in dict.fromkeys(hit.breakpoint for hit in hits)
                 if self.triggers(entry)]
        if not fired:
            return None
        return self.stop(StopKind.WATCHPOINT, breakpoint=fired[0],
                         hits=tuple(hit for hit in hits if hit.breakpoint in fired))

    def _interrupted(self) -> Stop:
        reason = self.stopper.take() or "interrupt"
        return self.stop(StopKind.INTERRUPT, detail=reason)

    def _ended(self) -> Stop:
        if self.result is None:
            self.result = self.cpu.result()
        if not self.report_end:
            return _RUN_OVER
        return self.stop(StopKind.END)

    # -- the stepping commands -----------------------------------------------------------------
    def _step(self, count: int) -> Stop:
        for index in range(count):
            stop = self._single()
            if stop is None and index < count - 1:
                stop = self._check_location()
            if stop is not None:
                return stop
        return self.stop(StopKind.STEP)

    def _next_one(self) -> Stop | None:
        """Step one instruction, over a call; a stop other than reaching the next instruction."""
        insn = next_instruction(self.target)
        if not insn.is_call:
            return self._single()
        back: dict[int, int | None] = {insn.next_address: self.target.register("rsp")}
        stop = self._go(back, StopKind.STEP, from_stop=True)
        return None if stop.kind is StopKind.STEP else stop

    def _next(self, count: int) -> Stop:
        for index in range(count):
            stop = self._next_one()
            if stop is None and index < count - 1:
                stop = self._check_location()
            if stop is not None:
                return stop
        return self.stop(StopKind.STEP)

    def _finish(self) -> Stop:
        rsp = self.target.register("rsp")
        while True:
            insn = next_instruction(self.target)
            stop = self._single()
            if stop is not None:
                return stop
            if insn.is_rsm:
                return self.stop(StopKind.FINISH, detail="RSM left SMM")
            if insn.is_return and self.target.register("rsp") > rsp:
                rax = self.target.register("rax")
                return self.stop(StopKind.FINISH, detail=f"returned, rax = {rax:#x}")
            stop = self._check_location()
            if stop is not None:
                return stop

    def _until(self) -> Stop:
        start, rsp = self.target.pc(), self.target.register("rsp")
        while True:
            insn = next_instruction(self.target)
            stop = self._next_one()
            if stop is not None:
                return stop
            if insn.is_rsm or (insn.is_return and self.target.register("rsp") > rsp):
                return self.stop(StopKind.UNTIL, detail="left the frame")
            if self.target.pc() > start:
                return self.stop(StopKind.UNTIL)
            stop = self._check_location()
            if stop is not None:
                return stop
