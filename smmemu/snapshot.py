"""Snapshots of a whole Machine, restored in time proportional to what changed (decision 0011).

A :class:`Snapshot` holds:

* RAM and SMRAM as :class:`~smmemu.ramimage.RamImage` memfds, mapped
  copy-on-write over the host buffers every engine uses, so the kernel tracks
  the pages written since. A restore compares those pages with the image and
  copies back the ones that changed (or maps the image again when many pages
  are mapped);
* each CPU's engine context;
* the Python state of everything else (chipset and PCI registers, port
  decoding, timers, the communicator, the MM services, the CPUs' own fields)
  as an :class:`~smmemu.objstate.ObjectState`, found by walking the Machine.

Translated code follows the bytes it came from: only the translations that
overlap changed bytes are dropped, so every other translation stays warm.
Restoring a different snapshot than the one mapped last drops them all.

A snapshot is taken and restored only while every CPU is idle outside SMM,
and only into the Machine it came from.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import time
import weakref
from typing import TYPE_CHECKING

from smmemu.cpu import Cpu, RunState
from smmemu.engine import Engine, PreparedContext
from smmemu.errors import SnapshotError
from smmemu.firmware.image import MmCoreImage
from smmemu.memory import HostBuffer
from smmemu.objstate import Fields, ObjectState
from smmemu.ramimage import RamImage, Runs, revert
from smmemu.ramimage import take as take_image
from smmemu.scheduler import Scheduler
from smmemu.smm.smram import SmramView

if TYPE_CHECKING:
    from smmemu.machine import Machine

__all__ = ["Snapshot", "restore", "take"]

CPU_FIELDS = ("smbase", "halted", "smi_count", "executed", "nmi_pending", "nmi_masked", "msr",
              "_msr_sites", "_iret_sites", "_smm_inside_nmi", "_last_insn")
"""A CPU's Python state at rest (the rest is per-run bookkeeping, caches and engine hooks)."""
_MACHINE_SKIP = frozenset({"_closed", "run_hook"})
"""Lifetime and tooling (a debugger's run hook), not machine state."""
_OPAQUE = (Engine, HostBuffer, SmramView, MmCoreImage, Scheduler)
"""smmemu types kept by reference: they mirror engine or host state, or never change."""
_TOOLS = ("smmemu.debug",)
"""Packages whose objects are tools attached to a Machine, not part of it."""


@dataclasses.dataclass(frozen=True, eq=False, slots=True)
class Snapshot:
    """A Machine's state at one moment, to restore with :meth:`Machine.restore` (repeatedly).

    Its RAM images are memfds: :meth:`close` releases them early (they go with
    the object otherwise).
    """

    _owner: weakref.ref[Machine]
    _ram: tuple[RamImage, RamImage]
    contexts: tuple[bytes, ...]
    """Each CPU's engine context blob."""
    _prepared: tuple[PreparedContext, ...]
    _objects: ObjectState
    _real_mode: PreparedContext
    elapsed: float
    """Seconds taking it took."""

    @property
    def pages(self) -> int:
        """Pages of RAM and SMRAM data the snapshot holds (zero pages are not stored)."""
        return sum(image.pages for image in self._ram)

    @property
    def objects(self) -> tuple[int, int]:
        """(objects, containers) of Python state captured."""
        return self._objects.size

    def covers(self, obj: object, name: str) -> bool:
        """Whether attribute ``name`` of ``obj`` is part of the snapshot."""
        return self._objects.covers(obj, name)

    def close(self) -> None:
        """Release the RAM images; the snapshot cannot be restored afterwards."""
        for image in self._ram:
            image.close()


