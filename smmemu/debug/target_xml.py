"""The target description the GDB stub serves: an x86-64 CPU whatever mode it is in.

gdb picks its architecture once, from ``qXfer:features:read:target.xml``, and
cannot switch when the CPU goes from the 16-bit SMI entry state to long mode, so
the description is always ``i386:x86-64``. gdb's amd64 support requires the
``org.gnu.gdb.i386.core`` feature with the general registers, RIP, EFLAGS, the
six segment selectors and the x87 registers, by those names; the
``org.gnu.gdb.i386.segments`` feature adds FS/GS bases, and a feature of our
own adds the control registers and EFER (``p $cr0``, ``info registers cr3``).
Register numbers in ``p``/``P`` packets are positions in :data:`REGISTERS`,
and a ``g`` packet is every register in that order, little-endian.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REGISTERS", "GdbRegister", "target_xml"]


@dataclass(frozen=True, slots=True)
class GdbRegister:
    """One register of the description."""

    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None

    @property
    def size(self) -> int:
        """Bytes in a ``g``/``p`` packet."""
        return self.bits // 8


_CORE = "org.gnu.gdb.i386.core"
_SEGMENTS = "org.gnu.gdb.i386.segments"
_SYSTEM = "org.smmemu.x86.system"
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_POINTERS = {"rbp": "data_ptr", "rsp": "data_ptr"}

REGISTERS: tuple[GdbRegister, ...] = (
    *(GdbRegister(name, 64, _POINTERS.get(name, "int64"), _CORE) for name in _GPRS),
    GdbRegister("rip", 64, "code_ptr", _CORE),
    GdbRegister("eflags", 32, "i386_eflags", _CORE),
    *(GdbRegister(name, 32, "int32", _CORE) for name in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(GdbRegister(f"st{index}", 80, "i387_ext", _CORE) for index in range(8)),
    *(GdbRegister(name, 32, "int", _CORE, "float")
      for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")),
    GdbRegister("fs_base", 64, "int", _SEGMENTS),
    GdbRegister("gs_base", 64, "int", _SEGMENTS),
    *(GdbRegister(name, 64, "int64", _SYSTEM, "system")
      for name in ("cr0", "cr2", "cr3", "cr4", "efer")),
)

_EFLAGS = ("CF", "", "PF", "AF", "ZF", "SF", "TF", "IF", "DF", "OF", "NT", "RF", "VM", "AC",
           "VIF", "VIP", "ID")
_EFLAG_BITS = (0, 1, 2, 4, 6, 7, 8, 9, 10, 11, 14, 16, 17, 18, 19, 20, 21)


def _eflags_type() -> str:
    fields = "".join(f'    <field name="{name}" start="{bit}" end="{bit}"/>\n'
                     for name, bit in zip(_EFLAGS, _EFLAG_BITS, strict=True))
    return f'  <flags id="i386_eflags" size="4">\n{fields}  </flags>\n'


def target_xml() -> str:
    """The whole description, one document with every feature inline."""
    parts = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n',
             '<target version="1.0">\n<architecture>i386:x86-64</architecture>\n']
    feature = None
    for number, register in enumerate(REGISTERS):
        if register.feature != feature:
            if feature is not None:
                parts.append("</feature>\n")
            feature = register.feature
            parts.append(f'<feature name="{feature}">\n')
            if feature == _CORE:
                parts.append(_eflags_type())
        group = f' group="{register.group}"' if register.group else ""
        parts.append(f'  <reg name="{register.name}" bitsize="{register.bits}" '
                     f'type="{register.type}" regnum="{number}"{group}/>\n')
    parts.append("</feature>\n</target>\n")
    return "".join(parts)
