"""The command shell: a ``cmd.Cmd`` front-end over :class:`~smmemu.debug.session.Debugger`.

Interactive use gets readline history and completion of commands, symbols and
registers; ``--commands FILE`` feeds the same shell from a file, echoing each
command after the prompt so that the transcript reads like a session (blank
lines and ``#`` comments are skipped; when the file runs out the debugger
detaches and the request finishes undisturbed). The GDB stub runs the
inspection commands through :meth:`DebugShell.monitor` (``monitor regs``).

Resume commands: ``continue`` (c), ``stepi [N]`` (si), ``nexti [N]`` (ni),
``finish`` (step-out), ``until [LOCATION]`` (u), ``advance LOCATION``,
``detach``, ``quit`` (q). Everything else inspects or changes state and keeps
the prompt: ``break``/``tbreak`` (b), ``watch``/``rwatch``/``awatch``,
``delete``, ``enable``, ``disable``, ``info``, ``regs``, ``x``, ``disas``,
``savestate``, ``bt``, ``handlers``, ``set``, ``print`` (p), ``echo``.
"""

from __future__ import annotations

import cmd
import io
from collections.abc import Iterable
from typing import TextIO

from smmemu.debug import render, specs
from smmemu.debug.breakpoints import Access, BreakKind, Breakpoint
from smmemu.debug.errors import DebugError
from smmemu.debug.expr import evaluate
from smmemu.debug.session import Debugger
from smmemu.debug.specs import (
    add_breakpoint,
    add_watchpoint,
    assign,
    parse_examine,
    resolve_location,
)
from smmemu.debug.stops import Resume, ResumeKind, Stop
from smmemu.debug.target import CpuMode
from smmemu.disasm import Mode
from smmemu.errors import SmmemuError

__all__ = ["DebugShell"]

_ALIASES = {
    "c": "continue", "cont": "continue", "si": "stepi", "ni": "nexti", "step-out": "finish",
    "u": "until", "b": "break", "p": "print", "q": "quit", "d": "delete", "backtrace": "bt",
    "registers": "regs", "disassemble": "disas", "i": "info",
}
_KEYWORDS = ("handler", "smi", "rsm", "exception", "io", "msr", "in", "out", "rdmsr", "wrmsr",
             "non-smram", "if")
_MODES = {"-16": Mode.BITS16, "-32": Mode.BITS32, "-64": Mode.BITS64}
_DEFAULT_LISTING = 8
_USAGE = {
    "continue": "continue (c): run until a breakpoint, watchpoint or catchpoint, or the end "
                "of the run",
    "stepi": "stepi [N] (si): execute N instructions, through SMI entry, mode switches and RSM",
    "nexti": "nexti [N] (ni): like stepi, but a call runs until it returns",
    "finish": "finish (step-out): run until the current function returns, or RSM leaves SMM",
    "until": "until [LOCATION] (u): without LOCATION, step over calls and backward jumps until "
             "the PC passes the current one or the frame returns; with LOCATION, advance",
    "advance": "advance LOCATION: run until LOCATION",
    "detach": "detach: stop debugging; this run and every later one go on undisturbed",
    "quit": "quit (q): finish this run undebugged and skip the rest of the session",
    "break": "break [LOCATION] [if COND] (b): see help locations",
    "tbreak": "tbreak [LOCATION] [if COND]: a breakpoint deleted when it first stops the CPU",
    "watch": "watch [-p] ADDRESS [LENGTH] | non-smram [if COND]: stop after a write",
    "rwatch": "rwatch [-p] ADDRESS [LENGTH] | non-smram [if COND]: stop after a read",
    "awatch": "awatch [-p] ADDRESS [LENGTH] | non-smram [if COND]: stop after any access",
    "delete": "delete [N...] (d): delete breakpoints N (all without arguments)",
    "enable": "enable [N...]: enable breakpoints N (all without arguments)",
    "disable": "disable [N...]: disable breakpoints N (all without arguments)",
    "info": "info breakpoints|registers|symbol ADDRESS|mode|handlers|savestate",
    "regs": "regs: GPRs, RIP, RFLAGS, segments with hidden parts, GDTR/IDTR, CRs, EFER, mode",
    "x": "x/NFU [-p] [-s|-n] ADDRESS: memory; F x d u c i, U b h w g; -p physical, -s the SMM "
         "view, -n the non-SMM view (default: the CPU's current view)",
    "disas": "disas [-16|-32|-64] [ADDRESS [COUNT]]: instructions, in the current mode unless "
             "given",
    "savestate": "savestate: the save-state map, fields changed since SMI entry marked *",
    "bt": "bt: the frame-pointer chain (functions without an RBP frame are not shown)",
    "handlers": "handlers: the MM core's MMI handler table",
    "set": "set $REG = EXPR | set u8|u16|u32|u64 [-p] ADDRESS = EXPR | set bytes [-p] ADDRESS HEX",
    "print": "print EXPR (p): the value in hex and decimal ($rax registers, symbols by name)",
    "echo": "echo TEXT: print TEXT (to annotate script transcripts)",
}


