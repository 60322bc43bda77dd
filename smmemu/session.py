"""Scripted sessions: MM requests and software SMIs with their expected outcomes, from TOML.

A session file drives one Machine through a sequence of steps and states
what each step must produce. :func:`load_session` reads and validates a file
into frozen dataclasses (every problem is a :class:`~smmemu.errors.SessionError`
naming the step and the field); :func:`replay` runs it and returns a
:class:`SessionReport` with, for each step, the list of mismatches between
what was expected and what happened. Nothing here prints; ``smmemu session``
renders the report.

The format (steps are numbered from 1 in reports and errors)::

    name = "supervisor"                # optional, defaults to the file name
    description = "..."                # optional

    [machine]                          # optional; command-line options win
    profile = "q35"                    # "q35" or "intel"
    order = "patina"                   # software SMI port order: "patina" or "ovmf"
    budget = 2.0                       # seconds per guest run
    image = "path/to/mm_core.bin"      # relative to the session file
    cpus = 1                           # CPUs (SMIs are broadcast to all)

    [[step]]
    name = "version info"              # optional, defaults to "step N"
    kind = "communicate"
    guid = "8c633b23-1260-4ea6-830f-7ddc97382111"
    hex = "4d535550..."                # the payload, or: text = "hello" (UTF-8)
    buffer_id = 0                      # optional, default 0
    [step.expect]                      # every key is optional
    status = "EFI_SUCCESS"             # ReturnStatus: an EFI_* name or an integer
    return_buffer_size = 64
    reply_hex = "..."                  # the exact reply payload
    reply_prefix_hex = "..."           # the reply payload starts with these bytes
    stop = "halted"                    # a StopReason value; "halted" when absent
    header_error = false               # true when the handler must break the header
    [[step.expect.reply_field]]        # an integer inside the reply payload
    name = "Result"                    # optional label
    offset = 16
    size = 8                           # 1, 2, 4 or 8 (default 8), little-endian
    value = "EFI_INVALID_PARAMETER"    # an integer, or an EFI_* name

    [[step]]
    kind = "swsmi"
    command = 0x42                     # APM_CNT byte
    data = 0x01                        # optional APM_STS byte, default 0
    regs = { rbx = 0x1234 }            # optional GPR values at the OUT
    [step.expect]
    stop = "halted"
    save_state = { rbx = 0x1234, smm_revision = 0x20064 }   # as the MM core saw it
    registers = { rbx = 0x1234 }                            # after RSM

Integers may also be written as strings (``"0x8000000000000002"``), which
keeps values above 2**63 portable across TOML parsers.
"""

from __future__ import annotations

import time
import tomllib
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from smmemu.dxe.communicator import TriggerOrder
from smmemu.errors import CommBufferError, ConfigError, GuidError, SessionError
from smmemu.machine import Machine
from smmemu.profiles import PROFILE_NAMES
from smmemu.results import CommResult, SmiResult, StopReason
from smmemu.services.stubs import StubProtocol
from smmemu.uefi.guids import parse_guid
from smmemu.uefi.status import EfiStatus, status_name

__all__ = [
    "CommunicateExpect",
    "CommunicateStep",
    "MachineFactory",
    "MachineSpec",
    "Mismatch",
    "ReplyField",
    "Session",
    "SessionReport",
    "Step",
    "StepReport",
    "SwSmiExpect",
    "SwSmiStep",
    "load_session",
    "parse_session",
    "replay",
]


