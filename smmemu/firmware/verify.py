"""House rules, and a walk of the MM core source in step with keystone's bytes, checked by capstone.

Why it exists: keystone 0.9.2 gets 13 of 83 probed forms wrong *without an error*
(``/work/shared/reference/unicorn_probe.md`` row 17): 32-bit ``lgdt`` gains a 0x66 prefix,
``ljmp sel:off`` loses the top of its offset, 64-bit ``[abs]`` turns into ``[rip + abs]``,
``[eiz + x]`` becomes ``[rsp + x]``. Measuring for this tool found more of the same: 16-bit
``call``/``ret``/``push imm``/``retf`` get an unasked-for 0x66 prefix, ``[rbx + 0xffffffff]``
becomes ``[rbx - 1]``, ``[rip + b - a]`` loses its displacement, ``.word 0x12345`` produces no
bytes, and ``.align`` in ``.code16`` pads with NOPs that only decode as NOPs in 32/64-bit code. So
nothing keystone produces is trusted until capstone reads it back and it matches the source.

Before keystone runs, :func:`check_rules` rejects the forms known to go wrong (with the current
``.codeNN`` mode tracked across files) and undefined or duplicate names. The walk has two passes.
The layout pass places every statement: labels take the current address,
directives advance by their computed size, instructions by the length capstone decodes in the
current mode. The check pass, with every label known, compares each instruction's mnemonic (modulo
a small alias table), registers, immediates, branch targets and memory operands with the source,
and each data directive's bytes with the values it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smmemu.disasm import Instruction, InstructionDetail, MemoryOperand, Mode, disassemble_one
from smmemu.firmware.source import (
    GP16,
    GP32,
    KEYWORDS,
    REGISTERS,
    Linear,
    LineError,
    Problem,
    Statement,
    SymbolTable,
    Token,
    UnresolvedError,
    directive_size,
    fits,
    names,
)

__all__ = ["MNEMONIC_ALIASES", "Placed", "Verified", "check_rules", "verify"]

# Source spelling -> capstone spelling, applied word by word to both sides (prefixes included).
MNEMONIC_ALIASES = {
    "jz": "je", "jnz": "jne", "jc": "jb", "jnae": "jb", "jnb": "jae", "jnc": "jae", "jna": "jbe",
    "jnbe": "ja", "jnge": "jl", "jnl": "jge", "jng": "jle", "jnle": "jg", "jpe": "jp", "jpo": "jnp",
    "setz": "sete", "setnz": "setne", "cmovz": "cmove", "cmovnz": "cmovne", "sal": "shl",
    "movabs": "mov", "repe": "rep", "repz": "rep", "repnz": "repne",
}  # fmt: skip
# Mnemonics whose name already says "the other operand size", so a 0x66 prefix is expected.
_STRING_OPS = ("movs", "stos", "lods", "cmps", "scas", "ins", "outs")
_O16_NAMES = frozenset(["iret", "pushf", "popf", "pusha", "popa", "cbw", "cwd"]) | frozenset(
    f"{op}w" for op in _STRING_OPS
)
_O32_NAMES = frozenset(["iretd", "pushfd", "popfd", "pushad", "popad", "cwde", "cdq"]) | frozenset(
    f"{op}d" for op in _STRING_OPS
)
_FAR_16_32 = frozenset(["ljmp", "ljmpl", "ljmpw", "lcall", "lcalll", "lcallw"])
_DESCRIPTOR_LOADS = frozenset(["lgdt", "lidt"])
_O32_PREFIX: tuple[tuple[Token, ...], ...] = ((("num", "0x66"),),)


@dataclass(frozen=True)
class Placed:
    """A statement at its place in the blob; ``insn`` is set for instructions."""

    statement: Statement
    offset: int
    size: int
    mode: Mode
    insn: Instruction | None = None


@dataclass(frozen=True)
class Verified:
    """The result of the walk: label addresses, placements, instructions checked."""

    labels: dict[str, int]
    placed: tuple[Placed, ...]
    instructions: int
    constants: dict[str, int] = field(default_factory=dict)


def _rule(stmt: Statement, mode: Mode, previous: Statement | None) -> str | None:
    """The house rule ``stmt`` breaks in ``mode``, if any."""
    if mode != Mode.BITS64 and stmt.name in _FAR_16_32:
        return f"{stmt.name} in {int(mode)}-bit code: keystone truncates far jumps; hand-encode it"
    if mode == Mode.BITS32 and stmt.name in _DESCRIPTOR_LOADS:
        return f"{stmt.name} in 32-bit code: keystone adds 0x66 (24-bit base); hand-encode it"
    o32 = previous is not None and previous.kind == "data" and previous.items == _O32_PREFIX
    if mode == Mode.BITS16 and stmt.name in _DESCRIPTOR_LOADS and not o32:
        return f"{stmt.name} in 16-bit code must directly follow `.byte 0x66` (32-bit base)"
    for op in stmt.operands:
        if mode == Mode.BITS64 and op.kind == "mem" and not set(_names_of(op.tokens)) & REGISTERS:
            return (
                f"absolute memory operand {op.text!r} in 64-bit code: keystone makes it"
                " RIP-relative; use [rip + label] or a register base"
            )
    return None


def _names_of(tokens: tuple[Token, ...]) -> list[str]:
    """Lower-cased name tokens."""
    return [text.lower() for kind, text in tokens if kind == "name"]


def _check_constants(stmt: Statement, symbols: SymbolTable) -> str | None:
    """Check values that need no label: keystone drops an out-of-range ``.word`` silently."""
    for tokens in stmt.items:
        try:
            value = symbols.value(tokens)
        except UnresolvedError:
            continue
        except LineError as exc:
            return str(exc)
        if stmt.kind == "data" and not fits(value.const, 8 * stmt.width):
            return f"{value.const:#x} does not fit {stmt.name}"
    return None


def check_rules(statements: list[Statement], problems: list[Problem]) -> None:
    """Check names and the mode-dependent house rules over the concatenated source.

    Args:
        statements: Every source file's statements, in build order.
        problems: Receives one :class:`Problem` per offending statement.
    """
    defined: dict[str, Statement] = {}
    for stmt in statements:
        if stmt.kind not in ("label", "equ"):
            continue
        if stmt.name.lower() in REGISTERS | KEYWORDS:
            problems.append(Problem(stmt.location, f"{stmt.name!r} is reserved", stmt.text))
        elif stmt.name in defined:
            first = defined[stmt.name].location
            problems.append(
                Problem(stmt.location, f"{stmt.name!r} already defined at {first}", stmt.text)
            )
        defined.setdefault(stmt.name, stmt)
    symbols = SymbolTable(statements)
    mode, previous = Mode.BITS64, None
    for stmt in statements:
        mode = stmt.mode if stmt.kind == "mode" else mode
        used = set(names(stmt))
        unknown = sorted(
            n for n in used - set(defined) - {"."} if n.lower() not in REGISTERS | KEYWORDS
        )
        message = (
            f"unknown symbol(s) {', '.join(unknown)}" if unknown else _rule(stmt, mode, previous)
        )
        if message is None and stmt.kind == "equ" and "." in used:
            message = "'.' in an .equ expression"
        if message is None and stmt.kind in ("data", "equ"):
            message = _check_constants(stmt, symbols)
        if message is not None:
            problems.append(Problem(stmt.location, message, stmt.text))
        previous = stmt


def _normalise(words: list[str]) -> str:
    return " ".join(MNEMONIC_ALIASES.get(w, w) for w in words if w != "rex64")


def _decoded_mnemonic(insn: Instruction) -> str:
    words = insn.mnemonic.split()
    if words[-1] in ("jmp", "call") and insn.op_str.startswith("ptr "):
        words[-1] = "l" + words[-1]  # capstone prints far indirect jmp/call as "jmp ptr [..]"
    return _normalise(words)


def _prefix_explained(stmt: Statement, mode: Mode) -> bool:
    """Whether the source asks for the other operand size, which a 0x66 prefix selects."""
    regs, size, spelled = (GP32, 4, _O32_NAMES) if mode == Mode.BITS16 else (GP16, 2, _O16_NAMES)
    words = {text.lower() for op in stmt.operands for _, text in op.tokens}
    vector = any(w.startswith(("xmm", "ymm")) for w in words)  # mandatory SSE prefix
    return (
        bool(words & regs)
        or vector
        or stmt.name in spelled
        or any(op.size == size for op in stmt.operands)
    )


def _check_memory(src: Linear, mem: MemoryOperand, text: str) -> str | None:
    regs = dict(src.regs)
    if "rip" in regs:
        if regs != {"rip": 1} or src.reloc not in (0, 1):
            return f"{text}: RIP-relative operands are [rip + label + constant] or [rip + constant]"
        if not mem.rip_relative:
            return f"{text}: expected a RIP-relative operand"
        if src.reloc == 1 and mem.target != src.const % (1 << 64):
            return f"{text}: RIP-relative target is {mem.target:#x}, expected {src.const:#x}"
        if src.reloc == 0 and mem.disp != src.const:
            return f"{text}: displacement is {mem.disp:#x}, expected {src.const:#x}"
        return None
    if mem.rip_relative:
        return f"{text}: encoded RIP-relative (keystone's absolute-operand trap)"
    decoded: dict[str, int] = {}
    for reg, coeff in ((mem.base, 1), (mem.index, mem.scale)):
        if reg is not None:
            decoded[reg] = decoded.get(reg, 0) + coeff
    if decoded != regs:
        shown = " + ".join(f"{r}*{c}" for r, c in decoded.items()) or "none"
        return f"{text}: registers decode as {shown}"
    bits = mem.address_size
    if not fits(src.const, bits) or (mem.disp - src.const) % (1 << bits):
        return f"{text}: displacement is {mem.disp:#x}, expected {src.const:#x}"
    return None


def _check_values(stmt: Statement, detail: InstructionDetail, values: list[Linear]) -> list[str]:
    texts = [op.text for op in stmt.operands if op.kind == "value"]
    if detail.branch_target is not None:
        if len(values) != 1 or values[0].const % (1 << 64) != detail.branch_target:
            return [f"branch target is {detail.branch_target:#x}, expected {', '.join(texts)}"]
        return []
    if len(values) != len(detail.immediates):
        return [f"{len(detail.immediates)} immediate(s) decoded for {len(values)} in the source"]
    return [
        f"{_shown(text, value)} encoded as {imm.unsigned:#x} ({8 * imm.size}-bit)"
        for text, value, imm in zip(texts, values, detail.immediates, strict=True)
        if not fits(value.const, 8 * imm.size)
        or value.const % (1 << (8 * imm.size)) != imm.unsigned
    ]


def _shown(text: str, value: Linear) -> str:
    """Source text of an operand, with its value when the text is not just that number."""
    number = f"{value.const:#x}"
    return text if text.lower() == number else f"{text} ({number})"


def _check_insn(stmt: Statement, insn: Instruction, mode: Mode, symbols: SymbolTable) -> list[str]:
    detail = insn.detail
    if detail is None:  # disassemble_one always fills it
        return ["decoded without detail"]
    found: list[str] = []
    source, decoded = _normalise([*stmt.prefixes, stmt.name]), _decoded_mnemonic(insn)
    if source != decoded:
        found.append(f"mnemonic {source!r} decoded as {decoded!r}")
    if detail.operand_size_prefix and not _prefix_explained(stmt, mode):
        found.append(
            f"keystone added an operand-size prefix (0x66) in {int(mode)}-bit code; hand-encode it"
        )
    if not stmt.operands:
        return found
    registers = sorted(op.tokens[0][1].lower() for op in stmt.operands if op.kind == "reg")
    if registers != sorted(detail.registers):
        found.append(f"registers {registers} decoded as {sorted(detail.registers)}")
    memory = [op for op in stmt.operands if op.kind == "mem"]
    if len(memory) != len(detail.memory):
        found.append(
            f"{len(detail.memory)} memory operand(s) decoded for {len(memory)} in the source"
        )
    for op, mem in zip(memory, detail.memory, strict=False):
        problem = _check_memory(symbols.value(op.tokens, registers=True), mem, op.text)
        if op.size is not None and op.size != mem.size:
            problem = problem or f"{op.text}: decoded as {mem.size}-byte operand"
        if op.segment is not None and op.segment != mem.segment:
            problem = problem or f"{op.text}: segment decodes as {mem.segment}"
        found.extend([problem] if problem else [])
    values = [symbols.value(op.tokens) for op in stmt.operands if op.kind == "value"]
    return found + _check_values(stmt, detail, values)


def _check_data(place: Placed, blob: bytes, address: int, symbols: SymbolTable) -> list[str]:
    """Compare a directive's bytes with its values; an .equ is evaluated to report its errors."""
    stmt, actual = place.statement, blob[place.offset : place.offset + place.size]
    if stmt.kind in ("label", "mode", "equ"):
        for tokens in stmt.items:
            symbols.value(tokens)
        return []
    if stmt.kind == "ascii":
        return (
            [] if actual == stmt.raw else [f"keystone produced {actual!r}, expected {stmt.raw!r}"]
        )
    if stmt.kind == "align":
        pos = 0
        while pos < len(actual):
            nop = disassemble_one(actual[pos:], address + pos, place.mode)
            if nop is None or nop.mnemonic != "nop" or pos + nop.size > len(actual):
                return [
                    f"keystone's padding {actual.hex(' ')} is not NOPs in "
                    f"{int(place.mode)}-bit code; align in 32/64-bit code or pad with .byte"
                ]
            pos += nop.size
        return []
    expected = bytearray()
    for i, tokens in enumerate(stmt.items):
        symbols.dot = address + i * stmt.width
        value = symbols.value(tokens)
        if value.regs or not fits(value.const, 8 * stmt.width):
            return [f"item {i + 1} ({value.const:#x}) does not fit {stmt.name}"]
        expected += (value.const % (1 << (8 * stmt.width))).to_bytes(stmt.width, "little")
    if actual != expected:
        return [f"keystone produced {actual.hex(' ') or 'nothing'}, expected {expected.hex(' ')}"]
    return []


