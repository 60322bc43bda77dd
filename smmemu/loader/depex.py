"""PI dependency expressions: decoding, evaluation, and the dispatcher's ordering rule.

A dependency expression (depex) is a small postfix program stored in a driver's
EFI_SECTION_DXE_DEPEX (0x13) or EFI_SECTION_MM_DEPEX (0x1C) section. The grammar,
the opcodes and the dispatcher's use of them are in PI Spec 1.8, Vol. 2, chapter 10
"DXE Dispatcher" (sections "Dependency Expressions", "Dependency Expression
Instruction Set", "DXE Dispatcher State Machine"); PI Vol. 4 (Management Mode Core
Interface) uses the same grammar for MM drivers.

Opcodes (one byte each; BEFORE, AFTER and PUSH are followed by a 16-byte GUID in
EFI byte order): BEFORE 0x00, AFTER 0x01, PUSH 0x02, AND 0x03, OR 0x04, NOT 0x05,
TRUE 0x06, FALSE 0x07, END 0x08, SOR 0x09.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, NamedTuple, Protocol, TypeVar

from smmemu.loader.errors import DepexError

__all__ = [
    "Blocked",
    "Depex",
    "DepexOp",
    "DispatchPlan",
    "Dispatchable",
    "Instruction",
    "dispatch_order",
]

_GUID_SIZE = 16


class DepexOp(IntEnum):
    """Dependency expression opcodes (PI Vol. 2, "Dependency Expression Instruction Set")."""

    BEFORE = 0x00
    AFTER = 0x01
    PUSH = 0x02
    AND = 0x03
    OR = 0x04
    NOT = 0x05
    TRUE = 0x06
    FALSE = 0x07
    END = 0x08
    SOR = 0x09


_WITH_GUID = frozenset({DepexOp.BEFORE, DepexOp.AFTER, DepexOp.PUSH})
# Precedence for describe(): atoms bind tightest, then NOT, AND, OR.
_ATOM, _NOT, _AND, _OR = 3, 2, 1, 0


@dataclass(frozen=True)
class Instruction:
    """One decoded opcode, with its GUID operand and its offset in the section."""

    op: DepexOp
    guid: uuid.UUID | None = None
    offset: int = 0

    def to_bytes(self) -> bytes:
        """The instruction's encoding."""
        tail = self.guid.bytes_le if self.guid is not None else b""
        return bytes([self.op]) + tail