# -- the session model ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MachineSpec:
    """How to build the Machine a session runs on (None: the Machine's own default)."""

    profile: str = "q35"
    image: Path | None = None
    budget: float | None = None
    order: str = TriggerOrder.PATINA.value
    cpus: int = 1
    firmware: Path | None = None
    """A firmware volume or flash image whose MM drivers are dispatched at start."""
    drivers: tuple[tuple[Path, bool], ...] = ()
    """Driver files loaded after the firmware, in order: (path, standalone)."""
    stubs: tuple[StubProtocol, ...] = ()
    """Stub protocols installed before any driver."""
    varstore: Path | None = None
    """The variable store flash image below the firmware's code flash."""
    pcd: tuple[tuple[int, int | str], ...] = ()
    """Dynamic PCD token values (token, number or platform object name)."""
    possible_cpus: int | None = None
    mode: str | None = None
    """``standalone`` or ``traditional`` (None: the Machine's default)."""

    def build(self) -> Machine:
        """A new Machine with these settings, its firmware dispatched and drivers loaded.

        Raises:
            ConfigError: an invalid profile, budget or order.
            ImageError: an unusable MM core image, firmware image or driver.
        """
        options: dict[str, Any] = {"cpus": self.cpus, "trigger_order": self.order,
                                   "firmware": self.firmware, "stubs": self.stubs,
                                   "varstore": self.varstore, "pcd": dict(self.pcd),
                                   "possible_cpus": self.possible_cpus, "mode": self.mode}
        if self.budget is not None:
            options["budget"] = self.budget
        machine = Machine(self.profile, self.image, **options)
        try:
            for path, standalone in self.drivers:
                machine.load_image(path, standalone=standalone)
        except BaseException:
            machine.close()
            raise
        return machine


@dataclass(frozen=True, slots=True)
class ReplyField:
    """An integer expected at ``offset`` of the reply payload."""

    name: str
    offset: int
    size: int
    value: int
    is_status: bool = False
    """The value was written as an EFI_* name, so reports show names."""


@dataclass(frozen=True, slots=True)
class CommunicateExpect:
    """What a communicate step must produce (None: not checked)."""

    status: int | None = None
    return_buffer_size: int | None = None
    reply: bytes | None = None
    reply_prefix: bytes | None = None
    fields: tuple[ReplyField, ...] = ()
    stop: StopReason = StopReason.HALTED
    header_error: bool = False


@dataclass(frozen=True, slots=True)
class CommunicateStep:
    """One MM communicate request."""

    kind: ClassVar[str] = "communicate"
    index: int
    name: str
    guid: uuid.UUID
    payload: bytes
    buffer_id: int = 0
    expect: CommunicateExpect = field(default_factory=CommunicateExpect)


@dataclass(frozen=True, slots=True)
class SwSmiExpect:
    """What a software SMI step must produce."""

    stop: StopReason = StopReason.HALTED
    save_state: Mapping[str, int] = field(default_factory=dict)
    registers: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SwSmiStep:
    """One software SMI raised with ``out 0xB2, ax``."""

    kind: ClassVar[str] = "swsmi"
    index: int
    name: str
    command: int
    data: int = 0
    regs: Mapping[str, int] = field(default_factory=dict)
    expect: SwSmiExpect = field(default_factory=SwSmiExpect)


Step = CommunicateStep | SwSmiStep


@dataclass(frozen=True, slots=True)
class Session:
    """A validated session file."""

    name: str
    steps: tuple[Step, ...]
    machine: MachineSpec = MachineSpec()
    description: str = ""
    path: Path | None = None


# -- the report ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Mismatch:
    """One expectation that did not hold; values are already rendered (hex, EFI names)."""

    field: str
    expected: str
    actual: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StepReport:
    """The outcome of one step."""

    index: int
    name: str
    kind: str
    mismatches: tuple[Mismatch, ...]
    stop: StopReason | None = None
    smis: int = 0
    elapsed: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every expectation held."""
        return not self.mismatches

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "index": self.index, "name": self.name, "kind": self.kind, "passed": self.passed,
            "stop": self.stop.value if self.stop else None, "smis": self.smis,
            "elapsed": self.elapsed,
            "mismatches": [{"field": m.field, "expected": m.expected, "actual": m.actual,
                            "detail": m.detail} for m in self.mismatches],
        }


@dataclass(frozen=True, slots=True)
class SessionReport:
    """The outcome of a replayed session."""

    name: str
    profile: str
    steps: tuple[StepReport, ...]
    path: Path | None = None

    @property
    def passed(self) -> bool:
        """True when every step passed."""
        return all(step.passed for step in self.steps)

    @property
    def failed(self) -> tuple[StepReport, ...]:
        """The steps that did not pass."""
        return tuple(step for step in self.steps if not step.passed)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "session": self.name, "path": str(self.path) if self.path else None,
            "profile": self.profile, "passed": self.passed,
            "steps": [step.to_json() for step in self.steps],
        }


# -- loading -------------------------------------------------------------------------------------
def load_session(path: str | Path) -> Session:
    """Read and validate a session file.

    Raises:
        SessionError: unreadable file, invalid TOML or an invalid step (the error's
            ``step`` is the 1-based step number, the message names the field).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise SessionError(f"cannot read session {source}: {err.strerror}",
                           path=str(source)) from err
    except UnicodeDecodeError as err:
        raise SessionError(f"session {source} is not UTF-8 text: {err}", path=str(source)) from err
    return parse_session(text, path=source)


