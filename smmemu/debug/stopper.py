"""Stopping a running CPU from another thread: an interrupt (Ctrl-C, gdb's 0x03) or a budget.

``Cpu.request_pause`` sets a flag and calls ``emu_stop``; ``emu_stop`` only
takes effect while ``emu_start`` runs, and the CPU clears the flag when its
next segment starts. So a single request can be lost in the moment between two
segments. The stopper therefore repeats the request every 10 ms until the
debugger takes the reason, under a lock that :meth:`Stopper.take` also holds:
once ``take`` returned, no stray request follows.
"""

from __future__ import annotations

import threading
import time

from smmemu.cpu import Cpu

__all__ = ["Stopper"]

_REPEAT = 0.01
"""Seconds between repeated pause requests while a stop is pending."""


class Stopper:
    """Pauses ``cpu`` on :meth:`interrupt`, or when an armed budget runs out."""

    def __init__(self, cpu: Cpu) -> None:
        self._cpu = cpu
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._reason: str | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sleeping_until: float | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="smmemu-debug-stopper",
                                            daemon=True)
            self._thread.start()

    def arm(self, seconds: float | None) -> None:
        """Stop the CPU with reason ``budget`` after ``seconds`` (None: no budget).

        Cheap when called once per run: the helper thread is only woken when the
        new deadline comes before the one it already sleeps towards; otherwise
        it finds the new deadline when it wakes.
        """
        with self._cond:
            self._deadline = None if seconds is None else time.monotonic() + seconds
            if self._deadline is None:
                return
            if self._thread is None:
                self._ensure_thread()
            elif self._sleeping_until is None or self._deadline < self._sleeping_until:
                self._cond.notify()

    def disarm(self) -> None:
        """Cancel the budget."""
        with self._cond:
            self._deadline = None

    def interrupt(self, reason: str = "interrupt") -> None:
        """Ask for a stop (safe from any thread and from signal handlers' helper threads)."""
        with self._cond:
            if self._reason is None:
                self._reason = reason
            self._ensure_thread()
            self._cond.notify()

    @property
    def pending(self) -> bool:
        """Whether a stop was asked for and not taken yet."""
        return self._reason is not None

    def take(self) -> str | None:
        """The pending reason (``interrupt``, ``budget``...), cleared; None if there is none."""
        with self._cond:
            reason, self._reason = self._reason, None
            return reason

    def close(self) -> None:
        """End the helper thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                self._sleeping_until = None
                if self._reason is not None:
                    self._cpu.request_pause("interrupt")
                    self._cond.wait(_REPEAT)
                    continue
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._sleeping_until = self._deadline
                    self._cond.wait(remaining)
                    continue
                self._deadline = None
                self._reason = "budget"
