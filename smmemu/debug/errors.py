"""The debugger's own errors (host-side: a bad command, an unreadable address)."""

from __future__ import annotations

from smmemu.errors import SmmemuError

__all__ = ["DebugError", "DebuggerQuit"]


class DebugError(SmmemuError):
    """A debugger command that cannot be carried out (bad syntax, unmapped address...)."""


class DebuggerQuit(SmmemuError):  # noqa: N818 - a request, named as the user typed it
    """The user quit the debugger: the current run was finished without it, the rest skipped."""