def parse_session(text: str, *, path: Path | None = None) -> Session:
    """Validate session TOML ``text``; ``path`` names it in errors and anchors relative paths.

    Raises:
        SessionError: invalid TOML or an invalid step.
    """
    origin = str(path) if path is not None else "<session>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SessionError(f"{origin}: invalid TOML: {err}", path=str(path) if path else None) \
            from err
    top = _Reader(data, _TOP_KEYS, origin=origin, where="session", path=path)
    machine = top.child("machine", _MACHINE_KEYS)
    spec = MachineSpec() if machine is None else _machine_spec(machine, path)
    raw_steps = top.children("step", _STEP_KEYS, per_step=True)
    if not raw_steps:
        raise top.error("step", "a session needs at least one [[step]] table")
    steps = tuple(_step(reader) for reader in raw_steps)
    default_name = path.stem if path is not None else "session"
    return Session(name=top.string("name") or default_name, steps=steps, machine=spec,
                   description=top.string("description") or "", path=path)


_TOP_KEYS = ("name", "description", "machine", "step")
_MACHINE_KEYS = ("profile", "order", "budget", "image", "cpus")
_STEP_KEYS = ("name", "kind", "guid", "hex", "text", "buffer_id", "command", "data", "regs",
              "expect")
_COMM_STEP_KEYS = ("name", "kind", "guid", "hex", "text", "buffer_id", "expect")
_SWSMI_STEP_KEYS = ("name", "kind", "command", "data", "regs", "expect")
_COMM_EXPECT_KEYS = ("status", "return_buffer_size", "reply_hex", "reply_prefix_hex",
                     "reply_field", "stop", "header_error")
_FIELD_KEYS = ("name", "offset", "size", "value")
_SWSMI_EXPECT_KEYS = ("stop", "save_state", "registers")
_ORDERS = tuple(order.value for order in TriggerOrder)
_STOPS = {stop.value: stop for stop in StopReason}


def _machine_spec(reader: _Reader, path: Path | None) -> MachineSpec:
    profile = reader.string("profile") or "q35"
    if profile not in PROFILE_NAMES:
        raise reader.error("profile", f"unknown profile {profile!r} (known: "
                                      f"{', '.join(PROFILE_NAMES)})")
    order = reader.string("order") or TriggerOrder.PATINA.value
    if order not in _ORDERS:
        raise reader.error("order", f"unknown order {order!r} (known: {', '.join(_ORDERS)})")
    budget = reader.real("budget")
    if budget is not None and not budget > 0:
        raise reader.error("budget", f"must be positive, got {budget!r}")
    cpus = reader.number("cpus", bits=8)
    if cpus is not None and cpus < 1:
        raise reader.error("cpus", f"must be at least 1, got {cpus}")
    image_text = reader.string("image")
    image = None
    if image_text is not None:
        image = Path(image_text)
        if not image.is_absolute() and path is not None:
            image = path.parent / image
    return MachineSpec(profile=profile, image=image, budget=budget, order=order, cpus=cpus or 1)


def _step(reader: _Reader) -> Step:
    reader.string("name")  # validated here; the reader already took it as the step's name
    kind = reader.string("kind")
    if kind == CommunicateStep.kind:
        reader.restrict(_COMM_STEP_KEYS)
        return _communicate_step(reader)
    if kind == SwSmiStep.kind:
        reader.restrict(_SWSMI_STEP_KEYS)
        return _swsmi_step(reader)
    got = "missing" if kind is None else f"got {kind!r}"
    raise reader.error("kind", f"must be 'communicate' or 'swsmi', {got}")


