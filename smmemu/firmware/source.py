"""The MM core assembly dialect: parser, tiny expression evaluator and house rules.

Why it exists: keystone 0.9.2 accepts far more than it encodes correctly
(``/work/shared/reference/unicorn_probe.md`` section 7 and summary row 17). This module accepts only
a small, line-oriented subset of its Intel syntax and rejects, with ``file:line``, the forms that
were measured to go wrong silently:

* ``ljmp sel:off`` in 16- and 32-bit code truncates the offset to 16 bits, so far jumps are written
  ``.byte 0x66, 0xea`` / ``.long label`` / ``.word sel`` (16-bit) or ``.byte 0xea`` / ... (32-bit);
* 32-bit ``lgdt``/``lidt`` get a 0x66 prefix (a 24-bit base), so they are written as bytes, and in
  16-bit code ``lgdt`` must follow ``.byte 0x66`` (the only o32 form keystone encodes);
* a 64-bit ``[absolute]`` memory operand becomes ``[rip + absolute]``;
* a decimal literal is read as hex once any keystone option was set anywhere, so numbers are
  ``0x..`` (single digits excepted); ``;`` is keystone's statement separator, so it is rejected.

The byte size of each directive is computed here, so the verifier in :mod:`smmemu.firmware.verify`
can walk the source in step with keystone's output. Expressions are numbers, labels, ``.equ`` names,
``.``, registers inside ``[...]``, ``+ - *`` and parentheses, evaluated without ``eval``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from smmemu.disasm import Mode

_GP = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")
_NUMBERED = tuple(f"r{i}" for i in range(8, 16))
GP16 = frozenset([*_GP, *(f"{r}w" for r in _NUMBERED)])
GP32 = frozenset([*(f"e{r}" for r in _GP), *(f"{r}d" for r in _NUMBERED)])
REGISTERS = (
    GP16 | GP32 | frozenset([*(f"r{r}" for r in _GP), *_NUMBERED, *(f"{r}b" for r in _NUMBERED)])
    | frozenset(["cs", "ds", "es", "fs", "gs", "ss", "rip", "eip", "ip", "riz", "eiz"])
    | frozenset(["al", "bl", "cl", "dl", "ah", "bh", "ch", "dh", "sil", "dil", "bpl", "spl"])
    | frozenset(f"{kind}{i}" for kind in ("cr", "dr") for i in range(16))
    | frozenset(f"{kind}{i}" for kind in ("xmm", "ymm", "zmm") for i in range(32))
    | frozenset(f"{kind}{i}" for kind in ("mm", "k") for i in range(8))
)  # fmt: skip
SIZES = {"byte": 1, "word": 2, "dword": 4, "fword": 6, "qword": 8, "tbyte": 10,
         "xmmword": 16, "ymmword": 32, "zmmword": 64}  # fmt: skip
PREFIXES = frozenset(["rep", "repe", "repz", "repne", "repnz", "lock", "rex64"])
KEYWORDS = frozenset(["ptr", "offset", "short", "near", "far", "dup", *SIZES])
_DATA_WIDTHS = {".byte": 1, ".word": 2, ".long": 4, ".quad": 8}
_MODES = {".code16": Mode.BITS16, ".code32": Mode.BITS32, ".code64": Mode.BITS64}
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "0": "\0"}

_NAME = r"[A-Za-z_.][A-Za-z0-9_.]*"
_LABEL_RE = re.compile(rf"({_NAME}):")
_TOKEN_RE = re.compile(rf"\s*(?:(?P<num>[0-9][0-9A-Za-z_]*)|(?P<name>{_NAME})|(?P<op>[-+*():]))")
_NUMBER_RE = re.compile(r"0x[0-9a-fA-F]+|[0-9]")
_SIZE_RE = re.compile(r"(" + "|".join(SIZES) + r")\s+ptr\s+", re.IGNORECASE)
_SEGMENT_RE = re.compile(r"(cs|ds|es|fs|gs|ss)\s*:\s*(?=\[)", re.IGNORECASE)
_MNEMONIC_RE = re.compile(r"[a-z][a-z0-9]*")

Token = tuple[str, str]  # (kind, text) with kind "num", "name" or "op"
Kind = Literal["label", "mode", "data", "ascii", "align", "equ", "insn"]
Resolver = Callable[[str], "Linear"]


class LineError(Exception):
    """One statement is unacceptable; the caller attaches the location."""


class UnresolvedError(Exception):
    """A label whose address is not known yet (before the layout pass)."""


@dataclass(frozen=True)
class Location:
    """Where a statement came from: a path relative to build.toml and a 1-based line number."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Operand:
    """One instruction operand: "reg", "mem" (``tokens`` inside the brackets) or "value"."""

    kind: Literal["reg", "mem", "value"]
    text: str
    tokens: tuple[Token, ...] = ()
    size: int | None = None
    segment: str | None = None