@dataclass(frozen=True)
class Depex:
    """A validated dependency expression.

    Attributes:
        instructions: the decoded opcodes, END included.
    """

    instructions: tuple[Instruction, ...]

    @classmethod
    def parse(cls, data: bytes) -> Depex:
        """Decode and validate a depex section body.

        Rules checked (PI Vol. 2, "Dependency Expressions"): every opcode is known;
        GUID operands are complete; BEFORE and AFTER appear only as the first opcode and
        are followed directly by END; SOR appears only first; the stack never underflows;
        END is present, is last, and leaves exactly one value (none after BEFORE/AFTER).

        Raises:
            DepexError: naming the offset and the problem.
        """
        out: list[Instruction] = []
        depth = 0
        pos = 0
        while True:
            if pos >= len(data):
                raise DepexError(f"dependency expression has no END opcode "
                                 f"({len(data)} bytes)", offset=pos)
            byte = data[pos]
            try:
                op = DepexOp(byte)
            except ValueError:
                raise DepexError(f"unknown depex opcode {byte:#04x} at offset {pos:#x}",
                                 offset=pos, opcode=byte) from None
            guid = None
            if op in _WITH_GUID:
                if pos + 1 + _GUID_SIZE > len(data):
                    raise DepexError(f"{op.name} at offset {pos:#x} has a truncated GUID "
                                     f"operand", offset=pos, opcode=byte)
                guid = uuid.UUID(bytes_le=bytes(data[pos + 1:pos + 1 + _GUID_SIZE]))
            first = out[0].op if out else None
            if op in (DepexOp.BEFORE, DepexOp.AFTER, DepexOp.SOR) and pos != 0:
                raise DepexError(f"{op.name} at offset {pos:#x} must be the first opcode",
                                 offset=pos, opcode=byte)
            if first in (DepexOp.BEFORE, DepexOp.AFTER) and op is not DepexOp.END:
                raise DepexError(f"{first.name} must be followed directly by END, found "
                                 f"{op.name} at offset {pos:#x}", offset=pos, opcode=byte)
            depth = _stack_effect(op, depth, pos)
            out.append(Instruction(op, guid, pos))
            pos += 1 + (_GUID_SIZE if guid is not None else 0)
            if op is DepexOp.END:
                break
        want = 0 if out[0].op in (DepexOp.BEFORE, DepexOp.AFTER) else 1
        if depth != want:
            raise DepexError(f"END at offset {pos - 1:#x} leaves {depth} values on the stack "
                             f"(expected {want})", offset=pos - 1, opcode=DepexOp.END)
        if pos != len(data):
            raise DepexError(f"{len(data) - pos} bytes after END at offset {pos - 1:#x}",
                             offset=pos)
        return cls(tuple(out))

    def to_bytes(self) -> bytes:
        """The section body this expression decodes from."""
        return b"".join(i.to_bytes() for i in self.instructions)

    @property
    def before(self) -> uuid.UUID | None:
        """The file GUID this driver must run just before, for a ``BEFORE <guid> END`` depex."""
        first = self.instructions[0]
        return first.guid if first.op is DepexOp.BEFORE else None

    @property
    def after(self) -> uuid.UUID | None:
        """The file GUID this driver must run just after, for an ``AFTER <guid> END`` depex."""
        first = self.instructions[0]
        return first.guid if first.op is DepexOp.AFTER else None

    @property
    def schedule_on_request(self) -> bool:
        """True when the expression starts with SOR (the driver waits for ``Schedule()``)."""
        return self.instructions[0].op is DepexOp.SOR

    @property
    def guids(self) -> frozenset[uuid.UUID]:
        """The protocol GUIDs the expression PUSHes."""
        return frozenset(i.guid for i in self.instructions
                         if i.op is DepexOp.PUSH and i.guid is not None)

    def evaluate(self, installed: Set[uuid.UUID]) -> bool:
        """Run the expression against the set of installed protocol GUIDs.

        PUSH is TRUE when its GUID is in ``installed``. SOR is skipped (scheduling is the
        dispatcher's business). BEFORE/AFTER expressions name no protocol, so they evaluate
        TRUE; when they run is decided by :func:`dispatch_order`.
        """
        stack: list[bool] = []
        for ins in self.instructions:
            op = ins.op
            if op in (DepexOp.BEFORE, DepexOp.AFTER):
                return True
            if op is DepexOp.PUSH:
                stack.append(ins.guid in installed)
            elif op in (DepexOp.TRUE, DepexOp.FALSE):
                stack.append(op is DepexOp.TRUE)
            elif op is DepexOp.NOT:
                stack.append(not stack.pop())
            elif op in (DepexOp.AND, DepexOp.OR):
                right, left = stack.pop(), stack.pop()
                stack.append(left and right if op is DepexOp.AND else left or right)
            elif op is DepexOp.END:
                return stack.pop()
        raise AssertionError("unreachable: parse() guarantees a final END")  # pragma: no cover

    def describe(self, names: Mapping[uuid.UUID, str] | None = None) -> str:
        """A readable infix form, e.g. ``A AND (B OR NOT C)``.

        Args:
            names: optional display names for GUIDs; others print in registry format.
        """
        def name(guid: uuid.UUID | None) -> str:
            return (names or {}).get(guid, str(guid)) if guid is not None else "?"

        def wrap(item: tuple[str, int], prec: int) -> str:
            return item[0] if item[1] >= prec else f"({item[0]})"

        stack: list[tuple[str, int]] = []
        prefix = ""
        for ins in self.instructions:
            op = ins.op
            if op in (DepexOp.BEFORE, DepexOp.AFTER):
                return f"{op.name} {name(ins.guid)}"
            if op is DepexOp.SOR:
                prefix = "SOR "
            elif op is DepexOp.PUSH:
                stack.append((name(ins.guid), _ATOM))
            elif op in (DepexOp.TRUE, DepexOp.FALSE):
                stack.append((op.name, _ATOM))
            elif op is DepexOp.NOT:
                stack.append((f"NOT {wrap(stack.pop(), _NOT)}", _NOT))
            elif op in (DepexOp.AND, DepexOp.OR):
                prec = _AND if op is DepexOp.AND else _OR
                right, left = stack.pop(), stack.pop()
                stack.append((f"{wrap(left, prec)} {op.name} {wrap(right, prec)}", prec))
        return prefix + stack[-1][0]


def _stack_effect(op: DepexOp, depth: int, pos: int) -> int:
    """The stack depth after ``op``; raises on underflow."""
    need, change = {
        DepexOp.PUSH: (0, 1), DepexOp.TRUE: (0, 1), DepexOp.FALSE: (0, 1),
        DepexOp.AND: (2, -1), DepexOp.OR: (2, -1), DepexOp.NOT: (1, 0),
    }.get(op, (0, 0))
    if depth < need:
        raise DepexError(f"{op.name} at offset {pos:#x} needs {need} values on the stack, "
                         f"has {depth}", offset=pos, opcode=int(op))
    return depth + change


class Dispatchable(Protocol):
    """What :func:`dispatch_order` needs from a driver: its file GUID and its depex."""

    @property
    def guid(self) -> uuid.UUID:
        """The driver's FFS file name GUID."""
        ...

    @property
    def dependency(self) -> Depex | None:
        """The parsed dependency expression, or None if the driver has no depex section."""
        ...