def take(machine: Machine) -> Snapshot:
    """The state of ``machine`` now.

    Raises:
        SnapshotError: a CPU is running, in SMM or has an SMI pending.
    """
    started = time.perf_counter()
    _check_idle(machine, "take a snapshot")
    objects = ObjectState([machine], _fields_policy(machine))
    contexts = tuple(cpu.engine.save_context() for cpu in machine.cpus)
    memory = machine.memory
    ram = (take_image(memory.dram), take_image(memory.smram))
    for cpu in machine.cpus:
        cpu.engine.flush_tlb()
    engine = machine.cpu.engine
    return Snapshot(weakref.ref(machine), ram, contexts,
                    tuple(engine.prepare_context(blob) for blob in contexts), objects,
                    engine.prepare_context(_real_mode_blob()),
                    time.perf_counter() - started)


def restore(machine: Machine, snapshot: Snapshot) -> None:
    """Put ``machine`` back in the state ``snapshot`` recorded.

    Raises:
        SnapshotError: the snapshot is another Machine's or was released, or a
            CPU is running, in SMM or has an SMI pending.
    """
    if snapshot._owner() is not machine:
        raise SnapshotError("this snapshot was taken from another Machine")
    _check_idle(machine, "restore a snapshot")
    memory = machine.memory
    dram, smram = snapshot._ram
    changed = (revert(memory.dram, dram), revert(memory.smram, smram))
    snapshot._objects.restore()
    for cpu in machine.cpus:
        _settle_view(cpu.smram, closed=memory.smram_closed)
    ranges = _physical(changed, memory.smram_base)
    for cpu, context in zip(machine.cpus, snapshot._prepared, strict=True):
        engine = cpu.engine
        if ranges is None:
            engine.flush_translations()
        elif ranges:
            # Drop stale translations by physical address: paging off makes linear = physical.
            engine.load_context(snapshot._real_mode)
            engine.flush_tlb()
            for begin, end in ranges:
                engine.invalidate_code(begin, end)
        engine.load_context(context)
        engine.flush_tlb()


@functools.cache
def _real_mode_blob() -> bytes:
    """A real-mode context (paging off), for dropping translations by physical address."""
    return Engine.real_mode_template(0)


def _check_idle(machine: Machine, action: str) -> None:
    for cpu in machine.cpus:
        if cpu.in_smm:
            raise SnapshotError(f"cannot {action}: CPU {cpu.index} is in SMM")
        if cpu.state is not RunState.IDLE:
            raise SnapshotError(f"cannot {action}: CPU {cpu.index} is running")
        if cpu.smi_pending:
            raise SnapshotError(f"cannot {action}: CPU {cpu.index} has an SMI pending")


def _fields_policy(machine: Machine) -> Fields:
    def fields(obj: object) -> tuple[str, ...] | None:
        if isinstance(obj, Cpu):
            return CPU_FIELDS
        module = type(obj).__module__
        if (not module.startswith("smmemu.") or module.startswith(_TOOLS)
                or isinstance(obj, (*_OPAQUE, enum.Enum, type))):
            return None
        params = getattr(obj, "__dataclass_params__", None)
        if params is not None and params.frozen:
            return None
        names = _attribute_names(obj)
        return tuple(n for n in names if n not in _MACHINE_SKIP) if obj is machine else names

    return fields


def _attribute_names(obj: object) -> tuple[str, ...]:
    """Instance attributes: the ``__dict__`` keys, or the ``__slots__`` along the MRO."""
    if hasattr(obj, "__dict__"):
        return tuple(vars(obj))
    names: list[str] = []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and name not in names:
                names.append(name)
    return tuple(names)


def _settle_view(view: SmramView, *, closed: bool) -> None:
    """A CPU outside SMM sees TSEG closed (or open if TSEG is open), never the black hole.

    Translations of SMRAM pages can only be dropped while SMRAM is mapped as RAM.
    """
    if view.state == ("closed" if closed else "open"):
        return
    if view.state == "blackhole":
        view.open()
    view.close()


def _physical(changed: tuple[Runs | None, Runs | None], smram_base: int) -> Runs | None:
    """Changed byte ranges as physical ranges (DRAM from 0, TSEG from its base); None: unknown."""
    dram, smram = changed
    if dram is None or smram is None:
        return None
    return dram + tuple((smram_base + start, smram_base + end) for start, end in smram)