def _layout(
    statements: list[Statement], blob: bytes, base: int, symbols: SymbolTable
) -> tuple[list[Placed], Problem | None]:
    placed: list[Placed] = []
    offset, mode = 0, Mode.BITS64
    for stmt in statements:
        address, insn = base + offset, None
        mode = stmt.mode if stmt.kind == "mode" else mode
        if stmt.kind == "label":
            symbols.labels[stmt.name] = address
        if stmt.kind == "insn":
            insn = disassemble_one(blob[offset : offset + 15], address, mode)
            if insn is None:
                rest = blob[offset : offset + 8].hex(" ") or "the end of the output"
                return placed, Problem(
                    stmt.location, f"{rest} does not decode in {int(mode)}-bit code", stmt.text
                )
        size = insn.size if insn is not None else directive_size(stmt, address)
        if offset + size > len(blob):
            return placed, Problem(
                stmt.location,
                f"keystone's output ends inside this statement ({len(blob)} bytes)",
                stmt.text,
            )
        placed.append(Placed(stmt, offset, size, mode, insn))
        offset += size
    if offset != len(blob):
        return placed, Problem(
            None, f"the source accounts for {offset} bytes but keystone produced {len(blob)}"
        )
    return placed, None


def verify(
    statements: list[Statement], blob: bytes, base: int, problems: list[Problem]
) -> Verified:
    """Place and check every statement; failures are appended to ``problems``.

    Args:
        statements: The concatenated, rule-checked source.
        blob: Keystone's output for it.
        base: The linear load address the source was assembled at.
        problems: Receives one :class:`Problem` per failing statement.

    Returns:
        Labels, placements and the number of instructions checked.
    """
    symbols = SymbolTable(statements)
    placed, layout_problem = _layout(statements, blob, base, symbols)
    symbols.complete = layout_problem is None
    count = 0
    for place in placed:
        stmt, address = place.statement, base + place.offset
        symbols.dot = address
        try:
            if place.insn is not None:
                count += 1
                found = _check_insn(stmt, place.insn, place.mode, symbols)
            else:
                found = _check_data(place, blob, address, symbols)
        except LineError as exc:
            found = [str(exc)]
        except UnresolvedError:  # a label the layout never reached; the layout problem explains it
            found = []
        if found and place.insn is not None:
            details = (f"bytes:    {place.insn.bytes.hex(' ')}", f"capstone: {place.insn.text}")
            problems.append(Problem(stmt.location, "; ".join(found), stmt.text, details))
        elif found:
            problems.append(Problem(stmt.location, "; ".join(found), stmt.text))
    if layout_problem is not None:
        problems.append(layout_problem)
    constants = symbols.constants() if layout_problem is None else {}
    return Verified(dict(symbols.labels), tuple(placed), count, constants)
