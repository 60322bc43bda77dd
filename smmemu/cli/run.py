"""``smmemu run``: the default session, an MM Supervisor VERSION_INFO request.

The request (``MM_SUPERVISOR_REQUEST_HEADER`` with Signature 'MSUP', Revision 1,
Request VERSION_INFO, followed by room for the 16-byte
``MM_SUPERVISOR_VERSION_INFO_BUFFER``) goes through comm buffer 0, the
supervisor buffer. The reply's Result must be 0 and the version block follows
the header at payload offset 24.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from smmemu.cli import Subparsers, machine_spec
from smmemu.cli.drivers import capture
from smmemu.cli.render import guest_problems, print_json, print_lines, smi_summary, status_text
from smmemu.results import CommResult
from smmemu.uefi.communicate import (
    MmSupervisorRequest,
    MmSupervisorRequestHeader,
    MmSupervisorVersionInfo,
    supervisor_request,
)
from smmemu.uefi.guids import MM_SUPERVISOR_REQUEST_HANDLER_GUID

__all__ = ["register", "run"]

_HEADER = MmSupervisorRequestHeader.size()
_INFO = MmSupervisorVersionInfo.size()


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``run``."""
    parser = subparsers.add_parser(
        "run", help="send MM Supervisor VERSION_INFO and print the version (the default)",
        description="Send an MM Supervisor VERSION_INFO request through comm buffer 0 and "
                    "print the version the MM core reports.")
    parser.set_defaults(handler=run)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """The VERSION_INFO reply, decoded as far as it goes."""

    result: CommResult
    supervisor_result: int | None
    version: MmSupervisorVersionInfo | None
    problem: str | None


def run(args: argparse.Namespace) -> int:
    """Send VERSION_INFO and print the version; 1 when the request fails."""
    with machine_spec(args).build() as machine:
        request = supervisor_request(MmSupervisorRequest.VERSION_INFO, bytes(_INFO))
        outcome = _decode(machine.communicate(MM_SUPERVISOR_REQUEST_HANDLER_GUID, request,
                                              buffer_id=0))
        profile = machine.profile.name
        loaded = capture(args, machine)
    if args.json:
        document = _json(outcome, profile)
        print_json(loaded.add_to(document) if loaded else document)
        return 0 if outcome.version is not None else 1
    if loaded:
        print_lines(loaded.prefix([]))
    if outcome.version is not None:
        info = outcome.version
        print(f"MM Supervisor Version: 0x{info.Version:08x}, "
              f"Patch Level: 0x{info.PatchLevel:08x}, "
              f"Max Request Level: {info.MaxSupervisorRequestLevel:#x}")
        print(f"{smi_summary(outcome.result.smi)} (profile {profile})")
    else:
        print(f"MM Supervisor VERSION_INFO failed: {outcome.problem}")
        print_lines(guest_problems(outcome.result.smi))
        print(f"{smi_summary(outcome.result.smi)} (profile {profile})")
    return 0 if outcome.version is not None else 1


def _decode(result: CommResult) -> _Outcome:
    smi = result.smi
    if not smi.ok:
        return _Outcome(result, None, None, f"the SMI ended with {smi.stop.value}")
    if result.header_error is not None:
        return _Outcome(result, None, None, f"the handler broke the header: "
                                            f"{result.header_error}")
    supervisor = None
    if len(result.data) >= _HEADER:
        supervisor = int(MmSupervisorRequestHeader.from_bytes(result.data).Result)
    if result.status != 0:
        where = "" if supervisor is None else f", Result {status_text(supervisor)}"
        return _Outcome(result, supervisor, None, f"status {status_text(result.status)}{where}")
    if supervisor is None or len(result.data) < _HEADER + _INFO:
        return _Outcome(result, supervisor, None,
                        f"the reply is {len(result.data)} bytes, expected {_HEADER + _INFO}")
    if supervisor != 0:
        return _Outcome(result, supervisor, None, f"Result {status_text(supervisor)}")
    info = MmSupervisorVersionInfo.from_bytes(result.data[_HEADER:])
    return _Outcome(result, supervisor, info, None)


def _json(outcome: _Outcome, profile: str) -> dict[str, Any]:
    info = outcome.version
    version = None if info is None else {
        "version": f"{int(info.Version):#x}", "patch_level": f"{int(info.PatchLevel):#x}",
        "max_request_level": f"{int(info.MaxSupervisorRequestLevel):#x}",
    }
    supervisor = outcome.supervisor_result
    return {
        "ok": info is not None, "problem": outcome.problem, "profile": profile,
        "version_info": version,
        "supervisor_result": None if supervisor is None else f"{supervisor:#x}",
        "comm_result": outcome.result.to_json(),
    }
