"""Runs several CPUs in deterministic, bounded turns.

One Unicorn instance is one CPU (smm_semantics.md 7.4), so a machine with N
CPUs interleaves N engines. Each turn gives a running CPU a quantum of code
(counted in bytes of executed basic blocks by a block hook, the CPU's virtual
clock) in CPU-index order; a halted CPU with a pending SMI is woken in its
turn. Spin-waits therefore make progress, and the same inputs give the same
interleaving and the same results. A single-CPU machine does not come here:
it runs without the block hook, at full speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from smmemu.cpu import Cpu, RunState
from smmemu.results import Finding, SmiRecord, SmiResult, StopReason

__all__ = ["QUANTUM", "Scheduler"]

QUANTUM = 0x800
"""Bytes of code a CPU runs per turn (a few hundred instructions)."""


@dataclass(slots=True)
class _Collected:
    smis: list[SmiRecord] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    abnormal: SmiResult | None = None


class Scheduler:
    """Interleaves the CPUs of one machine until every CPU has halted again."""

    def __init__(self, cpus: Sequence[Cpu], on_round: Callable[[], None],
                 clock: Callable[[], int], virtual_budget_ns: int | None) -> None:
        self._cpus = list(cpus)
        self._on_round = on_round
        self._clock = clock
        self._virtual_budget_ns = virtual_budget_ns

    def run(self, initiator: Cpu, budget: float) -> SmiResult:
        """Drive ``initiator`` (already started or woken) and every CPU an SMI reaches."""
        collected = {cpu.index: _Collected() for cpu in self._cpus}
        outcome: SmiResult | None = None
        deadline = time.monotonic() + budget
        virtual_deadline = (None if self._virtual_budget_ns is None
                            else self._clock() + self._virtual_budget_ns)
        started = time.perf_counter()
        while True:
            active = False
            for cpu in self._cpus:
                if cpu.state is RunState.IDLE and cpu.halted and cpu.smi_pending:
                    cpu.wake()
                if cpu.state is RunState.RUNNING:
                    cpu.step(QUANTUM)
                    active = True
                if cpu.state is RunState.DONE:
                    result = cpu.result()
                    bucket = collected[cpu.index]
                    bucket.smis += result.smis
                    bucket.findings += result.findings
                    if result.stop is not StopReason.HALTED and bucket.abnormal is None:
                        bucket.abnormal = result
                    if cpu is initiator and outcome is None:
                        outcome = result
            if not active:
                break
            self._on_round()
            if time.monotonic() > deadline:
                for cpu in self._cpus:
                    cpu.stop_with(StopReason.BUDGET_EXCEEDED, "budget exceeded")
            elif virtual_deadline is not None and self._clock() > virtual_deadline:
                for cpu in self._cpus:
                    cpu.stop_with(StopReason.BUDGET_EXCEEDED, "virtual-time budget exceeded")
        if outcome is None:
            outcome = initiator.result()
        return self._merge(initiator, outcome, collected, time.perf_counter() - started)

    @staticmethod
    def _merge(initiator: Cpu, outcome: SmiResult, collected: dict[int, _Collected],
               elapsed: float) -> SmiResult:
        stop, detail = outcome.stop, outcome.detail
        findings: list[Finding] = []
        for index, bucket in sorted(collected.items()):
            findings += bucket.findings
            if stop is StopReason.HALTED and bucket.abnormal is not None:
                stop = bucket.abnormal.stop
                detail = f"CPU {index}: {bucket.abnormal.detail}"
        return SmiResult(
            stop=stop, smis=collected[initiator.index].smis, registers=outcome.registers,
            findings=findings, detail=detail, elapsed=elapsed,
            cpu_smis={index: bucket.smis for index, bucket in sorted(collected.items())},
        )
