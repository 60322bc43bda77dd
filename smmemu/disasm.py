"""A small typed x86 disassembler API over capstone; the only module that imports capstone.

Why it exists: three parts of smmemu read machine code back. The MM core build checks every
instruction keystone produced, because keystone 0.9.2 silently mis-encodes some forms
(``docs/decisions/0003-keystone-with-capstone-verification.md``); fault reports and the debugger
show listings around an address. They all need the same few facts (mnemonic, immediates, memory
operand parts, RIP-relative targets, branch targets) in typed form, not capstone's untyped objects,
and the rest of the code base should not depend on capstone's API (ruff's banned-api rule).

Addresses are linear. In 16-bit code the caller passes the linear address (CS base + IP), so branch
targets come back as linear addresses as well. Capstone's detail mode roughly doubles the decoding
cost, so it is only switched on for :func:`disassemble_one` and on request.
"""

from __future__ import annotations

import builtins
import enum
import functools
from dataclasses import dataclass

import capstone
from capstone import x86_const

__all__ = [
    "Immediate",
    "Instruction",
    "InstructionDetail",
    "MemoryOperand",
    "Mode",
    "disassemble",
    "disassemble_one",
    "format_line",
    "format_listing",
]

_MAX_INSTRUCTION = 15
_BYTES_COLUMN = 10  # instructions up to this many bytes keep the text column aligned
_OPSIZE_PREFIX = 0x66
_ADDRSIZE_PREFIX = 0x67


class Mode(enum.IntEnum):
    """The code size the bytes are decoded in; the value is the default operand width in bits."""

    BITS16 = 16
    BITS32 = 32
    BITS64 = 64


_CS_MODES = {
    Mode.BITS16: capstone.CS_MODE_16,
    Mode.BITS32: capstone.CS_MODE_32,
    Mode.BITS64: capstone.CS_MODE_64,
}


@dataclass(frozen=True)
class Immediate:
    """An immediate operand as capstone reports it.

    Attributes:
        value: The value, signed when capstone sign-extended it (``add rax, -1`` gives -1).
        size: The operand size in bytes.
    """

    value: int
    size: int

    @property
    def unsigned(self) -> int:
        """The value truncated to ``size`` bytes."""
        return self.value % (1 << (8 * self.size))


@dataclass(frozen=True)
class MemoryOperand:
    """An explicit memory operand ``segment:[base + index*scale + disp]``.

    Attributes:
        base: Base register name, ``"rip"`` for RIP-relative operands, or None.
        index: Index register name or None.
        scale: Index scale (1 when there is no index).
        disp: Signed displacement.
        segment: Explicit segment override register name, or None.
        size: Operand size in bytes.
        address_size: Effective address width in bits (mode, changed by a 0x67 prefix).
        target: The effective address when it does not depend on a register: ``next_ip + disp``
            for RIP-relative operands, the displacement for absolute ones, otherwise None.
    """

    base: str | None
    index: str | None
    scale: int
    disp: int
    segment: str | None
    size: int
    address_size: int
    target: int | None

    @property
    def rip_relative(self) -> bool:
        """Whether the operand is addressed relative to the next instruction."""
        return self.base == "rip"


