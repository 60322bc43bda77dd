"""Dependency expressions: decoding, evaluation, description, dispatch order (PI Vol. 2, 10)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from smmemu.loader.depex import Depex, DepexOp, dispatch_order
from smmemu.loader.errors import DepexError

A = uuid.UUID("11111111-1111-1111-1111-111111111111")
B = uuid.UUID("22222222-2222-2222-2222-222222222222")
C = uuid.UUID("33333333-3333-3333-3333-333333333333")


def op(code: DepexOp, guid: uuid.UUID | None = None) -> bytes:
    return bytes([code]) + (guid.bytes_le if guid else b"")


def push(guid: uuid.UUID) -> bytes:
    return op(DepexOp.PUSH, guid)


AND, OR, NOT = op(DepexOp.AND), op(DepexOp.OR), op(DepexOp.NOT)
TRUE, FALSE, END, SOR = op(DepexOp.TRUE), op(DepexOp.FALSE), op(DepexOp.END), op(DepexOp.SOR)


# (expression, installed, expected result, describe())
EVALUATE = [
    pytest.param(push(A) + END, {A}, True, str(A), id="PUSH-present"),
    pytest.param(push(A) + END, set(), False, str(A), id="PUSH-absent"),
    pytest.param(push(A) + push(B) + AND + END, {A}, False, f"{A} AND {B}", id="AND-one"),
    pytest.param(push(A) + push(B) + AND + END, {A, B}, True, f"{A} AND {B}", id="AND-both"),
    pytest.param(push(A) + push(B) + OR + END, {B}, True, f"{A} OR {B}", id="OR-one"),
    pytest.param(push(A) + push(B) + OR + END, set(), False, f"{A} OR {B}", id="OR-none"),
    pytest.param(push(A) + NOT + END, set(), True, f"NOT {A}", id="NOT"),
    pytest.param(TRUE + END, set(), True, "TRUE", id="TRUE"),
    pytest.param(FALSE + END, {A}, False, "FALSE", id="FALSE"),
    pytest.param(SOR + push(A) + END, {A}, True, f"SOR {A}", id="SOR"),
    pytest.param(op(DepexOp.BEFORE, A) + END, set(), True, f"BEFORE {A}", id="BEFORE"),
    pytest.param(op(DepexOp.AFTER, A) + END, set(), True, f"AFTER {A}", id="AFTER"),
    pytest.param(push(A) + push(B) + push(C) + OR + AND + END, {A, C}, True,
                 f"{A} AND ({B} OR {C})", id="nested-parens"),
    pytest.param(push(A) + push(B) + AND + NOT + END, {A}, True, f"NOT ({A} AND {B})",
                 id="NOT-of-AND"),
]


@pytest.mark.parametrize(("raw", "installed", "expected", "text"), EVALUATE)
def test_evaluate_and_describe(raw: bytes, installed: set[uuid.UUID], expected: bool,
                               text: str) -> None:
    depex = Depex.parse(raw)
    assert depex.evaluate(installed) is expected
    assert depex.describe() == text
    assert depex.to_bytes() == raw


def test_describe_uses_names() -> None:
    depex = Depex.parse(push(A) + push(B) + AND + END)
    assert depex.describe({A: "gA"}) == f"gA AND {B}"


def test_properties() -> None:
    assert Depex.parse(op(DepexOp.BEFORE, A) + END).before == A
    assert Depex.parse(op(DepexOp.AFTER, B) + END).after == B
    sor = Depex.parse(SOR + push(A) + push(B) + OR + END)
    assert sor.schedule_on_request
    assert sor.guids == {A, B}
    assert sor.before is None
    assert sor.after is None


BAD = [
    pytest.param(b"", 0, "no END", id="empty"),
    pytest.param(push(A), 17, "no END", id="missing-END"),
    pytest.param(b"\x0a" + END, 0, "unknown depex opcode 0x0a", id="unknown-opcode"),
    pytest.param(push(A)[:10], 0, "truncated GUID", id="truncated-guid"),
    pytest.param(AND + END, 0, "needs 2 values", id="AND-underflow"),
    pytest.param(NOT + END, 0, "needs 1 values", id="NOT-underflow"),
    pytest.param(END, 0, "leaves 0 values", id="END-empty"),
    pytest.param(push(A) + push(B) + END, 34, "leaves 2 values", id="END-two-values"),
    pytest.param(push(A) + op(DepexOp.BEFORE, B) + END, 17, "must be the first", id="late-BEFORE"),
    pytest.param(push(A) + SOR + END, 17, "must be the first", id="late-SOR"),
    pytest.param(op(DepexOp.AFTER, A) + TRUE + END, 17, "followed directly by END",
                 id="AFTER-not-alone"),
    pytest.param(SOR + END, 1, "leaves 0 values", id="SOR-without-expression"),
    pytest.param(TRUE + END + b"\x00", 2, "1 bytes after END", id="trailing-bytes"),
]


@pytest.mark.parametrize(("raw", "offset", "message"), BAD)
def test_parse_errors(raw: bytes, offset: int, message: str) -> None:
    with pytest.raises(DepexError, match=message) as info:
        Depex.parse(raw)
    assert info.value.offset == offset


# --- dispatch order -------------------------------------------------------------------


@dataclass(frozen=True)
class Drv:
    name: str
    guid: uuid.UUID
    raw: bytes | None
    makes: frozenset[uuid.UUID] = frozenset()

    @property
    def dependency(self) -> Depex | None:
        return Depex.parse(self.raw) if self.raw is not None else None


def guid(n: int) -> uuid.UUID:
    return uuid.UUID(int=0xD000 + n)


P1, P2, P3 = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)


def plan(drivers: list[Drv], initially: set[uuid.UUID] | None = None,
         scheduled: tuple[uuid.UUID, ...] = ()) -> tuple[list[str], dict[str, str]]:
    ordered, blocked = dispatch_order(drivers, initially or set(), lambda d: d.makes,
                                      scheduled=scheduled)
    return [d.name for d in ordered], {b.driver.name: b.reason for b in blocked}


def test_dispatch_follows_protocol_chain_in_passes() -> None:
    drivers = [
        Drv("needs-p2", guid(1), push(P2) + END),
        Drv("makes-p2", guid(2), push(P1) + END, frozenset({P2})),
        Drv("no-depex", guid(3), None, frozenset({P1})),
        Drv("true", guid(4), TRUE + END),
    ]
    order, blocked = plan(drivers)
    # pass 1: no-depex and true (FV order); pass 2: makes-p2; pass 3: needs-p2
    assert order == ["no-depex", "true", "makes-p2", "needs-p2"]
    assert blocked == {}


def test_dispatch_initially_installed() -> None:
    order, _ = plan([Drv("x", guid(1), push(P3) + END)], initially={P3})
    assert order == ["x"]


def test_before_and_after_wrap_their_target() -> None:
    target = Drv("target", guid(1), TRUE + END)
    drivers = [
        Drv("after", guid(2), op(DepexOp.AFTER, target.guid) + END),
        Drv("before", guid(3), op(DepexOp.BEFORE, target.guid) + END),
        Drv("other", guid(4), TRUE + END),
        target,
        Drv("after-after", guid(5), op(DepexOp.AFTER, guid(2)) + END),
    ]
    order, blocked = plan(drivers)
    assert order == ["other", "before", "target", "after", "after-after"]
    assert blocked == {}


def test_unsatisfiable_and_cyclic_dependencies_are_blocked() -> None:
    drivers = [
        Drv("ok", guid(1), TRUE + END),
        Drv("cycle-a", guid(2), push(P2) + END, frozenset({P1})),
        Drv("cycle-b", guid(3), push(P1) + END, frozenset({P2})),
        Drv("false", guid(4), FALSE + END),
        Drv("before-missing", guid(5), op(DepexOp.BEFORE, guid(99)) + END),
        Drv("before-loop-1", guid(6), op(DepexOp.BEFORE, guid(7)) + END),
        Drv("before-loop-2", guid(7), op(DepexOp.BEFORE, guid(6)) + END),
    ]
    order, blocked = plan(drivers)
    assert order == ["ok"]
    assert set(blocked) == {"cycle-a", "cycle-b", "false", "before-missing", "before-loop-1",
                            "before-loop-2"}
    assert str(P2) in blocked["cycle-a"]
    assert "not installed" in blocked["cycle-a"]
    assert "FALSE" in blocked["false"]
    assert "never ran" in blocked["before-missing"]


def test_sor_waits_for_schedule() -> None:
    drivers = [Drv("sor", guid(1), SOR + TRUE + END)]
    assert plan(drivers) == ([], {"sor": "schedule-on-request (SOR) driver that was never "
                                         "scheduled"})
    assert plan(drivers, scheduled=(guid(1),)) == (["sor"], {})


def test_malformed_depex_blocks_only_its_driver() -> None:
    drivers = [Drv("bad", guid(1), AND + END), Drv("good", guid(2), TRUE + END)]
    order, blocked = plan(drivers)
    assert order == ["good"]
    assert blocked["bad"].startswith("malformed dependency expression")
