"""Step-debugging MMI handlers: an interactive debugger and a GDB remote stub.

Both follow an SMI from the ``out 0xb2`` that raises it, through the MM core's
16-, 32- and 64-bit entry code and the handler, to RSM and back into the
interrupted code. The pieces:

* :mod:`~smmemu.debug.session`: :class:`Debugger`, the core; it takes over
  ``Machine.run_hook`` and the CPU's observer, so any request can be debugged;
* :mod:`~smmemu.debug.execution`: free runs, single steps and the engine hooks
  behind breakpoints and watchpoints;
* :mod:`~smmemu.debug.breakpoints`, :mod:`~smmemu.debug.specs`: the table of stop
  conditions and the command syntax that fills it;
* :mod:`~smmemu.debug.target`: modes, registers, segments, linear PC, page-table
  translation and the SMM / non-SMM memory views;
* :mod:`~smmemu.debug.commands` and :mod:`~smmemu.debug.render`: the ``cmd``
  shell and its deterministic output;
* :mod:`~smmemu.debug.gdbstub`, :mod:`~smmemu.debug.rsp`,
  :mod:`~smmemu.debug.target_xml`: the GDB remote serial protocol.

``smmemu debug`` (:mod:`smmemu.cli.debug`) wires them to the command line;
``docs/debugging.md`` walks through a session.
"""

from __future__ import annotations

from smmemu.debug.commands import DebugShell
from smmemu.debug.errors import DebugError, DebuggerQuit
from smmemu.debug.gdbstub import GdbStub
from smmemu.debug.session import Debugger
from smmemu.debug.stops import Frontend, Resume, ResumeKind, Stop, StopKind

__all__ = [
    "DebugError",
    "DebugShell",
    "Debugger",
    "DebuggerQuit",
    "Frontend",
    "GdbStub",
    "Resume",
    "ResumeKind",
    "Stop",
    "StopKind",
]