@dataclass(frozen=True)
class Statement:
    """One non-blank source line, comments removed.

    Only the fields of its ``kind`` are set: ``name`` (label or .equ name, directive, mnemonic),
    ``mode`` (mode switch), ``width`` and ``items`` (data; an .equ keeps its expression as the one
    item), ``raw`` (.ascii), ``boundary`` (.align), ``prefixes`` and ``operands`` (instruction).
    """

    location: Location
    text: str
    kind: Kind
    name: str = ""
    mode: Mode = Mode.BITS64
    width: int = 0
    items: tuple[tuple[Token, ...], ...] = ()
    raw: bytes = b""
    boundary: int = 1
    prefixes: tuple[str, ...] = ()
    operands: tuple[Operand, ...] = ()


@dataclass(frozen=True)
class Linear:
    """A value ``const + sum(coeff * register)``; ``reloc`` counts labels (label - label = 0)."""

    const: int
    regs: Mapping[str, int] = field(default_factory=dict)
    reloc: int = 0


@dataclass(frozen=True)
class Problem:
    """A located build failure; ``details`` are extra lines (bytes, capstone text)."""

    location: Location | None
    message: str
    text: str = ""
    details: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        quoted = f": `{self.text}`" if self.text else ""
        return "".join([f"{where}{self.message}{quoted}", *(f"\n    {d}" for d in self.details)])


class SymbolTable:
    """Labels (filled by the layout pass) and lazily evaluated ``.equ`` names.

    Attributes:
        labels: Label name to linear address.
        complete: False until every label address is known; until then labels raise UnresolvedError.
        dot: Address that ``.`` stands for while evaluating the current statement.
    """

    def __init__(self, statements: Sequence[Statement]) -> None:
        self.labels: dict[str, int] = {}
        self.complete = False
        self.dot: int | None = None
        self._equ = {s.name: s.items[0] for s in statements if s.kind == "equ"}
        self._values: dict[str, Linear] = {}
        self._active: set[str] = set()

    def constants(self) -> dict[str, int]:
        """Every ``.equ`` name that evaluates to a plain number, for the manifest."""
        values = {}
        for name in self._equ:
            value = self.resolve(name)
            if not value.regs and not value.reloc:
                values[name] = value.const
        return values

    def resolve(self, name: str) -> Linear:
        """Value of a name; raises UnresolvedError or LineError."""
        if name == ".":
            if self.dot is None:
                raise UnresolvedError(name)
            return Linear(self.dot, reloc=1)
        if name in self._values:
            return self._values[name]
        if name in self._equ:
            if name in self._active:
                raise LineError(f"circular .equ {name!r}")
            self._active.add(name)
            try:
                value = evaluate(self._equ[name], self.resolve)
            finally:
                self._active.discard(name)
            self._values[name] = value
            return value
        if name in self.labels:
            return Linear(self.labels[name], reloc=1)
        if not self.complete:
            raise UnresolvedError(name)
        raise LineError(f"unknown symbol {name!r}")

    def value(self, tokens: tuple[Token, ...], *, registers: bool = False) -> Linear:
        """Evaluate an expression against this table."""
        return evaluate(tokens, self.resolve, registers=registers)


def tokenize(text: str) -> tuple[Token, ...]:
    """Split an expression into tokens, enforcing the number rule (``0x..`` or one digit)."""
    tokens: list[Token] = []
    pos, text = 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise LineError(f"unexpected character {text[pos:].lstrip()[:1]!r}")
        kind = str(match.lastgroup)
        value = match.group(kind)
        if kind == "num" and _NUMBER_RE.fullmatch(value) is None:
            raise LineError(f"number {value!r}: write numbers as 0x... (only 0-9 may be decimal)")
        tokens.append((kind, value))
        pos = match.end()
    return tuple(tokens)


