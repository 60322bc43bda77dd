"""The instruction at the PC, as the stepping commands need it.

``nexti`` steps over calls, ``finish`` watches for the return that leaves the
frame, ``until`` steps over calls and backward jumps, and I/O and MSR
breakpoints look at the port or MSR an instruction is about to access. All of
them decode the next instruction in the CPU's current mode with
:mod:`smmemu.disasm`.
"""

from __future__ import annotations

from dataclasses import dataclass

from smmemu.debug.errors import DebugError
from smmemu.debug.target import Target
from smmemu.disasm import Instruction, disassemble_one

__all__ = ["NextInstruction", "next_instruction"]

_MAX_INSTRUCTION = 15
_IN = frozenset({"in", "insb", "insw", "insd"})
_OUT = frozenset({"out", "outsb", "outsw", "outsd"})
_RETURNS = frozenset({"ret", "retf", "retfq", "iret", "iretd", "iretq"})


@dataclass(frozen=True, slots=True)
class NextInstruction:
    """The instruction about to execute (None when its bytes do not decode)."""

    address: int
    instruction: Instruction | None

    @property
    def _mnemonic(self) -> str:
        insn = self.instruction
        return "" if insn is None else insn.mnemonic.split()[-1]

    @property
    def is_call(self) -> bool:
        """A call of any form (``nexti`` steps over it)."""
        return self._mnemonic.startswith("call")

    @property
    def is_return(self) -> bool:
        """A near or far return, or an interrupt return."""
        return self._mnemonic in _RETURNS

    @property
    def is_rsm(self) -> bool:
        """RSM: the CPU leaves SMM."""
        return self._mnemonic == "rsm"

    @property
    def next_address(self) -> int:
        """The linear address after the instruction."""
        insn = self.instruction
        return self.address + (1 if insn is None else insn.size)

    def io_access(self, target: Target) -> tuple[int, bool] | None:
        """(port, is_write) of an IN/OUT/INS/OUTS, else None."""
        name = self._mnemonic
        insn = self.instruction
        if insn is None or (name not in _IN and name not in _OUT):
            return None
        detail = insn.detail
        if detail is not None and detail.immediates:
            port = detail.immediates[0].unsigned
        else:
            port = target.register("rdx") & 0xFFFF
        return port, name in _OUT

    def msr_access(self, target: Target) -> tuple[int, bool] | None:
        """(MSR index from ECX, is_write) of an RDMSR/WRMSR, else None."""
        name = self._mnemonic
        if name not in ("rdmsr", "wrmsr"):
            return None
        return target.register("rcx") & 0xFFFF_FFFF, name == "wrmsr"


def next_instruction(target: Target) -> NextInstruction:
    """Decode the instruction at the PC in the current mode."""
    pc = target.pc()
    code = b""
    for size in (_MAX_INSTRUCTION, 0x1000 - (pc & 0xFFF)):
        try:
            code = target.read(pc, min(size, _MAX_INSTRUCTION))
            break
        except DebugError:
            continue
    return NextInstruction(pc, disassemble_one(code, pc, target.mode().code_size)
                           if code else None)
