"""The keystone wrapper; the only module that imports keystone.

Why it exists: keystone-engine 0.9.2 has traps that must be handled in exactly one place
(``/work/shared/reference/unicorn_probe.md`` section 7, measured with p7_keystone.py):

* Setting **any** ``ks_option`` (even ``KS_OPT_SYNTAX`` to the default Intel syntax, or a symbol
  resolver) makes that instance parse ``mov eax, 10`` as ``0x10``, and the effect leaks into
  instances created after it was freed. So this module never calls ``ks.syntax`` or
  ``ks.sym_resolver``; labels are resolved by assembling the whole source in one call.
* ``.code16`` / ``.code32`` / ``.code64`` inside one ``KS_MODE_64`` source give the same bytes as
  assembling each part in its own mode, so a single engine mode is enough.
* Some forms come out silently wrong (32-bit ``lgdt`` gets a 0x66 prefix, 16/32-bit ``ljmp
  sel:off`` truncates the offset, 64-bit ``mov reg, [abs]`` becomes RIP-relative). Catching those is
  the job of :mod:`smmemu.firmware.build`, which checks every instruction with capstone.

Nothing here knows about the source conventions; it only turns text into bytes or an
:class:`~smmemu.errors.AssemblyError`. keystone is imported on first use, so code that only reads a
build config or a committed image (through :mod:`smmemu.firmware.build`) never loads its native
library.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from types import ModuleType

from smmemu.errors import AssemblyError

__all__ = ["assemble", "assembler_version"]

_log = logging.getLogger(__name__)

_PACKAGE = "keystone-engine"


def _keystone() -> ModuleType:
    """The keystone module, imported on first use (see the module docstring)."""
    return importlib.import_module("keystone")


def assemble(source: str, address: int) -> bytes:
    """Assemble Intel-syntax ``source`` as if loaded at ``address``.

    A fresh ``Ks(KS_ARCH_X86, KS_MODE_64)`` is used for every call and no option is ever set on it
    (see the module docstring). Mode directives in the source switch the code size.

    Args:
        source: The whole program, one statement per line, comments already removed.
        address: Linear address of the first output byte; RIP-relative and branch displacements,
            and ``.align`` padding, are computed from it.

    Returns:
        The assembled bytes (empty when the source produces none).

    Raises:
        AssemblyError: Keystone rejected the source, or the source is not ASCII.
    """
    try:
        encoded = source.encode("ascii")
    except UnicodeEncodeError as exc:
        raise AssemblyError(f"source is not ASCII at character {exc.start}") from exc
    keystone = _keystone()
    try:
        engine = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
        output, statements = engine.asm(encoded, address, True)
    except keystone.KsError as exc:
        raise AssemblyError(f"keystone: {exc}") from exc
    _log.debug("keystone assembled %d statements at %#x", statements, address)
    return b"" if output is None else bytes(output)


def assembler_version() -> dict[str, str]:
    """Identify the assembler, for the image manifest.

    Returns:
        ``{"name": "keystone-engine", "version": <python package>, "core": <major.minor>}``.
        The core of keystone-engine 0.9.2 reports 0.9.
    """
    major, minor, _combined = _keystone().ks_version()
    return {
        "name": _PACKAGE,
        "version": importlib.metadata.version(_PACKAGE),
        "core": f"{major}.{minor}",
    }
