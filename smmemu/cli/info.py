"""``smmemu info``: the machine as built: memory map, ports, MMI handlers and the MM core image."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from smmemu.cli import Subparsers, machine_spec
from smmemu.cli.drivers import capture
from smmemu.cli.render import print_json, print_lines, size_text
from smmemu.machine import Machine
from smmemu.uefi.communicate import MmCommBufferStatus
from smmemu.uefi.guids import WELL_KNOWN

__all__ = ["register", "run"]

_BUFFER_ROLES = {0: "supervisor", 1: "user"}


def register(subparsers: Subparsers[argparse.ArgumentParser]) -> None:
    """Add ``info``."""
    parser = subparsers.add_parser(
        "info", help="show the memory map, ports, MMI handlers and MM core image",
        description="Build the machine, let the MM core initialise, and describe it.")
    parser.set_defaults(handler=run)


@dataclass(frozen=True, slots=True)
class _Region:
    start: int
    size: int
    name: str


def run(args: argparse.Namespace) -> int:
    """Describe the machine."""
    with machine_spec(args).build() as machine:
        document = _describe(machine)
        loaded = capture(args, machine)
    if args.json:
        print_json(loaded.add_to(document) if loaded else document)
    else:
        lines = _text(machine, document)
        print_lines(loaded.prefix(lines) if loaded else lines)
    return 0


def _regions(machine: Machine) -> list[_Region]:
    profile = machine.profile
    regions = [_Region(0, profile.dram_size, "DRAM")]
    regions.extend(_Region(base, size, "TSEG (SMRAM)") for base, size in machine.smram)
    for buffer_id, role in _BUFFER_ROLES.items():
        address, size = machine.comm_buffer(buffer_id)
        regions.append(_Region(address, size, f"comm buffer {buffer_id} ({role})"))
        regions.append(_Region(machine.comm_status(buffer_id), MmCommBufferStatus.size(),
                               f"comm buffer {buffer_id} status mailbox"))
    image = machine.image
    regions.append(_Region(image.load_address, image.end - image.load_address,
                           "MM core image (SMBASE+0x8000)"))
    regions.append(_Region(profile.smbase + profile.save_state_offset,
                           0x10000 - profile.save_state_offset,
                           f"save-state map (SMBASE+{profile.save_state_offset:#x})"))
    return sorted(regions, key=lambda region: (region.start, -region.size))


def _describe(machine: Machine) -> dict[str, Any]:
    profile = machine.profile
    image = machine.image
    info = image.info
    return {
        "profile": {
            "name": profile.name, "description": profile.description,
            "smm_revision": f"{profile.smm_revision:#x}", "smbase": f"{profile.smbase:#x}",
            "save_state": profile.save_state.value,
            "save_state_offset": f"{profile.save_state_offset:#x}",
        },
        "memory": [{"start": f"{r.start:#x}", "end": f"{r.start + r.size:#x}",
                    "size": f"{r.size:#x}", "name": r.name} for r in _regions(machine)],
        "ports": [{"base": f"{base:#x}", "size": size, "name": name}
                  for base, size, name in machine.ports.devices()],
        "handlers": [{"guid": None if guid is None else str(guid),
                      "name": "root handler" if guid is None else WELL_KNOWN.get(guid),
                      "address": f"{address:#x}", "symbol": machine.symbolize(address)}
                     for guid, address in machine.handler_table()],
        "image": {
            "path": str(image.path), "name": image.manifest.get("name"),
            "load_address": f"{image.load_address:#x}", "end": f"{image.end:#x}",
            "size": len(image.blob), "sha256": image.manifest.get("sha256"),
            "assembler": image.manifest.get("assembler"),
            "version": f"{info.version:#x}", "patch_level": f"{info.patch_level:#x}",
            "max_request_level": f"{info.max_request_level:#x}",
        },
    }


def _text(machine: Machine, document: dict[str, Any]) -> list[str]:
    profile = machine.profile
    lines = [
        f"profile {profile.name}: {profile.description}",
        f"  SMM revision {profile.smm_revision:#010x}, SMBASE {profile.smbase:#x}, "
        f"{profile.save_state.value} save-state map at SMBASE+{profile.save_state_offset:#x}",
        "",
        "memory map:",
    ]
    lines.extend(f"  {r.start:#010x}-{r.start + r.size - 1:#010x}  {size_text(r.size):>10}  "
                 f"{r.name}" for r in _regions(machine))
    lines += ["", "I/O ports:"]
    lines.extend(f"  {base:#06x}-{base + size - 1:#06x}  {name}"
                 for base, size, name in machine.ports.devices())
    lines += ["", "MMI handlers:"]
    for handler in document["handlers"]:
        guid = handler["guid"] or "(root)"
        where = f"{handler['address']} {handler['symbol'] or ''}".rstrip()
        lines.append(f"  {guid:<36}  {where:<40}  {handler['name'] or ''}".rstrip())
    image = machine.image
    info = image.info
    lines += [
        "",
        f"MM core image: {image.path}",
        f"  {image.load_address:#x}-{image.end - 1:#x}, {len(image.blob)} bytes, "
        f"sha256 {image.manifest.get('sha256', '?')}",
        f"  version 0x{info.version:08x}, patch level 0x{info.patch_level:08x}, "
        f"max request level {info.max_request_level:#x}",
    ]
    assembler = image.manifest.get("assembler")
    if assembler:
        lines.append(f"  assembled with {_assembler_text(assembler)}")
    return lines


def _assembler_text(assembler: object) -> str:
    """``keystone-engine 0.9.2`` from the manifest's assembler record."""
    if isinstance(assembler, dict) and "name" in assembler:
        return f"{assembler['name']} {assembler.get('version', '')}".rstrip()
    return str(assembler)