def _communicate_step(reader: _Reader) -> CommunicateStep:
    guid_text = reader.string("guid")
    if guid_text is None:
        raise reader.error("guid", "missing (the recipient handler's GUID)")
    try:
        guid = parse_guid(guid_text)
    except GuidError as err:
        raise reader.error("guid", str(err)) from None
    payload = reader.hexdata("hex")
    text = reader.string("text")
    if text is not None:
        if payload is not None:
            raise reader.error("text", "give the payload as 'hex' or as 'text', not both")
        payload = text.encode("utf-8")
    if payload is None:
        raise reader.error("hex", "missing (give the payload as 'hex' or 'text')")
    if not payload:
        raise reader.error("hex" if text is None else "text", "the payload is empty")
    buffer_id = reader.number("buffer_id", bits=32)
    expect = reader.child("expect", _COMM_EXPECT_KEYS)
    return CommunicateStep(
        index=reader.step, name=reader.step_name, guid=guid, payload=payload,
        buffer_id=0 if buffer_id is None else buffer_id,
        expect=CommunicateExpect() if expect is None else _communicate_expect(expect))


def _communicate_expect(reader: _Reader) -> CommunicateExpect:
    fields = []
    for item in reader.children("reply_field", _FIELD_KEYS):
        offset = item.number("offset", bits=32)
        if offset is None:
            raise item.error("offset", "missing")
        size = item.number("size", bits=8) or 8
        if size not in (1, 2, 4, 8):
            raise item.error("size", f"must be 1, 2, 4 or 8, got {size}")
        value, is_status = item.status("value", bits=8 * size)
        if value is None:
            raise item.error("value", "missing")
        name = item.string("name") or f"reply[{offset:#x}]"
        fields.append(ReplyField(name, offset, size, value, is_status))
    status, _ = reader.status("status")
    return CommunicateExpect(
        status=status, return_buffer_size=reader.number("return_buffer_size"),
        reply=reader.hexdata("reply_hex"), reply_prefix=reader.hexdata("reply_prefix_hex"),
        fields=tuple(fields), stop=reader.stop("stop"),
        header_error=bool(reader.boolean("header_error")))


def _swsmi_step(reader: _Reader) -> SwSmiStep:
    command = reader.number("command", bits=8)
    if command is None:
        raise reader.error("command", "missing (the APM_CNT byte)")
    data = reader.number("data", bits=8)
    expect = reader.child("expect", _SWSMI_EXPECT_KEYS)
    return SwSmiStep(
        index=reader.step, name=reader.step_name, command=command,
        data=0 if data is None else data, regs=reader.numbers("regs"),
        expect=SwSmiExpect() if expect is None else SwSmiExpect(
            stop=expect.stop("stop"), save_state=expect.numbers("save_state"),
            registers=expect.numbers("registers")))


