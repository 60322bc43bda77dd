"""The printed table and the target verdicts, both built from the JSON result."""

from __future__ import annotations

import statistics
from typing import Any

MIB = 1024.0

TARGETS = (
    # key, label, goal text, comparison, goal value
    ("version_info_per_s", "VERSION_INFO round trips/s", ">= 25,000", ">=", 25_000.0),
    ("vs_qiling", "VERSION_INFO vs Qiling SW SMI (x faster)", ">= 35x", ">=", 35.0),
    ("vs_floor", "VERSION_INFO vs floor (x slower)", "<= 4x", "<=", 4.0),
    ("startup_ms", "Machine start-up after import (ms)", "< 150", "<", 150.0),
    ("peak_rss_mib", "peak RSS, Machine + 1000 SMIs (MiB)", "< 100", "<", 100.0),
)


STARTUP_LABELS = {
    "import_ms": "import smmemu",
    "machine_ms": 'Machine("q35") after import',
    "total_ms": "import + Machine",
    "process_wall_ms": "whole process, parent's wall clock",
}


def _fmt_us(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per issue target: PASS, FAIL or N/A (with the reason)."""
    measured: dict[str, float | None] = {
        "version_info_per_s": None, "vs_qiling": None, "vs_floor": None,
        "startup_ms": None, "peak_rss_mib": None,
    }
    rows = result["rows"]
    smm = rows.get("smmemu.version_info", {}).get("summary")
    if smm:
        measured["version_info_per_s"] = smm["per_second"]
    ratios = result.get("ratios", {})
    measured["vs_qiling"] = ratios.get("version_info_vs_qiling")
    measured["vs_floor"] = ratios.get("version_info_vs_floor")
    startup = result.get("startup", {}).get("summary")
    if startup:
        measured["startup_ms"] = startup["machine_ms"]["median"]
    rss = result.get("rss", {}).get("data")
    if rss:
        measured["peak_rss_mib"] = rss["after_smis_kib"] / MIB
    spread = result.get("ratios_per_round", {})
    ranges = {"vs_qiling": spread.get("version_info_vs_qiling"),
              "vs_floor": spread.get("version_info_vs_floor")}
    verdicts = []
    for key, label, goal_text, op, goal in TARGETS:
        value = measured[key]
        if value is None:
            verdict = "N/A"
        else:
            ok = {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]
            verdict = "PASS" if ok else "FAIL"
        rounds = ranges.get(key)
        verdicts.append({"key": key, "target": label, "goal": goal_text, "measured": value,
                         "per_round": rounds, "result": verdict})
    return verdicts


def render(result: dict[str, Any]) -> str:
    """The human-readable report."""
    out: list[str] = []
    meta = result["meta"]
    out.append(f"smmemu benchmark  {meta['started']}  git {meta['git']}")
    out.append(f"  host: {meta['host']}")
    out.append(f"  {meta['versions']}")
    opts = result["options"]
    out.append(f"  {opts['rounds']} interleaved rounds per row, about {opts['target_seconds']} s "
               f"and at least {opts['min_calls']} calls per sample; load average "
               f"{meta['loadavg_before']} before, {meta['loadavg_after']} after")
    out.append("")
    header = (f"{'row':<52} {'us/call median [min .. p90]':>30} {'IQR':>5} {'calls/s':>9} "
              f"{'/floor':>7} {'xQiling':>8}")
    out.append(header)
    out.append("-" * len(header))
    ratios = result.get("ratios", {})
    group = None
    for key, row in result["rows"].items():
        if row["group"] != group:
            group = row["group"]
            if len(out) > 8:
                out.append("")
        label = row["label"]
        if row.get("error"):
            out.append(f"{label:<52} {row['error']}")
            continue
        s = row["summary"]
        if s is None:
            out.append(f"{label:<52} (no samples)")
            continue
        cell = f"{_fmt_us(s['median_us'])} [{_fmt_us(s['min_us'])} .. {_fmt_us(s['p90_us'])}]"
        workload = key.split(".", 1)[1]
        floor = ratios.get(f"{workload}_vs_floor") if row["group"] == "smmemu" else None
        qil = ratios.get(f"{workload}_vs_qiling") if row["group"] == "smmemu" else None
        floor_text = f"{floor:.1f}x" if floor is not None else ""
        qil_text = f"{qil:.1f}x" if qil is not None else ""
        out.append(f"{label:<52} {cell:>30} {s['iqr_percent']:>4.0f}% "
                   f"{_fmt_rate(s['per_second']):>9} {floor_text:>7} {qil_text:>8}")
    qiling = result.get("qiling", {})
    if qiling.get("unavailable"):
        out.append(f"{'qiling':<52} unavailable: {qiling['unavailable']}")
    out.append("")
    out.extend(_derived(result))
    out.append("")
    out.append(f"{'target':<44} {'measured':>12} {'goal':>12}  result  per-round range")
    for verdict in result["targets"]:
        value = verdict["measured"]
        text = "n/a" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.2f}")
        rounds = verdict.get("per_round")
        extra = f"  {rounds['min']:.2f} .. {rounds['max']:.2f}" if rounds else ""
        out.append(f"{verdict['target']:<44} {text:>12} {verdict['goal']:>12}  "
                   f"{verdict['result']:<6}{extra}")
    errors = result.get("errors", {})
    if errors:
        out.append("")
        out.extend(f"error in {name}: {message}" for name, message in errors.items())
    return "\n".join(out)


def _derived(result: dict[str, Any]) -> list[str]:
    out = []
    startup = result.get("startup", {}).get("summary")
    if startup:
        out.append(f"start-up, ms (median [min .. max] of {result['startup']['runs']} fresh "
                   "processes):")
        for name, text in STARTUP_LABELS.items():
            v = startup.get(name)
            if v:
                out.append(f"  {text:<42} {v['median']:7.1f} [{v['min']:.1f} .. {v['max']:.1f}]")
    rss = result.get("rss", {}).get("data")
    if rss:
        hwm = rss.get("vm_hwm_kib")
        hwm_text = f" (VmHWM {hwm / MIB:.1f} MiB)" if hwm else ""
        out.append(f"peak RSS (ru_maxrss): {rss['after_import_kib'] / MIB:.1f} MiB after import, "
                   f"{rss['after_machine_kib'] / MIB:.1f} MiB with a Machine, "
                   f"{rss['after_smis_kib'] / MIB:.1f} MiB after {rss['smis']} VERSION_INFO SMIs"
                   f"{hwm_text}")
    snapshots = result.get("snapshots")
    if snapshots:
        restore, take = snapshots["restore_us"], snapshots["take_us"]
        out.append(f"snapshot: restore after one VERSION_INFO {restore['median']:.1f} us "
                   f"[{restore['min']:.1f} .. p90 {restore['p90']:.1f}] (target 50 us), "
                   f"take {take['median'] / 1e3:.2f} ms")
    step = result.get("single_step")
    if step:
        out.append(f"debugger single step: {step['steps_per_s']:,.0f} steps/s "
                   f"[{step['min_per_s']:,.0f} .. {step['max_per_s']:,.0f}] through software_smi"
                   f"(0x42), {step['steps_per_smi']} steps each")
    counts = result.get("instructions", {})
    vi = counts.get("version_info")
    if vi:
        out.append(f"guest work per VERSION_INFO SMI: {vi['smm']:,} SMM hook-counted instructions "
                   f"({vi['smm_distinct']} instructions + {vi['smm_rep_iterations']:,} rep "
                   f"iterations, {vi['smm_runs']} straight-line runs) + {vi['non_smm']} non-SMM;")
        writes, plain = vi.get("smm_writes", 0), vi.get("smm_distinct_writes", 0)
        out.append(f"  {writes:,} writes in SMM ({plain} not rep iterations), "
                   f"{vi.get('smm_reads', 0):,} reads")
    smm_time = result.get("smm_time", {}).get("version_info")
    if smm_time and "mips_in_smm" in smm_time:
        out.append(f"time in SMM per VERSION_INFO: {smm_time['smm_us']:.1f} us of "
                   f"{smm_time['total_us']:.1f} us ({smm_time['smm_share_percent']:.0f}%); "
                   f"{smm_time['mips_in_smm']:.1f} M guest instructions/s in SMM, "
                   f"{smm_time['mips_end_to_end']:.1f} M/s end to end")
    calib = result.get("engine_calibration")
    if calib:
        out.append(f"bare Unicorn per loop iteration: store {calib['store_loop_ns']:.1f} ns, "
                   f"load {calib['load_loop_ns']:.1f} ns, ALU {calib['alu_loop_ns']:.1f} ns")
    qiling = result.get("qiling", {}).get("info")
    if qiling:
        out.append(f"qiling {qiling.get('qiling')} (unicorn {qiling.get('unicorn')}): SW SMI "
                   f"{qiling.get('sw_smi', 0):#x}, handler {qiling.get('handler_instructions')} "
                   f"instructions, {qiling.get('service_calls_per_smi')} service calls")
    return out


def summarize_ms(values: list[float]) -> dict[str, float]:
    """Median, min and max of seconds, in milliseconds."""
    return {"median": statistics.median(values) * 1e3, "min": min(values) * 1e3,
            "max": max(values) * 1e3}