@dataclass(frozen=True)
class InstructionDetail:
    """Operand facts from capstone's detail mode.

    Attributes:
        registers: Explicit register operands, in operand order.
        immediates: Immediate operands, in operand order (not branch targets).
        memory: Explicit memory operands, in operand order.
        branch_target: Absolute target of a relative jmp/call/jcc/loop, else None.
        prefixes: The legacy prefix bytes present (0xF0/0xF2/0xF3, segment, 0x66, 0x67).
        groups: Capstone group names (``"jump"``, ``"call"``, ``"ret"``, ``"privilege"`` ...).
    """

    registers: tuple[str, ...]
    immediates: tuple[Immediate, ...]
    memory: tuple[MemoryOperand, ...]
    branch_target: int | None
    prefixes: tuple[int, ...]
    groups: tuple[str, ...]

    @property
    def rip_relative(self) -> bool:
        """Whether any memory operand is RIP-relative."""
        return any(m.rip_relative for m in self.memory)

    @property
    def operand_size_prefix(self) -> bool:
        """Whether the instruction carries a 0x66 operand-size prefix."""
        return _OPSIZE_PREFIX in self.prefixes


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction.

    Attributes:
        address: Linear address of the first byte.
        size: Length in bytes.
        mnemonic: Capstone mnemonic, including printed prefixes (``"rep stosd"``).
        op_str: Operand text in Intel syntax.
        bytes: The instruction bytes.
        detail: Operand facts, or None when decoded without detail mode.
    """

    address: int
    size: int
    mnemonic: str
    op_str: str
    bytes: builtins.bytes
    detail: InstructionDetail | None = None

    @property
    def next_address(self) -> int:
        """Address of the byte after this instruction."""
        return self.address + self.size

    @property
    def text(self) -> str:
        """``mnemonic op_str`` as one string."""
        return f"{self.mnemonic} {self.op_str}".rstrip()


@functools.cache
def _engine(mode: Mode, detail: bool) -> capstone.Cs:
    engine = capstone.Cs(capstone.CS_ARCH_X86, _CS_MODES[mode])
    engine.detail = detail
    return engine


def _register(insn: capstone.CsInsn, reg: int) -> str | None:
    if reg == x86_const.X86_REG_INVALID:
        return None
    return str(insn.reg_name(reg))


def _detail(insn: capstone.CsInsn, mode: Mode) -> InstructionDetail:
    prefixes = tuple(int(p) for p in insn.prefix if p)
    address_size = int(mode)
    if _ADDRSIZE_PREFIX in prefixes:
        address_size = {16: 32, 32: 16, 64: 32}[address_size]
    groups = tuple(str(insn.group_name(g)) for g in insn.groups)
    relative = capstone.CS_GRP_BRANCH_RELATIVE in insn.groups
    next_ip = int(insn.address) + int(insn.size)
    registers: list[str] = []
    immediates: list[Immediate] = []
    memory: list[MemoryOperand] = []
    branch_target: int | None = None
    for op in insn.operands:
        if op.type == x86_const.X86_OP_REG:
            registers.append(str(insn.reg_name(op.reg)))
        elif op.type == x86_const.X86_OP_IMM and relative:
            branch_target = int(op.imm)
        elif op.type == x86_const.X86_OP_IMM:
            immediates.append(Immediate(int(op.imm), int(op.size)))
        elif op.type == x86_const.X86_OP_MEM:
            base = _register(insn, op.mem.base)
            index = _register(insn, op.mem.index)
            disp = int(op.mem.disp)
            target: int | None = None
            if base == "rip":
                target = (next_ip + disp) % (1 << 64)
            elif base is None and index is None:
                target = disp % (1 << address_size)
            memory.append(
                MemoryOperand(
                    base=base,
                    index=index,
                    scale=int(op.mem.scale),
                    disp=disp,
                    segment=_register(insn, op.mem.segment),
                    size=int(op.size),
                    address_size=address_size,
                    target=target,
                )
            )
    return InstructionDetail(
        registers=tuple(registers),
        immediates=tuple(immediates),
        memory=tuple(memory),
        branch_target=branch_target,
        prefixes=prefixes,
        groups=groups,
    )


def _convert(insn: capstone.CsInsn, mode: Mode, detail: bool) -> Instruction:
    return Instruction(
        address=int(insn.address),
        size=int(insn.size),
        mnemonic=str(insn.mnemonic),
        op_str=str(insn.op_str),
        bytes=builtins.bytes(insn.bytes),
        detail=_detail(insn, mode) if detail else None,
    )


def disassemble_one(code: bytes, address: int, mode: Mode) -> Instruction | None:
    """Decode the instruction at the start of ``code``, with operand detail.

    Args:
        code: Bytes starting at the instruction; extra bytes are ignored.
        address: Linear address of ``code[0]``.
        mode: Code size to decode in.

    Returns:
        The instruction, or None if the bytes do not decode (invalid or truncated).
    """
    found = next(_engine(mode, True).disasm(code[:_MAX_INSTRUCTION], address, 1), None)
    return None if found is None else _convert(found, mode, True)


def disassemble(
    code: bytes, address: int, mode: Mode, count: int | None = None, *, detail: bool = False
) -> list[Instruction]:
    """Decode consecutive instructions, stopping at the first byte that does not decode.

    Args:
        code: The bytes to decode.
        address: Linear address of ``code[0]``.
        mode: Code size to decode in.
        count: Maximum number of instructions; None decodes as far as possible.
        detail: Fill :attr:`Instruction.detail` (slower).

    Returns:
        The decoded instructions, in address order.
    """
    found = _engine(mode, detail).disasm(code, address, count or 0)
    return [_convert(insn, mode, detail) for insn in found]


def format_line(address: int, raw: bytes, text: str, *, highlight: bool = False) -> str:
    """Format one listing line: marker, address, hex bytes and text.

    Args:
        address: Linear address shown (at least eight hex digits).
        raw: Bytes shown in hex; the text column stays aligned up to ten bytes.
        text: Instruction or source text.
        highlight: Mark the line with ``=>`` (for example the faulting instruction).

    Returns:
        The line, without a trailing newline or trailing spaces.
    """
    marker = "=>" if highlight else "  "
    hexed = raw.hex(" ")
    return f"{marker} 0x{address:08x}  {hexed:<{3 * _BYTES_COLUMN - 1}}  {text}".rstrip()


def format_listing(
    code: bytes,
    address: int,
    mode: Mode,
    *,
    count: int | None = None,
    highlight: int | None = None,
) -> str:
    """Disassemble ``code`` into a listing, one instruction per line.

    A byte that does not decode is shown as ``(bad)`` and decoding resumes at the next byte, so a
    listing around a faulting address stays useful even across data.

    Args:
        code: The bytes to list.
        address: Linear address of ``code[0]``.
        mode: Code size to decode in.
        count: Maximum number of lines; None lists all of ``code``.
        highlight: Address of the line to mark with ``=>``.

    Returns:
        The listing, lines joined with newlines, with a trailing newline unless empty.
    """
    lines: list[str] = []
    offset = 0
    while offset < len(code) and (count is None or len(lines) < count):
        here = address + offset
        window = code[offset : offset + _MAX_INSTRUCTION]
        insn = next(_engine(mode, False).disasm(window, here, 1), None)
        size = 1 if insn is None else int(insn.size)
        text = "(bad)" if insn is None else f"{insn.mnemonic} {insn.op_str}"
        lines.append(format_line(here, window[:size], text, highlight=here == highlight))
        offset += size
    return "".join(f"{line}\n" for line in lines)


def find_mnemonics(code: bytes, address: int, mode: Mode, mnemonics: frozenset[str]) -> list[int]:
    """Addresses of instructions named in ``mnemonics``, by a linear sweep.

    Undecodable bytes are skipped one at a time, so data between functions
    only delays re-synchronisation. Used to find ``rdmsr``/``wrmsr`` in code
    the host loads (the CPU cannot hook them, unicorn_probe.md row 8).
    """
    engine = _engine(mode, False)
    found: list[int] = []
    offset = 0
    while offset < len(code):
        progressed = False
        for insn_address, size, mnemonic, _ in engine.disasm_lite(code[offset:], address + offset):
            progressed = True
            if mnemonic in mnemonics:
                found.append(insn_address)
            offset = insn_address + size - address
        if not progressed:
            offset += 1
    return found
