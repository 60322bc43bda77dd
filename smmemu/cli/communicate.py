"""``smmemu communicate``: one MM communicate request with a payload of your choice."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from smmemu.cli import Subparsers, guid, hex_bytes, machine_spec, number
from smmemu.cli.drivers import capture
from smmemu.cli.render import (
    guest_problems,
    hexdump,
    print_json,
    print_lines,
    size_text,
    smi_summary,
    status_text,
)
from smmemu.dxe.communicator import TriggerOrder
from smmemu.errors import ConfigError
from smmemu.results import CommResult
from smmemu.uefi.communicate import COMM_HEADER_SIZE
from smmemu.uefi.guids import WELL_KNOWN
from smmemu.uefi.status import status_name

__all__ = ["register", "run"]


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``communicate``."""
    parser = subparsers.add_parser(
        "communicate", help="send one MM communicate request and show the reply",
        description="Send one MM communicate request (EFI_MM_COMMUNICATE_HEADER + payload) "
                    "through a comm buffer and show ReturnStatus and the reply payload. "
                    "Exits 1 when the handler faults or breaks the header.")
    parser.add_argument("--guid", required=True, type=guid, metavar="GUID",
                        help="recipient handler, xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    payload = parser.add_mutually_exclusive_group(required=True)
    payload.add_argument("--hex", type=hex_bytes, metavar="HEX", help="payload as hex digits")
    payload.add_argument("--file", type=Path, metavar="FILE", help="payload from a file")
    parser.add_argument("--buffer-id", type=number, default=0, metavar="N",
                        help="comm buffer: 0 supervisor (default), 1 user")
    parser.add_argument("--order", choices=[order.value for order in TriggerOrder],
                        default=TriggerOrder.PATINA.value,
                        help="software SMI port order (default patina)")
    parser.set_defaults(handler=run)


def _payload(args: argparse.Namespace) -> bytes:
    if args.hex is not None:
        data: bytes = args.hex
        return data
    path: Path = args.file
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read payload file {path}: {err.strerror}", field="file",
                          value=str(path)) from err


def run(args: argparse.Namespace) -> int:
    """Send the request and print the reply; 1 on a fault or a broken header."""
    guid: uuid.UUID = args.guid
    payload = _payload(args)
    with machine_spec(args, order=args.order).build() as machine:
        result = machine.communicate(guid, payload, buffer_id=args.buffer_id)
        loaded = capture(args, machine)
    failed = not result.smi.ok or result.header_error is not None
    if args.json:
        document = {
            "recipient": str(guid), "recipient_name": WELL_KNOWN.get(guid),
            "buffer_id": args.buffer_id, "order": args.order,
            "status_name": status_name(result.status), "ok": not failed,
            "comm_result": result.to_json(),
        }
        print_json(loaded.add_to(document) if loaded else document)
    else:
        lines = _text(guid, args.buffer_id, result)
        print_lines(loaded.prefix(lines) if loaded else lines)
    return 1 if failed else 0


def _text(guid: uuid.UUID, buffer_id: int, result: CommResult) -> list[str]:
    name = WELL_KNOWN.get(guid)
    lines = [
        f"recipient:          {guid}" + (f" ({name})" if name else ""),
        f"comm buffer:        {buffer_id}",
        f"status:             {status_text(result.status)}",
        f"return buffer size: {result.return_buffer_size} ({COMM_HEADER_SIZE}-byte header + "
        f"{size_text(len(result.data))} of reply)",
    ]
    if result.data:
        lines.append("reply:")
        lines.extend(hexdump(result.data))
    else:
        lines.append("reply:              (empty)")
    if result.header_error is not None:
        lines.append(f"header error:       {result.header_error}")
    lines.extend(guest_problems(result.smi))
    lines.append(f"{smi_summary(result.smi)}, stop {result.smi.stop.value}")
    return lines
