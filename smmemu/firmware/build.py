"""Build the MM core image from assembly, verify it with capstone, and check the committed blob.

Why it exists: the MM core is a flat blob committed under ``firmware_blobs/`` so that running smmemu
needs no assembler, yet it must stay reproducible from its sources. Keystone 0.9.2 mis-encodes some
forms silently (``/work/shared/reference/unicorn_probe.md`` row 17: 32-bit ``lgdt`` gets a 0x66
prefix, ``ljmp sel:off`` truncates its offset, 64-bit ``[abs]`` becomes RIP-relative), so a build
is only accepted after :mod:`smmemu.firmware.verify` has read every instruction back with capstone.
``--check`` rebuilds in memory and compares byte-for-byte with the committed files (meant for CI).

Usage::

    python -m smmemu.firmware.build [--check] [--config PATH]

The manifest holds nothing time- or host-dependent: two builds give identical bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smmemu.disasm import format_line
from smmemu.errors import AssemblyError, ImageError, SmmemuError
from smmemu.firmware.assembler import assemble, assembler_version
from smmemu.firmware.source import Problem, Statement, parse
from smmemu.firmware.verify import Placed, check_rules, verify

__all__ = [
    "BuildConfig",
    "BuiltImage",
    "build",
    "check",
    "load_build_config",
    "main",
    "render_manifest",
]

_log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "firmware_blobs" / "mm_core" / "build.toml"
_KEYS = {"name", "load_address", "sources", "output", "manifest", "entry_points"}
_LISTING_BYTES = 8
_SHOWN = 40  # problems listed in one error message


@dataclass(frozen=True)
class BuildConfig:
    """The ``[image]`` table of a build.toml, with paths resolved against its folder.

    Attributes:
        path: The build.toml itself.
        name: Image name recorded in the manifest.
        load_address: Linear address of the blob's first byte.
        sources: Source paths as written (relative to build.toml), in concatenation order.
        output: Where the blob is written.
        manifest: Where the manifest is written.
        entry_points: Labels that must exist; their addresses go into the manifest.
    """

    path: Path
    name: str
    load_address: int
    sources: tuple[str, ...]
    output: Path
    manifest: Path
    entry_points: tuple[str, ...]

    @property
    def base_dir(self) -> Path:
        """The folder relative paths are resolved against."""
        return self.path.parent


@dataclass(frozen=True)
class BuiltImage:
    """An assembled and verified image.

    Attributes:
        blob: The image bytes.
        symbols: Every label and its linear address.
        manifest: The manifest as a JSON-ready dict.
        listing: One line per statement: address, bytes, source text and ``file:line``.
    """

    blob: bytes
    symbols: dict[str, int]
    manifest: dict[str, object]
    listing: tuple[str, ...]

    @property
    def manifest_text(self) -> str:
        """The manifest exactly as it is written to disk."""
        return render_manifest(self.manifest)


def _strings(table: Mapping[str, object], key: str, path: Path) -> tuple[str, ...]:
    value = table.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ImageError(f"[image] {key} must be a list of non-empty strings", path=str(path))
    return tuple(value)


def load_build_config(path: Path | str) -> BuildConfig:
    """Read a build.toml.

    Raises:
        ImageError: The file is missing, not TOML, or the ``[image]`` table is incomplete.
    """
    path = Path(path).resolve()
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("image")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"cannot read build config: {exc}", path=str(path)) from exc
    if not isinstance(table, dict) or set(table) != _KEYS:
        raise ImageError(f"[image] must have exactly the keys {sorted(_KEYS)}", path=str(path))
    name, load_address = table["name"], table["load_address"]
    if not isinstance(name, str) or not isinstance(load_address, int) or load_address < 0:
        raise ImageError(
            "[image] name must be a string and load_address an address", path=str(path)
        )
    files = {key: table[key] for key in ("output", "manifest")}
    if not all(isinstance(v, str) and v for v in files.values()):
        raise ImageError("[image] output and manifest must be paths", path=str(path))
    return BuildConfig(
        path=path,
        name=name,
        load_address=load_address,
        sources=_strings(table, "sources", path),
        output=path.parent / str(files["output"]),
        manifest=path.parent / str(files["manifest"]),
        entry_points=_strings(table, "entry_points", path),
    )


def render_manifest(manifest: Mapping[str, object]) -> str:
    """Serialise a manifest: sorted keys, two-space indent, trailing newline."""
    return json.dumps(manifest, sort_keys=True, indent=2) + "\n"


def _error(problems: list[Problem]) -> AssemblyError:
    """One exception listing every problem; ``line``/``source`` come from the first."""
    first = problems[0]
    shown = [str(p) for p in problems[:_SHOWN]]
    more = [f"... and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else []
    return AssemblyError(
        f"MM core build failed with {len(problems)} problem(s):\n" + "\n".join(shown + more),
        line=first.location.line if first.location else None,
        source=first.text or None,
    )


def _locate_keystone_error(statements: list[Statement], base: int) -> Statement | None:
    """Find the first statement keystone rejects, by assembling ever longer prefixes.

    Labels and ``.equ`` names defined after the prefix are appended so forward references still
    resolve. Keystone's own statement count is useless here (it reports 0 for most errors).
    """

    def fails(count: int) -> bool:
        later = statements[count:]
        text = [s.text for s in statements[:count]] + [s.text for s in later if s.kind == "equ"]
        text += [f"{s.name}:" for s in later if s.kind == "label"]
        try:
            assemble("\n".join(text), base)
        except AssemblyError:
            return True
        return False

    low, high = 0, len(statements)  # fails(high) holds; find the smallest failing prefix
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if fails(middle) else (middle + 1, high)
    return statements[high - 1] if high > 0 and fails(high) else None


def _assemble(statements: list[Statement], base: int) -> bytes:
    try:
        return assemble("\n".join(s.text for s in statements), base)
    except AssemblyError as exc:
        culprit = _locate_keystone_error(statements, base)
        if culprit is None:
            raise
        raise _error([Problem(culprit.location, str(exc), culprit.text)]) from exc


_MSR_MNEMONICS = frozenset({"rdmsr", "wrmsr"})


def _msr_numbers(placed: tuple[Placed, ...], labels: Mapping[str, int],
                 base: int) -> dict[str, str]:
    """The MSR each ``rdmsr``/``wrmsr`` site accesses, where the code alone fixes it.

    That is where the site directly follows ``mov ecx, imm32`` and no label names
    it, so no jump reaches it with another ECX. The CPU hooks only the sites whose
    MSR smmemu emulates, or whose MSR is not fixed.
    """
    named = set(labels.values())
    out: dict[str, str] = {}
    previous = None
    for place in placed:
        insn = place.insn
        if insn is None:
            continue
        address = base + place.offset
        if (insn.mnemonic in _MSR_MNEMONICS and previous is not None
                and previous.mnemonic == "mov" and previous.op_str.startswith("ecx, ")
                and previous.address + previous.size == insn.address and address not in named):
            msr = _immediate(previous.op_str[5:])
            if msr is not None:
                out[f"0x{address:08x}"] = f"0x{msr:x}"
        previous = insn
    return out


def _immediate(operand: str) -> int | None:
    """The value of an immediate operand as capstone prints it; None for anything else."""
    try:
        return int(operand, 0)
    except ValueError:
        return None


def _listing_line(place: Placed, blob: bytes, base: int) -> str:
    stmt = place.statement
    raw = blob[place.offset : place.offset + min(place.size, _LISTING_BYTES)]
    return format_line(base + place.offset, raw, f"{stmt.text:<44} {stmt.location}")


def build(config: BuildConfig) -> BuiltImage:
    """Assemble the sources, verify every statement, and build the manifest.

    Raises:
        ImageError: A source file cannot be read.
        AssemblyError: Parse errors, house-rule violations, keystone errors or verification
            failures; the message lists every problem with ``file:line``.
    """
    problems: list[Problem] = []
    statements: list[Statement] = []
    hashes: dict[str, str] = {}
    for name in config.sources:
        path = config.base_dir / name
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ImageError(f"cannot read source {name}: {exc}", path=str(path)) from exc
        hashes[Path(name).as_posix()] = hashlib.sha256(data).hexdigest()
        statements += parse(text, Path(name).as_posix(), problems)
    check_rules(statements, problems)
    if problems:
        raise _error(problems)
    blob = _assemble(statements, config.load_address)
    verified = verify(statements, blob, config.load_address, problems)
    missing = [e for e in config.entry_points if e not in verified.labels]
    if missing:
        problems.append(Problem(None, f"entry point label(s) not defined: {', '.join(missing)}"))
    if problems:
        raise _error(problems)
    _log.info(
        "%s: %d bytes, %d instructions verified", config.name, len(blob), verified.instructions
    )
    manifest: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "name": config.name,
        "load_address": f"0x{config.load_address:08x}",
        "size": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "assembler": assembler_version(),
        "entry_points": {e: f"0x{verified.labels[e]:08x}" for e in config.entry_points},
        "symbols": {k: f"0x{v:08x}" for k, v in sorted(verified.labels.items())},
        "msr_sites": {
            f"0x{config.load_address + p.offset:08x}": p.insn.mnemonic
            for p in verified.placed if p.insn is not None and p.insn.mnemonic in _MSR_MNEMONICS
        },
        "msr_numbers": _msr_numbers(verified.placed, verified.labels, config.load_address),
        "constants": {k: f"0x{v:08x}" for k, v in sorted(verified.constants.items())},
        "sources": hashes,
        "verified_instructions": verified.instructions,
    }
    listing = tuple(_listing_line(p, blob, config.load_address) for p in verified.placed)
    return BuiltImage(blob, dict(verified.labels), manifest, listing)


def _where(offset: int, image: BuiltImage, base: int) -> str:
    address = base + offset
    owners = [(a, n) for n, a in image.symbols.items() if a <= address]
    if not owners:
        return f"address 0x{address:08x}"
    start, name = max(owners)
    return f"address 0x{address:08x}, in {name}+{address - start:#x}"


def _compare_blob(config: BuildConfig, image: BuiltImage) -> list[str]:
    try:
        committed = config.output.read_bytes()
    except OSError:
        return [f"{config.output.name}: missing; run python -m smmemu.firmware.build"]
    built = image.blob
    if committed == built:
        return []
    diffs = [i for i, (a, b) in enumerate(zip(committed, built, strict=False)) if a != b]
    found = []
    if len(committed) != len(built):
        found.append(f"{config.output.name}: committed {len(committed)} bytes, built {len(built)}")
    if diffs:
        first = diffs[0]
        found.append(
            f"{config.output.name}: first difference at offset {first:#x} "
            f"({_where(first, image, config.load_address)}): committed {committed[first]:#04x}, "
            f"built {built[first]:#04x}; {len(diffs)} byte(s) differ"
        )
    return found


def _compare_manifest(config: BuildConfig, image: BuiltImage) -> list[str]:
    label = config.manifest.name
    try:
        text = config.manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return [f"{label}: missing or unreadable; run python -m smmemu.firmware.build"]
    if text == image.manifest_text:
        return []
    try:
        committed = json.loads(text)
    except json.JSONDecodeError:
        return [f"{label}: not valid JSON"]
    if not isinstance(committed, dict):
        return [f"{label}: not a JSON object"]
    keys = sorted(set(committed) | set(image.manifest))
    changed = [k for k in keys if committed.get(k) != image.manifest.get(k)]
    if not changed:
        return [f"{label}: same content, different formatting"]
    return [
        f"{label}: field {k!r} differs: committed {committed.get(k)!r}, "
        f"built {image.manifest.get(k)!r}"
        for k in changed
    ]


def check(config: BuildConfig) -> list[str]:
    """Rebuild in memory and compare with the committed blob and manifest.

    Returns:
        Human-readable differences; empty when both files are byte-identical to the build.

    Raises:
        AssemblyError: The sources no longer build.
    """
    image = build(config)
    return _compare_blob(config, image) + _compare_manifest(config, image)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 success, 1 failure or mismatch)."""
    parser = argparse.ArgumentParser(
        prog="python -m smmemu.firmware.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed blob and manifest"
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="build.toml (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        config = load_build_config(args.config)
        if args.check:
            differences = check(config)
            for line in differences:
                print(f"mismatch: {line}", file=sys.stderr)  # noqa: T201 - CLI output
            if differences:
                return 1
            print(f"{config.name}: committed blob and manifest match the sources")  # noqa: T201
            return 0
        image = build(config)
        config.output.parent.mkdir(parents=True, exist_ok=True)
        config.output.write_bytes(image.blob)
        config.manifest.write_text(image.manifest_text, encoding="utf-8")
    except SmmemuError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return 1
    verified, digest = image.manifest["verified_instructions"], str(image.manifest["sha256"])
    print(  # noqa: T201 - CLI output
        f"{config.name}: {len(image.blob)} bytes at 0x{config.load_address:08x}, "
        f"{verified} instructions verified, sha256 {digest[:16]}..., "
        f"wrote {_shown(config.output)} and {_shown(config.manifest)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
