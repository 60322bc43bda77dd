"""smmemu workloads: the timed rows, and the instruction counts the floor is sized from.

Every workload is one public-API call on a default ``Machine("q35")``:

* ``version_info``: ``communicate`` to the MM Supervisor with a VERSION_INFO request
  (24-byte request header plus 16 bytes of room for the reply: 64 bytes in the
  comm buffer with the 24-byte MM communicate header);
* ``echo_64`` / ``echo_4k``: ``communicate`` to the echo handler with 64 bytes / 4 KiB;
* ``swsmi``: ``software_smi(0x42)`` (CHIPSEC style ``out 0xB2, ax``; no comm buffer).

Counting and SMM-time measurements use their own Machines with extra hooks; the
timed Machines are never instrumented.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import smmemu
from smmbench import stats

VERSION_INFO_REQUEST = struct.pack("<IIIIQ", 0x5055534D, 1, 3, 0, 0) + bytes(16)
VERSION_INFO_GUID = "8c633b23-1260-4ea6-830f-7ddc97382111"
ECHO_GUID = "12345678-1234-5678-1234-567890abcdef"
SWSMI_COMMAND = 0x42
MM_COMMUNICATE_HEADER = 24


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of round trip through the public API."""

    key: str
    label: str
    payload: bytes | None  # None: a raw software SMI, no comm buffer
    guid: str | None

    @property
    def buffer_bytes(self) -> int:
        """Bytes the DXE side writes to and reads back from the comm buffer."""
        return 0 if self.payload is None else MM_COMMUNICATE_HEADER + len(self.payload)

    def call(self, machine: smmemu.Machine) -> Callable[[], object]:
        """A zero-argument callable doing one round trip on ``machine``."""
        if self.payload is None:
            return lambda: machine.software_smi(SWSMI_COMMAND)
        communicate, guid, payload = machine.communicate, self.guid, self.payload
        if guid is None:
            raise ValueError(f"{self.key}: a payload needs a recipient GUID")
        return lambda: communicate(guid, payload)

    def check(self, result: object) -> None:
        """Raise if ``result`` is not the expected reply."""
        if self.payload is None:
            if not isinstance(result, smmemu.SmiResult) or not result.ok:
                raise RuntimeError(f"software_smi({SWSMI_COMMAND:#x}) did not complete: {result!r}")
            return
        if not isinstance(result, smmemu.CommResult) or result.status != 0:
            status = getattr(result, "status", None)
            shown = f"{status:#x}" if isinstance(status, int) else repr(status)
            raise RuntimeError(f"{self.label}: status {shown}, expected EFI_SUCCESS")
        if self.key == "version_info":
            version, patch, max_level = struct.unpack_from("<IIQ", result.data, 24)
            if (version, patch, max_level) != (0x0001_0000, 1, 4):
                raise RuntimeError(
                    f"unexpected VERSION_INFO reply {version:#x}/{patch}/{max_level}")
        elif result.data[:len(self.payload)] != self.payload:
            raise RuntimeError(f"{self.label}: the echo reply differs from the request")


WORKLOADS = (
    Workload("version_info", "VERSION_INFO (communicate)", VERSION_INFO_REQUEST,
             VERSION_INFO_GUID),
    Workload("echo_64", "echo 64 B (communicate)", bytes(range(64)), ECHO_GUID),
    Workload("echo_4k", "echo 4 KiB (communicate)", bytes(i & 0xFF for i in range(4096)),
             ECHO_GUID),
    Workload("swsmi", f"software_smi({SWSMI_COMMAND:#x})", None, None),
)


def machine_batch(workload: Workload) -> tuple[Callable[[int], float], smmemu.Machine]:
    """A fresh Machine and a batch function timing ``workload`` on it."""
    machine = smmemu.Machine("q35")
    call = workload.call(machine)
    workload.check(call())
    return stats.timed_loop(call, workload.check), machine


@dataclass(frozen=True, slots=True)
class InstructionCount:
    """Guest instructions one round trip executes, as UC_HOOK_CODE sees them.

    The hook fires once per instruction and once more per iteration of a ``rep``
    string instruction: ``smm`` counts every call, ``smm_rep_iterations`` the calls
    that repeated the previous address (the extra iterations), ``smm_runs`` the
    straight-line runs (1 + the control transfers that changed RIP). ``smm_writes``
    and ``smm_reads`` are the data accesses in SMM (UC_HOOK_MEM_WRITE/READ; pushes,
    calls and ``rep`` iterations included).
    """

    smm: int
    non_smm: int
    smm_rep_iterations: int
    smm_runs: int
    smm_writes: int = 0
    smm_reads: int = 0

    @property
    def smm_distinct_writes(self) -> int:
        """SMM writes not made by the extra ``rep`` iterations (one write per iteration)."""
        return max(0, self.smm_writes - self.smm_rep_iterations)

    @property
    def smm_distinct(self) -> int:
        """SMM instructions with each ``rep`` counted once."""
        return self.smm - self.smm_rep_iterations

    @property
    def run_length(self) -> float:
        """Average instructions (``rep`` counted once) between control transfers in SMM."""
        return self.smm_distinct / self.smm_runs if self.smm_runs else float(self.smm_distinct)

    def to_json(self) -> dict[str, Any]:
        return {"smm": self.smm, "smm_rep_iterations": self.smm_rep_iterations,
                "smm_distinct": self.smm_distinct, "non_smm": self.non_smm,
                "smm_runs": self.smm_runs, "smm_run_length": round(self.run_length, 2),
                "smm_writes": self.smm_writes, "smm_reads": self.smm_reads,
                "smm_distinct_writes": self.smm_distinct_writes}


