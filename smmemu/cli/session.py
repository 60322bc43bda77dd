"""``smmemu session``: replay a scripted session file and report each step.

The file format is described in :mod:`smmemu.session`. Global options given
on the command line override the file's ``[machine]`` table.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from smmemu.cli import Subparsers, machine_spec
from smmemu.cli.render import print_json, print_lines
from smmemu.machine import Machine
from smmemu.session import MachineSpec, SessionReport, load_session, replay

__all__ = ["register", "run"]

_WRAP = 64
"""Hex digits per line when a mismatch shows bytes."""


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``session``."""
    parser = subparsers.add_parser(
        "session", help="replay a scripted session (TOML) and check its expectations",
        description="Replay the steps of a session file on one machine and compare each "
                    "outcome with the step's expectations. Exits 1 on any mismatch.")
    parser.add_argument("file", type=Path, metavar="FILE.toml", help="the session file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Replay the session; 1 when a step fails."""
    session = load_session(args.file)

    def build(spec: MachineSpec) -> Machine:
        return machine_spec(args, spec).build()

    report = replay(session, machine_factory=build)
    if args.json:
        print_json(report.to_json())
    else:
        print_lines(_text(report))
    return 0 if report.passed else 1


def _text(report: SessionReport) -> list[str]:
    where = f" ({report.path})" if report.path else ""
    lines = [f"session {report.name}{where}, profile {report.profile}"]
    for step in report.steps:
        lines.append(f"{'PASS' if step.passed else 'FAIL'} {step.name}")
        for mismatch in step.mismatches:
            detail = f" ({mismatch.detail})" if mismatch.detail else ""
            lines.append(f"  {mismatch.field}{detail}")
            lines.extend(_value("expected", mismatch.expected))
            lines.extend(_value("actual", mismatch.actual))
    failed = len(report.failed)
    lines.append(f"{len(report.steps)} steps: {len(report.steps) - failed} passed, "
                 f"{failed} failed")
    return lines


def _value(label: str, text: str) -> list[str]:
    head = f"    {label + ':':<10}"
    chunks = textwrap.wrap(text, _WRAP) if len(text) > _WRAP and " " not in text else [text]
    return [head + chunks[0], *(" " * len(head) + chunk for chunk in chunks[1:])]
