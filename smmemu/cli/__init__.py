"""The ``smmemu`` command line.

Commands (``smmemu COMMAND --help`` for each):

* ``run``: the default session, an MM Supervisor VERSION_INFO request (also what
  ``smmemu`` with no command does);
* ``communicate``: one MM communicate request with a payload of your choice;
* ``swsmi``: one software SMI with chosen registers, showing the save state;
* ``info``: the machine's memory map, ports, MMI handlers and image;
* ``session``: replay a scripted session file (:mod:`smmemu.session`).

Every command takes ``--profile``, ``--image``, ``--budget``, ``--cpus``, ``--firmware``,
``--load``, ``--load-standalone``, ``--stub``, ``--json`` and ``-v``, before or after the
command name; with drivers, the output starts with the load report (:mod:`smmemu.cli.drivers`).
stdout carries results only; logs and errors go to stderr. Exit status: 0 success,
1 a guest-side failure (a fault, an exhausted budget, a shutdown, a session mismatch),
2 a usage or host-side error (``smmemu: error: ...``).

Each command module exports ``register(subparsers)`` and ``run(args) -> int``;
this package only parses, builds the Machine, and dispatches.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from smmemu import __version__
from smmemu.cli.drivers import add_options as add_driver_options
from smmemu.errors import GuidError, SmmemuError
from smmemu.profiles import PROFILE_NAMES
from smmemu.session import MachineSpec
from smmemu.uefi.guids import parse_guid

__all__ = ["guid", "hex_bytes", "machine_spec", "main", "number", "positive_float",
           "register_value"]

log = logging.getLogger(__name__)

Subparsers = argparse._SubParsersAction
"""The type of ``ArgumentParser.add_subparsers()``'s result."""


class _Command(Protocol):
    """What a command module provides."""

    def register(self, subparsers: Subparsers[argparse.ArgumentParser]) -> None:
        """Add the command's parser (which sets ``handler=run``)."""

    def run(self, args: argparse.Namespace) -> int:
        """Execute the command; the exit status."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``smmemu`` command line.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 success, 1 guest-side failure, 2 usage or host error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: --help, --version and usage errors
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    _configure_logging(args.verbose)
    try:
        status: int = args.handler(args)
    except SmmemuError as err:
        log.debug("host-side error", exc_info=True)
        print(f"smmemu: error: {err}", file=sys.stderr)
        return 2
    return status


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command registered."""
    # The command modules import this package's helpers, so they are imported here, not on top.
    from smmemu.cli import communicate, debug, info, run, session, swsmi

    parser = argparse.ArgumentParser(
        prog="smmemu", description="An x86-64 System Management Mode emulator.",
        epilog="exit status: 0 success, 1 guest-side failure, 2 usage or host-side error")
    parser.add_argument("--version", action="version", version=f"smmemu {__version__}")
    _add_global_options(parser, on_command=False)
    commands: tuple[_Command, ...] = (run, communicate, swsmi, info, session, debug)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in commands:
        command.register(subparsers)
    seen: set[int] = set()
    for sub in subparsers.choices.values():
        if id(sub) not in seen:
            seen.add(id(sub))
            _add_global_options(sub, on_command=True)
    parser.set_defaults(handler=run.run)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, on_command: bool) -> None:
    """The options every command takes, before or after the command name.

    On a command's parser the defaults are SUPPRESS, so an option given before
    the command name is not overwritten by the command's default.
    """
    def default(value: object) -> object:
        return argparse.SUPPRESS if on_command else value

    group = parser.add_argument_group("global options")
    group.add_argument("--profile", choices=PROFILE_NAMES, default=default(None),
                       help="platform profile (default q35, or a session's [machine] profile)")
    group.add_argument("--image", type=Path, metavar="PATH", default=default(None),
                       help="MM core image (its .manifest.json beside it); the bundled one "
                            "by default")
    group.add_argument("--budget", type=positive_float, metavar="SECONDS", default=default(None),
                       help="wall-clock budget of one guest run (default 2)")
    group.add_argument("--cpus", type=cpu_count, metavar="N", default=default(None),
                       help="number of CPUs (default 1; SMIs are broadcast to all)")
    add_driver_options(group, default)
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print one JSON document instead of text")
    group.add_argument("-v", "--verbose", action="count", default=default(0),
                       help="log to stderr (-v info, -vv debug)")


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 \
        else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def machine_spec(args: argparse.Namespace, base: MachineSpec | None = None, *,
                 order: str | None = None) -> MachineSpec:
    """The Machine the global options ask for, over ``base`` (default settings when None)."""
    changes: dict[str, Any] = {name: getattr(args, name)
                               for name in ("profile", "image", "budget", "cpus", "firmware",
                                            "varstore", "possible_cpus", "mode")
                               if getattr(args, name, None) is not None}
    if getattr(args, "drivers", None):
        changes["drivers"] = (base.drivers if base else ()) + tuple(args.drivers)
    if getattr(args, "pcds", None):
        changes["pcd"] = (base.pcd if base else ()) + tuple(args.pcds)
    if getattr(args, "stubs", None):
        changes["stubs"] = (base.stubs if base else ()) + tuple(args.stubs)
    if order is not None:
        changes["order"] = order
    return dataclasses.replace(base or MachineSpec(), **changes)


# -- argparse value types --------------------------------------------------------------------
def number(text: str) -> int:
    """A non-negative integer, ``0x`` hex or decimal."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (0x hex or decimal)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def cpu_count(text: str) -> int:
    """A CPU count of at least 1."""
    value = number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def positive_float(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def guid(text: str) -> uuid.UUID:
    """A GUID in registry format (braces allowed)."""
    try:
        return parse_guid(text)
    except GuidError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register_value(text: str) -> tuple[str, int]:
    """``NAME=VALUE``: a register name (lower-cased) and a number."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().lower(), number(value.strip())


def hex_bytes(text: str) -> bytes:
    """Bytes written as hex digits (whitespace allowed)."""
    digits = "".join(text.split())
    if len(digits) % 2:
        raise argparse.ArgumentTypeError(f"odd number of hex digits ({len(digits)}) in {text!r}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hexadecimal: {text!r}") from None