def _combine(a: Linear, b: Linear, sign: int) -> Linear:
    regs = dict(a.regs)
    for reg, coeff in b.regs.items():
        regs[reg] = regs.get(reg, 0) + sign * coeff
    nonzero = {r: c for r, c in regs.items() if c}
    return Linear(a.const + sign * b.const, nonzero, a.reloc + sign * b.reloc)


def _scale(a: Linear, factor: Linear) -> Linear:
    if factor.regs or factor.reloc:
        raise LineError("only constants can be multiplied")
    k = factor.const
    return Linear(a.const * k, {r: c * k for r, c in a.regs.items()}, a.reloc * k)


class _Parser:
    """Recursive descent: ``expr := term (('+'|'-') term)*``, ``term := atom ('*' atom)*``."""

    def __init__(self, tokens: tuple[Token, ...], resolve: Resolver, registers: bool) -> None:
        self.tokens, self.pos, self.resolve, self.registers = tokens, 0, resolve, registers

    def parse(self) -> Linear:
        result = self.expr()
        if self.pos != len(self.tokens):
            raise LineError(f"unexpected {self.tokens[self.pos][1]!r}")
        return result

    def peek(self) -> str:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else ""

    def take(self) -> Token:
        if self.pos >= len(self.tokens):
            raise LineError("incomplete expression")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expr(self) -> Linear:
        value = self.term()
        while self.peek() in ("+", "-"):
            sign = 1 if self.take()[1] == "+" else -1
            value = _combine(value, self.term(), sign)
        return value

    def term(self) -> Linear:
        value = self.atom()
        while self.peek() == "*":
            self.take()
            other = self.atom()
            constant = not value.regs and not value.reloc
            value = _scale(other, value) if constant else _scale(value, other)
        return value

    def atom(self) -> Linear:
        kind, text = self.take()
        lowered = text.lower()
        if text in ("-", "+"):
            return _scale(self.atom(), Linear(-1 if text == "-" else 1))
        if text == "(":
            inner = self.expr()
            if self.take()[1] != ")":
                raise LineError("missing ')'")
            return inner
        if kind == "num":
            return Linear(int(text, 16) if text.startswith("0x") else int(text))
        if kind == "op":
            raise LineError(f"unexpected {text!r}")
        if lowered in REGISTERS:
            if not self.registers:
                raise LineError(f"register {text!r} used as a value")
            return Linear(0, {lowered: 1})
        if lowered in KEYWORDS:
            raise LineError(f"unsupported keyword {text!r}")
        return self.resolve(text)


def evaluate(tokens: tuple[Token, ...], resolve: Resolver, *, registers: bool = False) -> Linear:
    """Evaluate tokens; ``resolve`` gives symbol values; registers are allowed inside ``[...]``."""
    return _Parser(tokens, resolve, registers).parse()


def fits(value: int, bits: int) -> bool:
    """Whether ``value`` is representable in ``bits`` bits, signed or unsigned."""
    return -(1 << (bits - 1)) <= value < (1 << bits)


def directive_size(stmt: Statement, address: int) -> int:
    """Bytes a non-instruction statement occupies when it starts at linear ``address``."""
    if stmt.kind == "data":
        return stmt.width * len(stmt.items)
    if stmt.kind == "ascii":
        return len(stmt.raw)
    if stmt.kind == "align":
        return -address % stmt.boundary  # keystone aligns the absolute address (measured)
    return 0


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    if not all(parts):
        raise LineError("empty operand")
    return parts


def _parse_string(text: str) -> bytes:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise LineError('.ascii takes one "string"')
    out, body, i = [], text[1:-1], 0
    while i < len(body):
        char = body[i]
        if char == '"' or not " " <= char <= "~":
            raise LineError(f"character {char!r} in a string (escape it)")
        if char == "\\":
            nxt = body[i + 1 : i + 2]
            if nxt not in _ESCAPES or (nxt == "0" and body[i + 2 : i + 3].isdigit()):
                raise LineError(f'unsupported escape \\{nxt} (use \\n \\t \\r \\0 \\\\ \\")')
            char, i = _ESCAPES[nxt], i + 1
        out.append(char)
        i += 1
    return "".join(out).encode("ascii")