class _Reader:
    """One TOML table under validation, knowing how to name itself in an error."""

    def __init__(self, data: Mapping[str, object], allowed: Collection[str], *, origin: str,
                 where: str, path: Path | None, step: int = 0, prefix: str = "") -> None:
        self._data = data
        self._origin = origin
        self._where = where
        self._path = path
        self.step = step
        self._prefix = prefix
        self.step_name = f"step {step}"
        if step and prefix == "":
            name = data.get("name")
            if isinstance(name, str) and name:
                self.step_name = name
                self._where = f"step {step} ({name!r})"
        self.restrict(allowed)

    def restrict(self, allowed: Collection[str]) -> None:
        """Reject keys outside ``allowed``."""
        unknown = sorted(set(self._data) - set(allowed))
        if unknown:
            raise self.error(unknown[0], f"unknown key (allowed here: {', '.join(allowed)})")

    def error(self, key: str, problem: str) -> SessionError:
        """A SessionError naming this table's step and ``key``."""
        return SessionError(f"{self._origin}: {self._where}: field '{self._prefix}{key}': "
                            f"{problem}", path=str(self._path) if self._path else None,
                            step=self.step or None)

    def _derive(self, data: Mapping[str, object], allowed: Collection[str], prefix: str,
                step: int | None = None) -> _Reader:
        where = self._where if step is None else f"step {step}"
        return _Reader(data, allowed, origin=self._origin, where=where, path=self._path,
                       step=self.step if step is None else step,
                       prefix=self._prefix + prefix if step is None else "")

    def child(self, key: str, allowed: Collection[str]) -> _Reader | None:
        """The sub-table ``key``, or None when absent."""
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        return self._derive(value, allowed, f"{key}.")

    def children(self, key: str, allowed: Collection[str], *,
                 per_step: bool = False) -> list[_Reader]:
        """The array of tables ``key`` (``[[key]]``), empty when absent."""
        value = self._data.get(key, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {_kind(value)}")
        if per_step:
            return [self._derive(item, allowed, "", step=number)
                    for number, item in enumerate(value, 1)]
        return [self._derive(item, allowed, f"{key}[{number}].")
                for number, item in enumerate(value, 1)]

    def string(self, key: str) -> str | None:
        """A string value."""
        value = self._data.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.error(key, f"expected a string, got {_kind(value)}")

    def boolean(self, key: str) -> bool | None:
        """A boolean value."""
        value = self._data.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.error(key, f"expected true or false, got {_kind(value)}")

    def real(self, key: str) -> float | None:
        """A number of seconds."""
        value = self._data.get(key)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise self.error(key, f"expected a number, got {_kind(value)}")

    def number(self, key: str, *, bits: int = 64) -> int | None:
        """An unsigned integer of at most ``bits`` bits (an integer or a "0x..." string)."""
        value = self._data.get(key)
        return None if value is None else self._unsigned(key, value, bits)

    def status(self, key: str, *, bits: int = 64) -> tuple[int | None, bool]:
        """An EFI_STATUS (``EFI_*`` name or integer) and whether it was given as a name."""
        value = self._data.get(key)
        if isinstance(value, str) and value.upper().startswith("EFI_"):
            try:
                return int(EfiStatus[value.upper().removeprefix("EFI_")]), True
            except KeyError:
                raise self.error(key, f"unknown EFI status name {value!r}") from None
        return (None if value is None else self._unsigned(key, value, bits)), False

    def hexdata(self, key: str) -> bytes | None:
        """Bytes written as hexadecimal digits (whitespace allowed)."""
        text = self.string(key)
        if text is None:
            return None
        digits = "".join(text.split())
        if len(digits) % 2:
            raise self.error(key, f"odd number of hex digits ({len(digits)})")
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise self.error(key, "not hexadecimal") from None

    def numbers(self, key: str) -> dict[str, int]:
        """An inline table of ``name = integer``."""
        value = self._data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table of name = integer, got {_kind(value)}")
        return {name: self._unsigned(f"{key}.{name}", item, 64) for name, item in value.items()}

    def stop(self, key: str) -> StopReason:
        """A StopReason value, HALTED when absent."""
        text = self.string(key)
        if text is None:
            return StopReason.HALTED
        try:
            return _STOPS[text]
        except KeyError:
            raise self.error(key, f"unknown stop {text!r} (known: {', '.join(_STOPS)})") \
                from None

    def _unsigned(self, key: str, value: object, bits: int) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value.strip(), 0)
            except ValueError:
                number = None
        if number is None:
            raise self.error(key, f"expected an integer, got {_kind(value)}")
        if not 0 <= number < 1 << bits:
            raise self.error(key, f"{number:#x} does not fit {bits} bits unsigned")
        return number