def count_instructions(
    workloads: tuple[Workload, ...],
) -> tuple[dict[str, InstructionCount], dict[str, str]]:
    """Count what one round trip of each workload executes, on an instrumented Machine.

    Returns the counts and, per workload that could not be counted, the error.
    """
    machine = smmemu.Machine("q35")
    try:
        base, size = machine.smram[0]
        end = base + size
        engine = machine.cpu.engine
        cpu = machine.cpu
        state = dict.fromkeys(("smm", "non", "rep", "runs", "prev", "next", "w", "r"), 0)

        def on_smm(address: int, length: int) -> None:
            state["smm"] += 1
            if address == state["prev"]:
                state["rep"] += 1
                return
            if address != state["next"]:
                state["runs"] += 1
            state["prev"], state["next"] = address, address + length

        def on_non_smm(_address: int, _length: int) -> None:
            state["non"] += 1

        def on_access(is_write: bool, _address: int, _size: int, _value: int) -> None:
            if cpu.in_smm:
                state["w" if is_write else "r"] += 1

        # Code hooks bind when code is translated (unicorn_probe.md row 11): drop what the
        # boot SMI translated so the hooks see every instruction.
        engine.on_code(base, end - 1, on_smm)
        engine.on_code(0, base - 1, on_non_smm)
        engine.on_memory_access(0, 0xFFFF_FFFF_FFFF_FFFF, on_access)
        engine.invalidate_code(base, end)
        engine.invalidate_code(0, 0x0010_0000)
        counts: dict[str, InstructionCount] = {}
        errors: dict[str, str] = {}
        for workload in workloads:
            try:
                call = workload.call(machine)
                workload.check(call())  # first call: translation, lazy state
                state.update(dict.fromkeys(state, 0))
                state["prev"] = state["next"] = -1
                workload.check(call())
            except Exception as err:  # noqa: BLE001 - the other workloads are still counted
                errors[workload.key] = f"{type(err).__name__}: {err}"
                continue
            counts[workload.key] = InstructionCount(state["smm"], state["non"], state["rep"],
                                                    state["runs"], state["w"], state["r"])
        return counts, errors
    finally:
        machine.close()


def smm_time(workload: Workload, calls: int) -> tuple[float, float]:
    """(seconds in SMM, seconds in total) per round trip, on a separate Machine.

    "In SMM" runs from the end of the host's SMI entry (the CPU at SMBASE+0x8000)
    to the start of its RSM: the MM core, the handler and their port I/O and MSR
    hooks. Entry and RSM themselves happen inside hooks of the same ``emu_start``
    as the non-SMM code, so they are measured by wrapping the CPU's entry and RSM
    steps, not the engine's run.
    """
    machine = smmemu.Machine("q35")
    try:
        cpu = machine.cpu
        spent = [0.0]
        entered: list[float] = []
        # The CPU's private entry and RSM steps: a benchmark probe, not an API.
        enter = cpu._enter_smm
        rsm_steps: dict[str, Callable[..., int]] = {"_rsm": cpu._rsm,
                                                    "_rsm_unchanged": cpu._rsm_unchanged}

        def timed_enter(*, halted: bool = False) -> int:
            rip = enter(halted=halted)
            entered.append(time.perf_counter())
            return rip

        def timed(step: Callable[..., int]) -> Callable[..., int]:
            def run(*args: object) -> int:
                if entered:
                    spent[0] += time.perf_counter() - entered.pop()
                return step(*args)
            return run

        cpu._enter_smm = timed_enter  # type: ignore[method-assign]
        for name, step in rsm_steps.items():
            setattr(cpu, name, timed(step))
        call = workload.call(machine)
        for _ in range(50):
            call()
        spent[0] = 0.0
        started = time.perf_counter()
        for _ in range(calls):
            result = call()
        total = time.perf_counter() - started
        workload.check(result)
        if spent[0] == 0.0:
            raise RuntimeError("no SMI entry reached RSM (has the CPU's SMI path changed?)")
        return spent[0] / calls, total / calls
    finally:
        machine.close()
