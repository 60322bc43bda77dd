"""``smmemu swsmi``: one software SMI with chosen registers, as CHIPSEC raises it.

Shows the save state the MM core saw at SMI entry and the registers after
RSM; a register marked ``*`` changed across the SMI: it differs from the value
asked for with ``--reg`` (or, for RAX, from the value the OUT used), or for a
register not asked for, from its value in the save state.
"""

from __future__ import annotations

import argparse
from typing import Any

from smmemu.cli import Subparsers, machine_spec, number, register_value
from smmemu.cli.drivers import capture
from smmemu.cli.render import guest_problems, print_json, print_lines, register_grid, smi_summary
from smmemu.results import SmiResult

__all__ = ["register", "run"]

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CONTROL = ("rip", "rflags", "cr0", "cr3", "cr4", "efer")
SMM = ("smbase", "smm_revision")
SELECTORS = ("cs", "ds", "es", "fs", "gs", "ss", "ldtr", "tr")


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``swsmi``."""
    parser = subparsers.add_parser(
        "swsmi", help="raise one software SMI and show the save state and registers",
        description="Raise a software SMI with OUT 0xB2, AX (AL = command, AH = data) from "
                    "non-SMM code with the chosen registers. Exits 1 unless the SMI returns "
                    "through RSM.")
    parser.add_argument("--command", type=number, required=True, metavar="BYTE",
                        help="APM_CNT value (AL)")
    parser.add_argument("--data", type=number, default=0, metavar="BYTE",
                        help="APM_STS value (AH), default 0")
    parser.add_argument("--reg", type=register_value, action="append", default=[],
                        metavar="NAME=VALUE", help="a GPR value at the OUT (repeatable)")
    parser.add_argument("--all", action="store_true",
                        help="also show every other save-state field")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Raise the SMI and print what the MM core saw; 1 unless it returned through RSM."""
    regs = dict(args.reg)
    with machine_spec(args).build() as machine:
        result = machine.software_smi(args.command, args.data, regs=regs)
        loaded = capture(args, machine)
    asked = {**regs, "rax": (regs.get("rax", 0) & ~0xFFFF) | (args.data << 8) | args.command}
    baseline = {name: result.save_state[name] for name in GPRS if name in result.save_state}
    baseline.update(asked)
    changed = {name: (baseline[name], value) for name, value in result.registers.items()
               if result.ok and name in baseline and baseline[name] != value}
    if args.json:
        document = _json(args, asked, changed, result)
        print_json(loaded.add_to(document) if loaded else document)
    else:
        lines = _text(result, changed, show_all=args.all)
        print_lines(loaded.prefix(lines) if loaded else lines)
    return 0 if result.ok else 1


def _text(result: SmiResult, changed: dict[str, tuple[int, int]], *,
          show_all: bool) -> list[str]:
    lines = [f"stop: {result.stop.value} ({smi_summary(result)})"]
    if len(result.cpu_smis) > 1:
        lines.append(f"{len(result.cpu_smis)} CPUs:")
        for cpu, smis in sorted(result.cpu_smis.items()):
            entered = ", ".join(f"SMBASE {smi.smbase:#x} {'RSM' if smi.rsm else 'no RSM'}"
                                for smi in smis) or "no SMI"
            role = " (BSP)" if cpu == 0 else ""
            lines.append(f"  CPU {cpu}{role}: {len(smis)} SMI: {entered}")
    state = result.save_state
    if state:
        lines.append("save state at SMI entry:")
        lines.extend(register_grid(state, GPRS + CONTROL))
        lines.extend(register_grid(state, SMM, digits=8))
        lines.extend(register_grid(state, SELECTORS, columns=4, digits=4))
        if show_all:
            shown = set(GPRS + CONTROL + SMM + SELECTORS)
            lines.append("other save-state fields:")
            lines.extend(register_grid(state, sorted(set(state) - shown), columns=2))
    else:
        lines.append("no SMI was taken")
    if not result.ok:
        lines.append(f"registers when the run stopped ({result.stop.value}, no RSM):")
        lines.extend(register_grid(result.registers, GPRS + CONTROL))
        lines.extend(guest_problems(result))
        return lines
    lines.append("registers after RSM (* changed):")
    lines.extend(register_grid(result.registers, GPRS + CONTROL, marked=changed))
    if changed:
        lines.append("changed: " + ", ".join(f"{name} {before:#x} -> {after:#x}"
                                             for name, (before, after) in changed.items()))
    else:
        lines.append("no general-purpose register changed")
    lines.extend(guest_problems(result))
    return lines


def _json(args: argparse.Namespace, asked: dict[str, int], changed: dict[str, tuple[int, int]],
          result: SmiResult) -> dict[str, Any]:
    return {
        "command": f"{args.command:#x}", "data": f"{args.data:#x}",
        "regs": {name: f"{value:#x}" for name, value in asked.items()},
        "changed": {name: {"before": f"{before:#x}", "after": f"{after:#x}"}
                    for name, (before, after) in changed.items()},
        "ok": result.ok, "smi_result": result.to_json(),
    }
