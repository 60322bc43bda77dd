"""What the guest did, as values: stop reasons, fault records, findings and SMI results.

Guest-visible outcomes are never exceptions (reference/aesthetics.md 5.2): a
handler that faults, a budget that runs out or an RSM that shuts the CPU down
comes back as a :class:`StopReason` with a record, and the Machine stays usable.
``to_json()`` renders values with addresses as ``"0x..."`` strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from smmemu.memory import SmramAccess
from smmemu.profiles import SaveStateKind
from smmemu.smm.savestate import decode_save_state

__all__ = ["CommResult", "FaultRecord", "Finding", "SmiRecord", "SmiResult", "StopReason"]

EXCEPTION_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
    19: "#XM", 20: "#VE", 21: "#CP",
}


class StopReason(enum.Enum):
    """Why a guest run ended."""

    HALTED = "halted"
    """Non-SMM code reached ``hlt``: the normal end of a trampoline."""
    SMM_FAULT = "smm-fault"
    """An exception inside SMM, delivered to the MM core, which recorded it and dead-looped."""
    SHUTDOWN = "shutdown"
    """The CPU shut down: an inconsistent RSM image or an exception with no usable IDT gate."""
    BUDGET_EXCEEDED = "budget-exceeded"
    """The run did not finish within its time budget (a handler that never returns)."""
    GUEST_FAULT = "guest-fault"
    """An exception in non-SMM code (the DXE side has no IDT in smmemu)."""
    SMRAM_FETCH = "smram-fetch"
    """Non-SMM code tried to execute SMRAM."""
    SMM_HALT = "smm-halt"
    """SMM code executed ``hlt`` without recording a fault."""
    MACHINE_CHECK = "machine-check"
    """SMM fetched code outside SMRAM with MSR_SMM_FEATURE_CONTROL.SMM_Code_Chk_En set."""


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """An exception taken in SMM, as the MM core's handler recorded it."""

    vector: int
    error_code: int
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    cr2: int
    cr3: int
    registers: dict[str, int]
    disassembly: tuple[str, ...] = ()
    symbol: str | None = None
    call_site: str | None = None
    """For a fault at an address no image holds: the call that jumped there (caller as
    image+offset, the operand, and the protocol or services table the pointer came from)."""

    @property
    def name(self) -> str:
        """Mnemonic of the vector (``#PF``...)."""
        return EXCEPTION_NAMES.get(self.vector, f"vector {self.vector}")

    def describe(self) -> str:
        """A readable multi-line report."""
        where = f" ({self.symbol})" if self.symbol else ""
        lines = [
            f"{self.name} in SMM at rip {self.rip:#x}{where}, error code {self.error_code:#x}",
            f"  cr2 {self.cr2:#x}  cr3 {self.cr3:#x}  rsp {self.rsp:#x}  rflags {self.rflags:#x}",
        ]
        names = sorted(self.registers)
        for index in range(0, len(names), 4):
            chunk = names[index:index + 4]
            lines.append("  " + "  ".join(f"{n:>3} {self.registers[n]:#018x}" for n in chunk))
        lines.extend(f"  {text}" for text in self.disassembly)
        if self.call_site:
            lines.append(f"  reached by: {self.call_site}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a security reviewer should see (SMRAM accessed from outside SMM, a call-out...)."""

    kind: str
    message: str
    address: int | None = None


@dataclass(slots=True)
class SmiRecord:
    """One SMI from entry to RSM (or to the stop that ended it).

    The save-state map is kept as the bytes the CPU wrote and decoded on first use.
    """

    index: int
    smbase: int
    kind: SaveStateKind
    raw_save_state: bytes
    rsm: bool = False
    stop: StopReason | None = None
    fault: FaultRecord | None = None
    detail: str = ""
    _decoded: dict[str, int] | None = None

    @property
    def save_state(self) -> dict[str, int]:
        """The save-state map at entry, as lower-case names (``rax``, ``rip``, ``smbase``...)."""
        if self._decoded is None:
            self._decoded = decode_save_state(self.kind, self.raw_save_state)
        return dict(self._decoded)


@dataclass(slots=True)
class SmiResult:
    """The outcome of a guest run that raised one or more SMIs."""

    stop: StopReason
    smis: list[SmiRecord]
    registers: dict[str, int]
    findings: list[Finding] = field(default_factory=list)
    smram_accesses: list[SmramAccess] = field(default_factory=list)
    detail: str = ""
    elapsed: float = 0.0
    cpu_smis: dict[int, list[SmiRecord]] = field(default_factory=dict)
    """Every CPU's SMIs in this run (only the initiating CPU's on a one-CPU machine)."""

    @property
    def save_state(self) -> dict[str, int]:
        """The save-state map of the first SMI, as the MM core saw it at entry."""
        return self.smis[0].save_state if self.smis else {}

    @property
    def save_states(self) -> dict[int, dict[str, int]]:
        """Per CPU, the save-state map of its first SMI in this run."""
        per_cpu = self.cpu_smis or {0: self.smis}
        return {cpu: smis[0].save_state for cpu, smis in per_cpu.items() if smis}

    @property
    def fault(self) -> FaultRecord | None:
        """The SMM fault that ended the run, if any."""
        return next((smi.fault for smi in self.smis if smi.fault is not None), None)

    @property
    def ok(self) -> bool:
        """True when every SMI returned through RSM and the caller's code finished."""
        return self.stop is StopReason.HALTED and all(smi.rsm for smi in self.smis)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (addresses and register values as hex strings)."""
        return {
            "stop": self.stop.value,
            "ok": self.ok,
            "detail": self.detail,
            "smis": [
                {
                    "index": smi.index, "smbase": hex(smi.smbase), "rsm": smi.rsm,
                    "stop": smi.stop.value if smi.stop else None,
                    "save_state": _hexdict(smi.save_state),
                    "fault": _fault_json(smi.fault), "detail": smi.detail,
                }
                for smi in self.smis
            ],
            "cpus": {str(cpu): [{"index": smi.index, "smbase": hex(smi.smbase), "rsm": smi.rsm}
                                for smi in smis] for cpu, smis in self.cpu_smis.items()},
            "registers": _hexdict(self.registers),
            "findings": [{"kind": f.kind, "message": f.message} for f in self.findings],
            "smram_accesses": [a.describe() for a in self.smram_accesses],
        }


@dataclass(frozen=True, slots=True)
class CommResult:
    """The reply to one MM communicate request.

    ``status`` is the mailbox's ReturnStatus, ``data`` the reply payload
    (ReturnBufferSize minus the 24-byte header), ``buffer`` the whole comm
    buffer after the SMI. When ``smi.fault`` is set the handler never returned
    and the mailbox fields are whatever they held before.
    """

    status: int
    data: bytes
    return_buffer_size: int
    buffer: bytes
    smi: SmiResult
    header_error: str | None = None
    """patina's post-SMI check: set when the handler changed the header GUID or MessageLength."""

    @property
    def fault(self) -> FaultRecord | None:
        """The SMM fault, if the request ended in one."""
        return self.smi.fault

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "status": f"{self.status:#x}",
            "return_buffer_size": self.return_buffer_size,
            "data": self.data.hex(),
            "header_error": self.header_error,
            "smi": self.smi.to_json(),
        }


def _hexdict(values: dict[str, int]) -> dict[str, str]:
    return {key: f"{value:#x}" for key, value in sorted(values.items())}


def _fault_json(fault: FaultRecord | None) -> dict[str, Any] | None:
    if fault is None:
        return None
    return {
        "vector": fault.vector, "name": fault.name, "error_code": hex(fault.error_code),
        "rip": hex(fault.rip), "cr2": hex(fault.cr2), "cr3": hex(fault.cr3),
        "rsp": hex(fault.rsp), "rflags": hex(fault.rflags), "symbol": fault.symbol,
        "call_site": fault.call_site, "registers": _hexdict(fault.registers),
        "disassembly": list(fault.disassembly),
    }