D = TypeVar("D", bound=Dispatchable)


@dataclass(frozen=True)
class Blocked(Generic[D]):
    """A driver the dispatcher never ran, and why."""

    driver: D
    reason: str


class DispatchPlan(NamedTuple, Generic[D]):
    """Result of :func:`dispatch_order`; unpacks as ``ordered, blocked``."""

    ordered: list[D]
    blocked: list[Blocked[D]]


def dispatch_order(drivers: Iterable[D], initially_installed: Iterable[uuid.UUID],
                   installs: Callable[[D], Set[uuid.UUID]], *,
                   scheduled: Iterable[uuid.UUID] = ()) -> DispatchPlan[D]:
    """Order drivers the way a PI dispatcher would run them.

    The rule (PI Vol. 2, chapter 10, "DXE Dispatcher State Machine"; the MM core applies
    it to MM drivers) is a sequence of passes. Each pass evaluates every driver not yet
    run against the protocols installed so far, in firmware-volume order, and queues each
    one whose depex is TRUE. Queuing a driver first queues every not-yet-run driver whose
    depex is ``BEFORE <its guid>``, then the driver, then every ``AFTER <its guid>``
    driver, recursively. The queue then runs, with ``installs(driver)`` adding that
    driver's protocols, and a new pass starts. It stops when a pass queues nothing.

    A driver with no depex section counts as satisfied. That is the MM rule; the DXE
    dispatcher would make it wait for all architectural protocols instead. A SOR driver
    waits until its GUID is in ``scheduled`` (the effect of ``Schedule()``).

    Args:
        drivers: the candidates, in firmware-volume order.
        initially_installed: protocol GUIDs present before the first pass.
        installs: the protocol GUIDs a driver installs when it runs.
        scheduled: GUIDs of SOR drivers that have been scheduled.

    Returns:
        The drivers in run order, and the ones never run with a reason each. A malformed
        depex blocks its driver rather than aborting the plan.
    """
    items = list(drivers)
    installed = set(initially_installed)
    sor_ok = set(scheduled)
    deps: list[Depex | None] = []
    broken: dict[int, str] = {}
    for index, driver in enumerate(items):
        try:
            deps.append(driver.dependency)
        except DepexError as err:
            deps.append(None)
            broken[index] = f"malformed dependency expression: {err}"
    before: dict[uuid.UUID, list[int]] = {}
    after: dict[uuid.UUID, list[int]] = {}
    for index, dep in enumerate(deps):
        if dep is not None and dep.before is not None:
            before.setdefault(dep.before, []).append(index)
        if dep is not None and dep.after is not None:
            after.setdefault(dep.after, []).append(index)
    done: set[int] = set(broken)
    ran: list[int] = []

    def enqueue(index: int, queue: list[int]) -> None:
        done.add(index)
        guid = items[index].guid
        for other in before.get(guid, []):
            if other not in done:
                enqueue(other, queue)
        queue.append(index)
        for other in after.get(guid, []):
            if other not in done:
                enqueue(other, queue)

    while True:
        queue: list[int] = []
        for index, dep in enumerate(deps):
            if index in done:
                continue
            if dep is not None and (dep.before or dep.after):
                continue
            if dep is not None and dep.schedule_on_request and items[index].guid not in sor_ok:
                continue
            if dep is None or dep.evaluate(installed):
                enqueue(index, queue)
        if not queue:
            break
        for index in queue:
            ran.append(index)
            installed |= installs(items[index])
    ordered = [items[i] for i in ran]
    ran_set = set(ran)
    blocked = [Blocked(items[i], broken.get(i) or _why_blocked(deps[i], installed, sor_ok,
                                                                items[i].guid))
               for i in range(len(items)) if i not in ran_set]
    return DispatchPlan(ordered, blocked)


def _why_blocked(dep: Depex | None, installed: Set[uuid.UUID], scheduled: Set[uuid.UUID],
                 guid: uuid.UUID) -> str:
    """A one-line reason for a driver that never ran."""
    if dep is None:  # pragma: no cover - a driver without depex always runs
        return "not dispatched"
    if dep.before is not None or dep.after is not None:
        target = dep.before or dep.after
        kind = "BEFORE" if dep.before is not None else "AFTER"
        return f"{kind} {target}: that driver never ran (absent, blocked, or a cycle)"
    if dep.schedule_on_request and guid not in scheduled:
        return "schedule-on-request (SOR) driver that was never scheduled"
    missing = sorted(str(g) for g in dep.guids - installed)
    text = f"dependency expression is FALSE: {dep.describe()}"
    return f"{text}; not installed: {', '.join(missing)}" if missing else text