class DebugShell(cmd.Cmd):
    """Reads debugger commands from a terminal or a script and answers stops.

    Args:
        debugger: the debugger to drive.
        stdout: where output goes.
        script: command lines to run instead of reading a terminal.
        stdin: the terminal (default: the process's stdin, with readline).
    """

    prompt = "(smmdbg) "

    def __init__(self, debugger: Debugger, *, stdout: TextIO,
                 script: Iterable[str] | None = None, stdin: TextIO | None = None) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.use_rawinput = stdin is None
        self.debugger = debugger
        self.target = debugger.target
        self._script = None if script is None else [line.rstrip("\n") for line in script]
        self._resume: Resume | None = None
        self._monitor = False
        self._mode: CpuMode | None = None
        self._examine = ("x", "g")
        self.errors = 0
        """Commands that failed (scripts go on after an error)."""
        self.reading = False
        """Whether the shell waits for a line at the terminal (Ctrl-C then cancels it)."""

    # -- the Frontend protocol -----------------------------------------------------------------
    def stopped(self, stop: Stop) -> Resume:
        """Show the stop, then read commands until one resumes the CPU."""
        self._lines(render.stop_lines(self.target, stop, self._mode))
        self._mode = self.target.mode()
        self._resume = None
        if self._script is not None:
            return self._run_script()
        return self._read_terminal()

    def _read_terminal(self) -> Resume:
        while True:
            self.reading = True
            try:
                self.cmdloop()
            except KeyboardInterrupt:
                self.stdout.write("^C\n")
            finally:
                self.reading = False
            if self._resume is not None:
                return self._resume

    def finished(self) -> None:
        """Mention script lines that never ran."""
        left = [line for line in self._script or () if _meaningful(line)]
        if left:
            self._write(f"(the session ended with {len(left)} script line(s) not run)")

    def _run_script(self) -> Resume:
        script = self._script or []
        while self._resume is None and script:
            line = script.pop(0)
            if not _meaningful(line):
                continue
            self._write(f"{self.prompt}{line.strip()}")
            self.onecmd(line.strip())
        if self._resume is None:
            self._write("(end of the command script: detaching, the run goes on undebugged)")
            self._resume = Resume(ResumeKind.DETACH)
        return self._resume

    def monitor(self, line: str) -> str:
        """Run an inspection command for the GDB stub (``monitor ...``); its output."""
        saved, self.stdout = self.stdout, io.StringIO()
        self._monitor = True
        try:
            self.onecmd(line)
            return self.stdout.getvalue()
        finally:
            self.stdout, self._monitor = saved, False

    # -- cmd.Cmd plumbing ----------------------------------------------------------------------
    def _write(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def _lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self._write(line)

    def precmd(self, line: str) -> str:
        """Expand aliases (``c``, ``si``, ``step-out``...)."""
        head, _, rest = line.strip().partition(" ")
        name, slash, fmt = head.partition("/")
        name = _ALIASES.get(name, name)
        return f"{name}{slash}{fmt} {rest}".strip()

    def onecmd(self, line: str) -> bool:
        """Run one command; errors are printed, never raised."""
        line = self.precmd(line)
        if line.startswith("x/"):
            line = "x " + line[1:]
        try:
            return super().onecmd(line)
        except (DebugError, SmmemuError) as err:
            self.errors += 1
            self._write(f"error: {err}")
            return False

    def emptyline(self) -> bool:
        """Repeat a stepping command on an empty line, as gdb does; nothing otherwise."""
        if self.lastcmd.split(" ")[0] in ("stepi", "nexti"):
            return self.onecmd(self.lastcmd)
        return False

    def default(self, line: str) -> None:
        """An unknown command."""
        self.errors += 1
        self._write(f"error: unknown command {line.split()[0]!r} (try help)")

    def completenames(self, text: str, *ignored: object) -> list[str]:
        """Complete command names and aliases."""
        names = {name[3:] for name in self.get_names() if name.startswith("do_")} | set(_ALIASES)
        return sorted(name for name in names if name.startswith(text) and name != "EOF")

    def completedefault(self, text: str, line: str = "", begidx: int = 0,
                        _endidx: int = 0) -> list[str]:
        """Complete symbols, ``$registers`` and keywords."""
        if text.startswith("$") or line[begidx - 1:begidx] == "$":
            # readline splits words at "$", so the text may come with or without it
            prefix = "$" if text.startswith("$") else ""
            return [f"{prefix}{name}" for name in self.target.register_names()
                    if name.startswith(text.removeprefix("$"))]
        pool = [*self.target.symbol_names(), *_KEYWORDS]
        return [name for name in pool if name.startswith(text.lstrip("*"))]

    def _resume_with(self, resume: Resume) -> bool:
        if self._monitor:
            raise DebugError("resume with gdb's own commands (continue, stepi...)")
        self._resume = resume
        return True

    def _count(self, arg: str) -> int:
        count = evaluate(arg, self.target) if arg.strip() else 1
        if count < 1:
            raise DebugError(f"a count of at least 1, not {count}")
        return count

    # -- resuming ------------------------------------------------------------------------------
    def do_continue(self, _arg: str) -> bool:
        """The ``continue`` command."""
        return self._resume_with(Resume(ResumeKind.CONTINUE))

    def do_stepi(self, arg: str) -> bool:
        """The ``stepi`` command."""
        return self._resume_with(Resume(ResumeKind.STEP, self._count(arg)))

    def do_nexti(self, arg: str) -> bool:
        """The ``nexti`` command."""
        return self._resume_with(Resume(ResumeKind.NEXT, self._count(arg)))

    def do_finish(self, _arg: str) -> bool:
        """The ``finish`` command."""
        return self._resume_with(Resume(ResumeKind.FINISH))

    def do_until(self, arg: str) -> bool:
        """The ``until`` command."""
        if arg.strip():
            return self.do_advance(arg)
        return self._resume_with(Resume(ResumeKind.UNTIL))

    def do_advance(self, arg: str) -> bool:
        """The ``advance`` command."""
        if not arg.strip():
            raise DebugError("usage: advance LOCATION")
        location = resolve_location(self.debugger, arg)
        return self._resume_with(Resume(ResumeKind.ADVANCE, location=location))

    def do_detach(self, _arg: str) -> bool:
        """The ``detach`` command."""
        return self._resume_with(Resume(ResumeKind.DETACH))

    def do_quit(self, _arg: str) -> bool:
        """The ``quit`` command."""
        return self._resume_with(Resume(ResumeKind.QUIT))

    def do_EOF(self, _arg: str) -> bool:  # noqa: N802 - cmd.Cmd's name for end of input
        """Ctrl-D: quit."""
        self._write("")
        return self.do_quit("")

    # -- breakpoints ---------------------------------------------------------------------------
    def do_break(self, arg: str) -> None:
        """The ``break`` command."""
        entry = add_breakpoint(self.debugger, arg)
        self._write(f"{_title(entry)} {entry.number}: "
                    f"{render.describe_breakpoint(entry, self.target)}")

    def do_tbreak(self, arg: str) -> None:
        """The ``tbreak`` command."""
        entry = add_breakpoint(self.debugger, arg, temporary=True)
        self._write(f"Temporary {_title(entry).lower()} {entry.number}: "
                    f"{render.describe_breakpoint(entry, self.target)}")

    def _watch(self, arg: str, access: Access) -> None:
        entry = add_watchpoint(self.debugger, arg, access)
        self._write(f"Watchpoint {entry.number}: {render.describe_breakpoint(entry, self.target)}")

    def do_watch(self, arg: str) -> None:
        """The ``watch`` command."""
        self._watch(arg, Access.WRITE)

    def do_rwatch(self, arg: str) -> None:
        """The ``rwatch`` command."""
        self._watch(arg, Access.READ)

    def do_awatch(self, arg: str) -> None:
        """The ``awatch`` command."""
        self._watch(arg, Access.ANY)

    def _numbers(self, arg: str) -> list[int]:
        return [int(word, 0) for word in arg.split()] if arg.strip() else \
            [entry.number for entry in self.debugger.breakpoints]

    def do_delete(self, arg: str) -> None:
        """The ``delete`` command."""
        for number in self._numbers(arg):
            self.debugger.breakpoints.remove(number)

    def do_enable(self, arg: str) -> None:
        """The ``enable`` command."""
        for number in self._numbers(arg):
            self.debugger.breakpoints.get(number).enabled = True

    def do_disable(self, arg: str) -> None:
        """The ``disable`` command."""
        for number in self._numbers(arg):
            self.debugger.breakpoints.get(number).enabled = False

    # -- inspecting ----------------------------------------------------------------------------
    def do_info(self, arg: str) -> None:
        """The ``info`` command."""
        what, _, rest = arg.strip().partition(" ")
        if what in ("b", "break", "breakpoints", "watchpoints"):
            self._lines(render.breakpoint_table(self.debugger.breakpoints, self.target))
        elif what in ("r", "registers", "regs"):
            self.do_regs("")
        elif what == "symbol":
            address = evaluate(rest, self.target)
            self._write(render.location(self.target, address))
        elif what == "mode":
            self._write(render.registers(self.target)[0].removeprefix("mode "))
        elif what == "handlers":
            self.do_handlers("")
        elif what == "savestate":
            self.do_savestate("")
        else:
            raise DebugError("info breakpoints|registers|symbol ADDRESS|mode|handlers|savestate")

    def do_regs(self, _arg: str) -> None:
        """The ``regs`` command."""
        self._lines(render.registers(self.target))

    def do_x(self, arg: str) -> None:
        """The ``x`` command."""
        spec = parse_examine(self.debugger, arg, self._examine)
        self._examine = (spec.fmt, spec.unit) if spec.fmt != "i" else self._examine
        self._lines(render.memory(self.target, spec.address, spec.count, spec.fmt, spec.unit,
                                  physical=spec.physical, view=spec.view))

    def do_disas(self, arg: str) -> None:
        """The ``disas`` command."""
        words = arg.split()
        mode = next((_MODES[w] for w in words if w in _MODES), None)
        words = [w for w in words if w not in _MODES]
        address = resolve_location(self.debugger, words[0]) if words else self.target.pc()
        count = self._count(words[1]) if len(words) > 1 else _DEFAULT_LISTING
        self._lines(render.listing(self.target, address, count, mode=mode,
                                   highlight=self.target.pc()))

    def do_savestate(self, _arg: str) -> None:
        """The ``savestate`` command."""
        self._lines(render.save_state(self.target, self.debugger.entry_save_state))

    def do_bt(self, _arg: str) -> None:
        """The ``bt`` command."""
        self._lines(render.backtrace(self.target))

    def do_handlers(self, _arg: str) -> None:
        """The ``handlers`` command."""
        self._lines(render.handlers(self.target))

    def do_set(self, arg: str) -> None:
        """The ``set`` command."""
        self._write(assign(self.debugger, arg))

    def do_print(self, arg: str) -> None:
        """The ``print`` command."""
        value = evaluate(arg, self.target)
        symbol = self.target.symbolize(value) if value >= 0 else None
        self._write(f"{value & ((1 << 64) - 1):#x} ({value})" + (f" <{symbol}>" if symbol else ""))

    def do_echo(self, arg: str) -> None:
        """The ``echo`` command."""
        self._write(arg)

    def do_help(self, arg: str) -> None:
        """The ``help`` command: every command, or one, or ``help locations``."""
        name = _ALIASES.get(arg.strip(), arg.strip())
        if name == "locations":
            self._write((specs.__doc__ or "").strip())
        elif name in _USAGE:
            self._write(_USAGE[name])
        elif name:
            raise DebugError(f"no command {name!r}")
        else:
            self._lines(_USAGE.values())
            self._write("help locations: breakpoint and watchpoint arguments")


def _title(entry: Breakpoint) -> str:
    return "Breakpoint" if entry.kind in (BreakKind.CODE, BreakKind.IO, BreakKind.MSR) \
        else "Catchpoint"


def _meaningful(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")
