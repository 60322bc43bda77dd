"""Driver options of every command (--load, --load-standalone, --firmware, --stub); the report.

A bare ``.efi`` file does not say which entry-point convention it expects (edk2 gives
MM_STANDALONE and DXE_SMM_DRIVER modules the same PE subsystem, 0x0B), so the two kinds
of driver have their own options. Firmware volumes carry the FFS file type, which decides.

The report lists what the user asked for and what became of it: every image with its
entry status, every firmware driver with its state, the MMI handlers they registered
(GUID → image+offset), the protocols nobody installed that a driver asked for (with the
caller), and the findings the services recorded.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smmemu.errors import SmmemuError
from smmemu.machine import Machine
from smmemu.services.stubs import StubProtocol, parse_stub
from smmemu.uefi.guids import WELL_KNOWN
from smmemu.uefi.status import status_name

__all__ = ["LoadReport", "add_options", "capture", "report_json", "report_lines",
           "wants_report"]


def _traditional(text: str) -> tuple[Path, bool]:
    return Path(text), False


def _standalone(text: str) -> tuple[Path, bool]:
    return Path(text), True


def _stub(text: str) -> StubProtocol:
    try:
        return parse_stub(text)
    except SmmemuError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _pcd(text: str) -> tuple[int, int | str]:
    token, sep, value = text.partition("=")
    try:
        number = int(token, 0)
    except ValueError:
        number = -1
    if not sep or number < 0:
        raise argparse.ArgumentTypeError(f"expected TOKEN=VALUE with a token number: {text!r}")
    try:
        return number, int(value, 0)
    except ValueError:
        if value.isidentifier():
            return number, value
        raise argparse.ArgumentTypeError(f"PCD value {value!r} is neither a number nor a "
                                         "platform object name") from None


def add_options(group: argparse._ArgumentGroup, default: Callable[[object], object]) -> None:
    """Add the driver options to a global-options ``group``; ``default`` wraps each default.

    ``--load`` and ``--load-standalone`` share one list, so drivers load in the order given.
    """
    group.add_argument("--load", type=_traditional, action="append", dest="drivers",
                       metavar="FILE", default=default(None),
                       help="load a traditional DXE_SMM_DRIVER (PE32+) into SMRAM and run its "
                            "entry point; repeatable")
    group.add_argument("--load-standalone", type=_standalone, action="append", dest="drivers",
                       metavar="FILE", default=default(None),
                       help="load an MM_STANDALONE driver; repeatable")
    group.add_argument("--firmware", type=Path, metavar="FILE.fd", default=default(None),
                       help="dispatch every SMM/MM driver of a firmware volume or flash image")
    group.add_argument("--mode", choices=("standalone", "traditional"), default=default(None),
                       help="MM core behaviour: standalone (requests on an SMRAM copy; default "
                            "without --firmware) or traditional (edk2 PiSmmCore: in place, DRAM "
                            "mapped; default with --firmware)")
    group.add_argument("--varstore", type=Path, metavar="FILE.fd", default=default(None),
                       help="variable store flash (OVMF_VARS) below the --firmware code flash; "
                            "the file itself is never written")
    group.add_argument("--pcd", type=_pcd, action="append", dest="pcds",
                       metavar="TOKEN=VALUE", default=default(None),
                       help="value of a dynamic PCD token (numbers, or CpuHotPlugData / "
                            "CpuHotEjectData for those structures' addresses); repeatable")
    group.add_argument("--possible-cpus", type=int, metavar="N", default=default(None),
                       help="CPU slots of the platform (default --cpus), for CPU hot-plug")
    group.add_argument("--stub", type=_stub, action="append", dest="stubs",
                       metavar="GUID[:COUNT[:STATUS]]", default=default(None),
                       help="install a protocol of COUNT functions (default 16) that return "
                            "STATUS (default EFI_UNSUPPORTED) and report each call; repeatable")


def wants_report(args: argparse.Namespace) -> bool:
    """Whether the user asked for drivers, so the output includes the load report."""
    return any(getattr(args, name, None)
               for name in ("firmware", "drivers", "stubs", "pcds", "varstore"))


def _where(machine: Machine, address: int) -> str:
    name = machine.symbolize(address)
    return f"{name} ({address:#x})" if name else f"{address:#x}"


def report_json(machine: Machine) -> dict[str, Any]:
    """The load report as a JSON-ready document."""
    firmware = machine.firmware_report
    return {
        "mode": machine.mode, "requests_in_place": machine.in_place,
        "images": [{
            "name": image.name, "base": f"{image.base:#x}", "size": f"{image.size:#x}",
            "entry": f"{image.entry:#x}", "standalone": image.standalone,
            "entry_status": None if image.status is None else f"{image.status:#x}",
            "entry_status_name": None if image.status is None else status_name(image.status),
            "error": image.error,
            "pdb": None if image.pe.debug is None else image.pe.debug.path,
            "exports": {name: f"{rva:#x}" for name, rva in sorted(image.pe.exports.items())},
        } for image in machine.images],
        "pcd_reads": [{
            "token": read.token, "kind": read.kind, "value": f"{read.value:#x}",
            "overridden": read.overridden, "caller": machine.symbolize(read.caller),
        } for read in machine.pcd.reads],
        "firmware": None if firmware is None else [{
            "name": entry.name, "guid": str(entry.guid), "ffs_type": f"{entry.ffs_type:#04x}",
            "state": entry.state, "reason": entry.reason or None,
            "entry_status": None if entry.status is None else f"{entry.status:#x}",
        } for entry in firmware.entries],
        "handlers": [{
            "guid": None if guid is None else str(guid),
            "name": "root handler" if guid is None else WELL_KNOWN.get(guid),
            "address": f"{address:#x}", "symbol": machine.symbolize(address),
        } for guid, address in machine.handler_table()],
        "unresolved": [{
            "service": request.service, "guid": str(request.guid),
            "caller": f"{request.caller:#x}", "caller_symbol": machine.symbolize(request.caller),
        } for request in machine.services.unresolved],
        "stubs": [{
            "guid": str(stub.guid), "name": stub.label, "functions": stub.count,
            "status": f"{stub.status:#x}", "environment": stub.environment,
        } for stub in machine.stubs],
        "findings": [{
            "kind": finding.kind, "message": finding.message,
            "address": None if finding.address is None else f"{finding.address:#x}",
        } for finding in machine.services.findings],
    }


def report_lines(machine: Machine) -> list[str]:
    """The load report as text."""
    lines: list[str] = [f"MM core mode: {machine.mode}"]
    firmware = machine.firmware_report
    if firmware is not None:
        lines.append("firmware drivers:")
        for entry in firmware.entries:
            status = "" if entry.status is None else f" {status_name(entry.status)}"
            reason = f": {entry.reason}" if entry.reason else ""
            lines.append(f"  {entry.name:<26} {entry.state}{status}{reason}")
    lines.append("images:")
    if not machine.images:
        lines.append("  (none)")
    for image in machine.images:
        kind = "standalone" if image.standalone else "traditional"
        outcome = (status_name(image.status) if image.status is not None
                   else f"no return: {image.error}")
        lines.append(f"  {image.name:<26} {image.base:#010x}+{image.size:#x} {kind:<11} "
                     f"entry {outcome}")
        if image.pe.debug is not None:
            lines.append(f"  {'':<26} symbols: {image.pe.debug.path}")
    lines.append("MMI handlers:")
    for guid, address in machine.handler_table():
        label = "root" if guid is None else str(guid)
        known = None if guid is None else WELL_KNOWN.get(guid)
        suffix = f" ({known})" if known else ""
        lines.append(f"  {label:<36} -> {_where(machine, address)}{suffix}")
    reads = machine.pcd.reads
    lines.append("PCD reads:" + ("" if reads else " none"))
    for read in reads:
        source = "set" if read.overridden else "default"
        lines.append(f"  token {read.token:<4} Get{read.kind:<5} = {read.value:#x} ({source}) "
                     f"from {_where(machine, read.caller)}")
    unresolved = machine.services.unresolved
    lines.append("unresolved protocol requests:" + ("" if unresolved else " none"))
    for request in unresolved:
        known = WELL_KNOWN.get(request.guid)
        suffix = f" ({known})" if known else ""
        lines.append(f"  {request.service} {request.guid}{suffix} from "
                     f"{_where(machine, request.caller)}")
    findings = machine.services.findings
    lines.append("findings:" + ("" if findings else " none"))
    lines.extend(f"  {finding.kind}: {finding.message}" for finding in findings)
    return lines


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The load report taken while the Machine is open, for printing after it closes."""

    document: dict[str, Any]
    lines: list[str]

    def add_to(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` with the report under ``"drivers"``."""
        return {**document, "drivers": self.document}

    def prefix(self, lines: list[str]) -> list[str]:
        """The report's lines, a blank line, then ``lines``."""
        return [*self.lines, "", *lines]


def capture(args: argparse.Namespace, machine: Machine) -> LoadReport | None:
    """The load report when the user asked for drivers, else None."""
    if not wants_report(args):
        return None
    return LoadReport(report_json(machine), report_lines(machine))