def _parse_operand(text: str) -> Operand:
    rest, size, segment = text, None, None
    if text.lower().startswith("far "):
        raise LineError(
            "far jumps and calls: keystone mis-encodes them; hand-encode with .byte/.long/.word"
        )
    if (match := _SIZE_RE.match(rest)) is not None:
        size, rest = SIZES[match.group(1).lower()], rest[match.end() :]
    if (match := _SEGMENT_RE.match(rest)) is not None:
        segment, rest = match.group(1).lower(), rest[match.end() :]
    if rest.startswith("[") and rest.endswith("]") and rest.count("[") == 1 == rest.count("]"):
        tokens = tokenize(rest[1:-1])
        if not tokens or ("op", ":") in tokens:
            raise LineError(f"memory operand {text!r}: write a segment override before the '['")
        return Operand("mem", text, tokens, size, segment)
    if "[" in rest or "]" in rest or size is not None:
        raise LineError(f"malformed memory operand {text!r}")
    tokens = tokenize(rest)
    if ("op", ":") in tokens:
        raise LineError(
            f"far pointer {text!r}: keystone truncates it; hand-encode with .byte/.long/.word"
        )
    if len(tokens) == 1 and tokens[0][1].lower() in REGISTERS:
        return Operand("reg", text, tokens)
    return Operand("value", text, tokens)


def _parse_directive(head: str, args: str, loc: Location, text: str) -> Statement:
    if head in _MODES and not args:
        return Statement(loc, text, "mode", name=head, mode=_MODES[head])
    if head in _DATA_WIDTHS:
        items = tuple(tokenize(part) for part in _split_top(args))
        return Statement(loc, text, "data", name=head, width=_DATA_WIDTHS[head], items=items)
    if head == ".ascii":
        return Statement(loc, text, "ascii", name=head, raw=_parse_string(args))
    if head == ".align":
        if _NUMBER_RE.fullmatch(args) is None or (n := int(args, 0)) & (n - 1) or n == 0:
            raise LineError(".align takes one power-of-two number")
        return Statement(loc, text, "align", name=head, boundary=n)
    if head == ".equ":
        name, _, expr = (part.strip() for part in args.partition(","))
        if re.fullmatch(_NAME, name) is None or name == "." or not expr:
            raise LineError(".equ takes NAME, expression")
        return Statement(loc, text, "equ", name=name, items=(tokenize(expr),))
    raise LineError(f"unsupported directive {head}")


def parse_line(text: str, loc: Location) -> Statement:
    """Parse one comment-free, stripped, non-empty line."""
    if (match := _LABEL_RE.fullmatch(text)) is not None:
        return Statement(loc, text, "label", name=match.group(1))
    if _LABEL_RE.match(text) is not None:
        raise LineError("a label must be alone on its line")
    head, _, args = text.partition(" ")
    if head.startswith("."):
        return _parse_directive(head.lower(), args.strip(), loc, text)
    words = text.split()
    prefixes = []
    while len(words) > 1 and words[0].lower() in PREFIXES:
        prefixes.append(words.pop(0).lower())
    mnemonic = words[0].lower()
    if _MNEMONIC_RE.fullmatch(mnemonic) is None:
        raise LineError("expected a label, a directive or an instruction")
    rest = text.split(None, len(prefixes) + 1)[len(prefixes) + 1 :]
    operands = tuple(_parse_operand(part) for part in _split_top(rest[0])) if rest else ()
    return Statement(loc, text, "insn", name=mnemonic, prefixes=tuple(prefixes), operands=operands)


def _strip_comment(line: str) -> str:
    code = line.split("#", 1)[0]
    in_string = False
    for i, char in enumerate(code):
        if char == '"' and (i == 0 or code[i - 1] != "\\"):
            in_string = not in_string
        elif char == ";" and not in_string:
            raise LineError("';' separates statements in keystone: one statement per line")
    return code.strip()


def parse(text: str, file: str, problems: list[Problem]) -> list[Statement]:
    """Parse one source file; failures are appended to ``problems`` and the line is skipped."""
    statements = []
    for number, line in enumerate(text.splitlines(), start=1):
        loc = Location(file, number)
        try:
            code = _strip_comment(line)
            if code:
                statements.append(parse_line(code, loc))
        except LineError as exc:
            problems.append(Problem(loc, str(exc), line.strip()))
    return statements


def names(stmt: Statement) -> Iterator[str]:
    """Every name token a statement's expressions and operands mention."""
    for tokens in (*stmt.items, *(op.tokens for op in stmt.operands)):
        yield from (text for kind, text in tokens if kind == "name")
