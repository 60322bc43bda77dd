#!/usr/bin/env python3
"""Build smmemu's test MM drivers (PE32+ x64 EFI images) from C with clang and lld-link.

Each driver is one C file in this directory plus the headers in ``include/``. The compiler
and linker come from Debian's ``clang`` and ``lld`` packages (docs/decisions/0012); nothing
from the EDK2 build system is used. The build is reproducible byte for byte:

- sources are compiled from this directory by relative path, without debug information, so
  no absolute path reaches an object file's contents that the linker copies;
- ``lld-link /Brepro`` puts a hash of the image in the COFF timestamp instead of the time;
- the manifest is written with sorted, fixed formatting and no dates.

Usage::

    python3 firmware_blobs/drivers/build.py            # rebuild images and manifest here
    python3 firmware_blobs/drivers/build.py --check    # rebuild in a temp dir and compare

Exit status: 0 on success, 1 when ``--check`` finds a difference, 2 when a tool is missing
or fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST_NAME = "drivers.manifest.json"
HEADERS = ("include/Uefi.h", "include/PiMm.h")

CFLAGS: tuple[str, ...] = (
    "--target=x86_64-pc-windows-msvc",  # COFF objects, Microsoft x64 ABI (UEFI's)
    "-std=c11",
    "-Os",
    "-ffreestanding",
    "-nostdinc",  # the drivers include only ./include
    "-fno-stack-protector",
    "-mno-red-zone",
    "-fshort-wchar",  # CHAR16 string literals, as UEFI needs
    "-mgeneral-regs-only",  # no SSE/x87: nothing assumes CR4.OSFXSR in MM
    "-mno-stack-arg-probe",  # no __chkstk references
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",  # no .pdata/.xdata
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Iinclude",
)

LDFLAGS: tuple[str, ...] = (
    "/nologo",
    "/nodefaultlib",
    "/dll",  # relocatable image with IMAGE_FILE_DLL, as edk2 links drivers
    "/driver",
    "/entry:_ModuleEntryPoint",
    "/subsystem:efi_boot_service_driver",  # 0x0B: edk2's GenFw value for MM drivers
    "/base:0",
    "/align:4096",
    "/filealign:32",
    "/opt:ref",
    "/opt:icf",
    "/Brepro",
)

FFS_FILE_TYPES = {"MM_STANDALONE": "EFI_FV_FILETYPE_MM_STANDALONE (0x0E)",
                  "DXE_SMM_DRIVER": "EFI_FV_FILETYPE_MM (0x0A)"}
EFI_SUBSYSTEMS = {0x0A: "EFI_APPLICATION", 0x0B: "EFI_BOOT_SERVICE_DRIVER",
                  0x0C: "EFI_RUNTIME_DRIVER", 0x0D: "EFI_ROM"}
SCN_EXECUTE = 0x20000000
REL_DIR64 = 10


@dataclass(frozen=True)
class Handler:
    """One MMI handler a driver registers."""

    kind: str  # "guid" (MmiHandlerRegister) or "sw" (EFI_SMM_SW_DISPATCH2_PROTOCOL)
    key: str  # the handler GUID, or the software MMI command as "0x61"
    behaviour: str


@dataclass(frozen=True)
class Driver:
    """One driver: its source file, module type, handlers and the services it calls."""

    name: str
    module_type: str
    source: str
    handlers: tuple[Handler, ...]
    services: tuple[str, ...]


DRIVERS: tuple[Driver, ...] = (
    Driver(
        "StandaloneEcho", "MM_STANDALONE", "StandaloneEcho.c",
        (Handler("guid", "3e0a7f4e-9d3c-4b0f-8a41-5d7e2c1b9a60",
                 "reverses the payload in place; EFI_SUCCESS"),),
        ("EFI_MM_SYSTEM_TABLE.MmiHandlerRegister",),
    ),
    Driver(
        "SwSmiCounter", "DXE_SMM_DRIVER", "SwSmiCounter.c",
        (Handler("sw", "0x61", "increments a UINT64 counter in .data; EFI_SUCCESS"),
         Handler("guid", "5a1c0d2e-7f3b-4e91-b6a8-0c4d2f9e8b17",
                 "writes the counter to payload[0:8], sets *CommBufferSize = 8; EFI_SUCCESS")),
        ("EFI_BOOT_SERVICES.LocateProtocol(EFI_SMM_BASE2_PROTOCOL)",
         "EFI_SMM_BASE2_PROTOCOL.InSmm", "EFI_SMM_BASE2_PROTOCOL.GetSmstLocation",
         "EFI_MM_SYSTEM_TABLE.MmLocateProtocol(EFI_SMM_SW_DISPATCH2_PROTOCOL)",
         "EFI_SMM_SW_DISPATCH2_PROTOCOL.Register", "EFI_MM_SYSTEM_TABLE.MmiHandlerRegister"),
    ),
    Driver(
        "PoolUser", "MM_STANDALONE", "PoolUser.c",
        (Handler("guid", "9b7e4c12-3a5d-4f60-8e2b-1c0f7a6d5e43",
                 "MmAllocatePool(EfiRuntimeServicesData, 64), fill, MmFreePool; payload[0] = 1 "
                 "frees twice, = 2 also frees a .data pointer; EFI_SUCCESS"),),
        ("EFI_MM_SYSTEM_TABLE.MmiHandlerRegister", "EFI_MM_SYSTEM_TABLE.MmAllocatePool",
         "EFI_MM_SYSTEM_TABLE.MmFreePool"),
    ),
    Driver(
        "Faulty", "MM_STANDALONE", "Faulty.c",
        (Handler("guid", "d0f1e2a3-b4c5-4d6e-8f70-8192a3b4c5d6",
                 "reads 8 bytes at linear address 0 (deliberate NULL dereference)"),),
        ("EFI_MM_SYSTEM_TABLE.MmiHandlerRegister",),
    ),
)


class BuildError(Exception):
    """A tool is missing or failed."""


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def find_tool(name: str) -> str:
    """The path of ``name`` on PATH.

    Raises:
        BuildError: the tool is not installed.
    """
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"{name} not found on PATH; on Debian: apt-get install -y clang lld")
    return path


def tool_version(tool: str) -> str:
    """The first line of ``tool --version`` (e.g. ``Debian clang version 14.0.6``)."""
    result = run([tool, "--version"], HERE)
    return result.splitlines()[0].strip()


def run(command: list[str], cwd: Path) -> str:
    """Run ``command`` in ``cwd`` and return its standard output.

    Raises:
        BuildError: the command exits non-zero or prints a warning.
    """
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "warning" in proc.stderr:
        raise BuildError(f"{' '.join(command)} (exit {proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def build_driver(driver: Driver, clang: str, lld_link: str, out_dir: Path,
                 work_dir: Path) -> Path:
    """Compile and link one driver into ``out_dir/<name>.efi``."""
    obj = work_dir / f"{driver.name}.obj"
    image = out_dir / f"{driver.name}.efi"
    run([clang, *CFLAGS, "-c", driver.source, "-o", str(obj)], HERE)
    # /dll makes lld-link write an import library too; it goes to the scratch directory.
    run([lld_link, *LDFLAGS, f"/out:{image}", f"/implib:{work_dir / driver.name}.lib",
         str(obj)], HERE)
    return image


@dataclass(frozen=True)
class _Section:
    """One section header: name, memory span, file span and flags."""

    name: str
    rva: int
    virtual_size: int
    raw_size: int
    raw_pointer: int
    characteristics: int

    def holds(self, rva: int) -> bool:
        """True when ``rva`` falls inside the section in memory."""
        return self.rva <= rva < self.rva + self.virtual_size


def _u(fmt: str, data: bytes, offset: int) -> tuple[int, ...]:
    """``struct.unpack_from`` for integer fields."""
    return tuple(int(v) for v in struct.unpack_from(fmt, data, offset))


def pe_facts(data: bytes) -> dict[str, object]:
    """The header facts the manifest records, read with ``struct`` (PE/COFF spec).

    Raises:
        BuildError: the image is not x64 PE32+ or its entry point is not in a code section.
    """
    (lfanew,) = _u("<I", data, 0x3C)
    if data[:2] != b"MZ" or data[lfanew:lfanew + 4] != b"PE\0\0":
        raise BuildError("linker output is not a PE image")
    coff = lfanew + 4
    machine, nsections = _u("<HH", data, coff)
    (opt_size,) = _u("<H", data, coff + 16)
    opt = coff + 20
    (magic,) = _u("<H", data, opt)
    (entry,) = _u("<I", data, opt + 16)
    (image_base,) = _u("<Q", data, opt + 24)
    section_alignment, file_alignment = _u("<II", data, opt + 32)
    (size_of_image,) = _u("<I", data, opt + 56)
    (subsystem,) = _u("<H", data, opt + 68)
    reloc_rva, reloc_size = _u("<II", data, opt + 112 + 5 * 8)  # data directory 5
    sections = []
    for index in range(nsections):
        at = opt + opt_size + 40 * index
        vsize, rva, raw_size, raw_ptr = _u("<IIII", data, at + 8)
        sections.append(_Section(data[at:at + 8].rstrip(b"\0").decode("ascii"), rva, vsize,
                                 raw_size, raw_ptr, _u("<I", data, at + 36)[0]))
    code = [s for s in sections if s.characteristics & SCN_EXECUTE and s.holds(entry)]
    if magic != 0x20B or machine != 0x8664 or not code:
        raise BuildError("linker output is not an x64 PE32+ image with its entry in code")
    return {
        "machine": f"{machine:#06x}",
        "subsystem": subsystem,
        "subsystem_name": EFI_SUBSYSTEMS.get(subsystem, "unknown"),
        "image_base": f"{image_base:#x}",
        "size_of_image": f"{size_of_image:#x}",
        "section_alignment": f"{section_alignment:#x}",
        "file_alignment": f"{file_alignment:#x}",
        "entry_rva": f"{entry:#x}",
        "entry_section": code[0].name,
        "sections": [{"name": s.name, "rva": f"{s.rva:#x}",
                      "virtual_size": f"{s.virtual_size:#x}",
                      "characteristics": f"{s.characteristics:#010x}"} for s in sections],
        "dir64_relocations": _count_dir64(data, sections, reloc_rva, reloc_size),
    }


def _count_dir64(data: bytes, sections: list[_Section], rva: int, size: int) -> int:
    """Count DIR64 entries in the base-relocation directory (file offsets via its section)."""
    owner = next((s for s in sections if s.holds(rva)), None)
    if owner is None or not size:
        return 0
    pos = owner.raw_pointer + rva - owner.rva
    end, count = pos + size, 0
    while pos + 8 <= end:
        _page, block = _u("<II", data, pos)
        if block < 8:
            break
        count += sum(1 for (entry,) in struct.iter_unpack("<H", data[pos + 8:pos + block])
                     if entry >> 12 == REL_DIR64)
        pos += block
    return count


def manifest(out_dir: Path, clang_version: str, lld_version: str) -> dict[str, object]:
    """The manifest of the images in ``out_dir``: toolchain, flags and one entry per driver."""
    entries = []
    for driver in DRIVERS:
        data = (out_dir / f"{driver.name}.efi").read_bytes()
        sources = [driver.source, *HEADERS]
        entries.append({
            "name": driver.name,
            "file": f"{driver.name}.efi",
            "module_type": driver.module_type,
            "ffs_file_type": FFS_FILE_TYPES[driver.module_type],
            "sha256": sha256(data),
            "size": len(data),
            **pe_facts(data),
            "handlers": [{"kind": h.kind, "key": h.key, "behaviour": h.behaviour}
                         for h in driver.handlers],
            "services": list(driver.services),
            "sources": {path: sha256((HERE / path).read_bytes()) for path in sources},
        })
    return {
        "comment": "Generated by firmware_blobs/drivers/build.py; see docs/drivers.md.",
        "toolchain": {"clang": clang_version, "lld-link": lld_version,
                      "cflags": list(CFLAGS), "ldflags": list(LDFLAGS)},
        "drivers": entries,
    }


def build_all(out_dir: Path, clang_name: str = "clang", lld_name: str = "lld-link") -> None:
    """Build every driver and the manifest into ``out_dir``.

    Raises:
        BuildError: a tool is missing or fails, or an image is malformed.
    """
    clang, lld_link = find_tool(clang_name), find_tool(lld_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smmemu-drivers-") as work:
        for driver in DRIVERS:
            build_driver(driver, clang, lld_link, out_dir, Path(work))
    text = json.dumps(manifest(out_dir, tool_version(clang), tool_version(lld_link)),
                      indent=2, sort_keys=True) + "\n"
    (out_dir / MANIFEST_NAME).write_text(text, encoding="utf-8", newline="\n")


def check(clang_name: str = "clang", lld_name: str = "lld-link") -> list[str]:
    """Rebuild into a temporary directory; the committed files that differ (empty: none)."""
    names = [f"{d.name}.efi" for d in DRIVERS] + [MANIFEST_NAME]
    with tempfile.TemporaryDirectory(prefix="smmemu-drivers-check-") as tmp:
        build_all(Path(tmp), clang_name, lld_name)
        return [name for name in names
                if not (HERE / name).is_file()
                or (HERE / name).read_bytes() != (Path(tmp) / name).read_bytes()]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="rebuild in a temporary directory and compare with the "
                             "committed images and manifest")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="output directory (default: this directory)")
    parser.add_argument("--clang", default="clang", help="clang executable")
    parser.add_argument("--lld-link", default="lld-link", help="lld-link executable")
    args = parser.parse_args(argv)
    try:
        if args.check:
            differ = check(args.clang, args.lld_link)
            if differ:
                sys.stderr.write("drivers: rebuilt files differ from the committed ones: "
                                 f"{', '.join(differ)}\n")
                return 1
            sys.stdout.write(f"drivers: {len(DRIVERS)} images and {MANIFEST_NAME} reproduce "
                             "byte for byte\n")
            return 0
        build_all(args.out, args.clang, args.lld_link)
    except BuildError as err:
        sys.stderr.write(f"drivers: {err}\n")
        return 2
    sys.stdout.write(f"drivers: built {len(DRIVERS)} images and {MANIFEST_NAME} in "
                     f"{args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
