"""The whole smmemu error tree.

Host-side failures are exceptions rooted at :class:`SmmemuError`; each carries
structured attributes so callers never have to parse messages. What the *guest*
experiences (an EFI_STATUS, a fault inside a handler, a budget running out) is
a value in a result object, never one of these exceptions.
"""

from __future__ import annotations


class SmmemuError(Exception):
    """Root of every error smmemu raises on purpose."""


class ConfigError(SmmemuError):
    """An invalid machine configuration (unknown profile, bad option value)."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ProfileError(ConfigError):
    """A platform profile name that smmemu does not know."""


class ImageError(SmmemuError):
    """A firmware image that cannot be used (unreadable, malformed, mismatched manifest)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class AssemblyError(ImageError):
    """The MM core source did not assemble, or the assembled bytes failed verification."""

    def __init__(self, message: str, *, line: int | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.source = source


class MemoryAccessError(SmmemuError):
    """A host-side memory access outside the machine's physical memory."""

    def __init__(self, message: str, *, address: int, size: int) -> None:
        super().__init__(message)
        self.address = address
        self.size = size


class GuidError(SmmemuError):
    """A GUID string or value that cannot be parsed."""

    def __init__(self, message: str, *, value: object) -> None:
        super().__init__(message)
        self.value = value


class CommBufferError(SmmemuError):
    """A communicate request that cannot be placed in, or read back from, a comm buffer.

    ``reason`` is one of the closed set in :class:`smmemu.dxe.communicator.CommError`.
    """

    def __init__(self, message: str, *, reason: str, buffer_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.buffer_id = buffer_id


class EngineError(SmmemuError):
    """Unicorn failed in a way smmemu did not expect, or is a build smmemu cannot drive."""


class MachineClosedError(SmmemuError):
    """The Machine was used after ``close()``."""


class SessionError(SmmemuError):
    """A session file that cannot be read or has an invalid structure."""

    def __init__(self, message: str, *, path: str | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.step = step


class SnapshotError(SmmemuError):
    """A snapshot that cannot be taken or restored.

    A CPU is running or in SMM, the snapshot belongs to another Machine, or it
    was released.
    """