def _kind(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    return {bool: "a boolean", int: "an integer", float: "a float", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


# -- replay --------------------------------------------------------------------------------------
MachineFactory = Callable[[MachineSpec], Machine]
"""Builds the Machine for a session from its ``[machine]`` table."""


def replay(session: Session, machine_factory: MachineFactory | None = None) -> SessionReport:
    """Run every step of ``session`` on one Machine and compare with the expectations.

    A request the communicator refuses (payload too large, unknown buffer) or a
    software SMI with an invalid register is a failed step, not an exception.

    Raises:
        SmmemuError: the Machine could not be built.
    """
    factory = machine_factory or MachineSpec.build
    with factory(session.machine) as machine:
        steps = tuple(_replay_step(machine, step) for step in session.steps)
        profile = machine.profile.name
    return SessionReport(name=session.name, profile=profile, steps=steps, path=session.path)


def _replay_step(machine: Machine, step: Step) -> StepReport:
    started = time.perf_counter()
    try:
        if isinstance(step, CommunicateStep):
            result = machine.communicate(step.guid, step.payload, buffer_id=step.buffer_id)
            mismatches = _check_communicate(step.expect, result)
            smi = result.smi
        else:
            smi = machine.software_smi(step.command, step.data, regs=dict(step.regs))
            mismatches = _check_swsmi(step.expect, smi)
    except (CommBufferError, ConfigError) as err:
        return StepReport(step.index, step.name, step.kind,
                          (Mismatch("error", "none", str(err)),),
                          elapsed=time.perf_counter() - started)
    return StepReport(step.index, step.name, step.kind, tuple(mismatches), smi.stop,
                      len(smi.smis), smi.elapsed)


def _check_stop(expected: StopReason, smi: SmiResult) -> list[Mismatch]:
    if smi.stop is expected:
        return []
    fault = smi.fault
    detail = fault.describe().splitlines()[0] if fault is not None else smi.detail
    return [Mismatch("stop", expected.value, smi.stop.value, detail)]


def _check_communicate(expect: CommunicateExpect, result: CommResult) -> list[Mismatch]:
    out = _check_stop(expect.stop, result.smi)
    if (result.header_error is not None) != expect.header_error:
        out.append(Mismatch("header_error", "a changed header" if expect.header_error else "none",
                            result.header_error or "none"))
    if expect.status is not None and result.status != expect.status:
        out.append(Mismatch("status", _status(expect.status), _status(result.status)))
    size = expect.return_buffer_size
    if size is not None and result.return_buffer_size != size:
        out.append(Mismatch("return_buffer_size", f"{size:#x}",
                            f"{result.return_buffer_size:#x}"))
    if expect.reply is not None and result.data != expect.reply:
        out.append(_bytes_mismatch("reply_hex", expect.reply, result.data))
    prefix = expect.reply_prefix
    if prefix is not None and result.data[:len(prefix)] != prefix:
        out.append(_bytes_mismatch("reply_prefix_hex", prefix, result.data[:len(prefix)]))
    for item in expect.fields:
        label = f"reply_field {item.name} (offset {item.offset:#x}, {item.size} bytes)"
        shown = _status if item.is_status else hex
        raw = result.data[item.offset:item.offset + item.size]
        if len(raw) < item.size:
            out.append(Mismatch(label, shown(item.value), "absent",
                                f"the reply is only {len(result.data)} bytes"))
            continue
        actual = int.from_bytes(raw, "little")
        if actual != item.value:
            out.append(Mismatch(label, shown(item.value), shown(actual)))
    return out


def _check_swsmi(expect: SwSmiExpect, smi: SmiResult) -> list[Mismatch]:
    out = _check_stop(expect.stop, smi)
    for group, expected, actual in (("save_state", expect.save_state, smi.save_state),
                                    ("registers", expect.registers, smi.registers)):
        for name, value in expected.items():
            got = actual.get(name)
            if got != value:
                out.append(Mismatch(f"{group}.{name}", f"{value:#x}",
                                    "absent" if got is None else f"{got:#x}"))
    return out


def _status(value: int) -> str:
    name = status_name(value)
    return name if name.startswith("0x") else f"{name} ({value:#x})"


def _bytes_mismatch(label: str, expected: bytes, actual: bytes) -> Mismatch:
    first = next((i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
                 min(len(expected), len(actual)))
    detail = f"first difference at offset {first:#x}"
    if len(expected) != len(actual):
        detail += f"; {len(actual)} bytes, expected {len(expected)}"
    return Mismatch(label, expected.hex(), actual.hex(), detail)
