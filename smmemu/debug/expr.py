"""Expressions in debugger commands: addresses, conditions and values, evaluated safely.

The syntax is Python's expression syntax over integers (``0x`` literals,
``+ - * // % & | ^ << >> ~``, comparisons, ``and``/``or``/``not``), with a few
debugger spellings on top: ``$name`` is a register (``$rax``, ``$pc``...), a
bare name is an MM core symbol or constant first and a register second, ``&&``,
``||`` and ``!`` mean ``and``, ``or`` and ``not``, and ``u8(a)``, ``u16(a)``,
``u32(a)``, ``u64(a)`` read little-endian memory at the linear address ``a``.
The text is parsed with :mod:`ast` and walked node by node; nothing is ever
passed to ``eval``.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from typing import Protocol

from smmemu.debug.errors import DebugError

__all__ = ["Scope", "evaluate"]

_REGISTER_PREFIX = "_reg_"
_MEMORY_FUNCTIONS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_BINARY: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Div: operator.floordiv, ast.Mod: operator.mod,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
_COMPARE: dict[type[ast.cmpop], Callable[[int, int], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}


class Scope(Protocol):
    """What names and memory an expression can see."""

    def register(self, name: str) -> int:
        """A register value (raises DebugError for an unknown name)."""

    def lookup(self, name: str) -> int | None:
        """A symbol or constant, or None."""

    def read(self, address: int, size: int) -> bytes:
        """Memory at a linear address."""


def _prepare(text: str) -> str:
    text = re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", rf"{_REGISTER_PREFIX}\1", text)
    text = text.replace("&&", " and ").replace("||", " or ")
    return re.sub(r"!(?!=)", " not ", text)


def evaluate(text: str, scope: Scope) -> int:
    """The integer value of ``text`` (True/False count as 1/0).

    Raises:
        DebugError: a syntax error, an unknown name, an unreadable address or a
            division by zero.
    """
    if not text.strip():
        raise DebugError("an expression is missing")
    try:
        tree = ast.parse(_prepare(text.strip()), mode="eval")
    except SyntaxError:
        raise DebugError(f"cannot parse the expression {text.strip()!r}") from None
    return int(_Evaluator(scope).visit(tree.body))


class _Evaluator:
    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def visit(self, node: ast.expr) -> int:
        match node:
            case ast.Constant(value=int() as value) if not isinstance(value, bool):
                return value
            case ast.Name(id=name):
                return self._name(name)
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
                return self._binary(node, _BINARY[type(op)], self.visit(left), self.visit(right))
            case ast.UnaryOp(op=op, operand=operand):
                return self._unary(op, self.visit(operand))
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                return self._compare(node, self.visit(left), ops, comparators)
            case ast.BoolOp(op=ast.And(), values=values):
                return int(all(self.visit(value) for value in values))
            case ast.BoolOp(op=ast.Or(), values=values):
                return int(any(self.visit(value) for value in values))
            case ast.Call(func=ast.Name(id=function), args=[argument], keywords=[]) \
                    if function in _MEMORY_FUNCTIONS:
                size = _MEMORY_FUNCTIONS[function]
                return int.from_bytes(self._scope.read(self.visit(argument), size), "little")
            case ast.Call():
                raise DebugError(f"unknown function in {ast.unparse(node)!r} "
                                 "(u8, u16, u32 and u64 read memory)")
        raise DebugError(f"unsupported in an expression: {ast.unparse(node)!r}")

    def _name(self, name: str) -> int:
        if name.startswith(_REGISTER_PREFIX):
            return self._scope.register(name.removeprefix(_REGISTER_PREFIX))
        found = self._scope.lookup(name)
        if found is not None:
            return found
        try:
            return self._scope.register(name)
        except DebugError:
            raise DebugError(f"no symbol, constant or register named {name!r}") from None

    @staticmethod
    def _binary(node: ast.expr, function: Callable[[int, int], int], left: int,
                right: int) -> int:
        try:
            return function(left, right)
        except (ZeroDivisionError, ValueError) as err:
            raise DebugError(f"{ast.unparse(node)}: {err}") from None

    @staticmethod
    def _unary(op: ast.unaryop, value: int) -> int:
        if isinstance(op, ast.USub):
            return -value
        if isinstance(op, ast.UAdd):
            return value
        if isinstance(op, ast.Invert):
            return ~value & ((1 << 64) - 1)
        return int(not value)

    def _compare(self, node: ast.expr, left: int, ops: list[ast.cmpop],
                 comparators: list[ast.expr]) -> int:
        for op, right_node in zip(ops, comparators, strict=True):
            function = _COMPARE.get(type(op))
            if function is None:
                raise DebugError(f"unsupported comparison in {ast.unparse(node)!r}")
            right = self.visit(right_node)
            if not function(left, right):
                return 0
            left = right
        return 1
