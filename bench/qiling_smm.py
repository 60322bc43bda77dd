"""Qiling's UEFI SMM path under a SW SMI load: the peer baseline for ``bench/run.py``.

Runs with the interpreter of ``bench/.qiling-venv`` (qiling and its own unicorn,
keystone and capstone), never with smmemu's. It reproduces the workload of
``reference/peers.md`` section 4:

* a PE32+ SMM driver (built here, in memory, because no SMM sample ships with
  Qiling) whose entry point finds the SMST through EFI_SMM_BASE2_PROTOCOL and
  registers a handler for SW SMI 0x9F with EFI_SMM_SW_DISPATCH2_PROTOCOL;
* a handler of about 30 instructions that makes two service calls, as the
  efi_fuzz sample peers.md used does: ``SmmLocateProtocol(EFI_SMM_CPU_PROTOCOL)``
  and ``ReadSaveState(RAX, 4 bytes)``, then counts the SMI and keeps RAX;
* the driving loop of peers.md: set RAX, ``ql.os.smm.invoke_swsmi(...)`` with an
  ``onexit`` that stops the engine, then ``ql.emu_start(rip, 2**64 - 1)``.

Modes:
    ``--samples K --batch N`` prints one JSON object with K timed batches of N SMIs.
    ``--serve`` prints a JSON handshake, then answers ``sample N`` lines on stdin with
    one JSON line each (so ``run.py`` can interleave these samples with its own);
    ``quit`` or end of input ends it.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

SW_SMI_INPUT = 0x9F
RAX_SEED = 0x0BADCAFE
IMAGE_BASE = 0x7010_0000  # Qiling's SMM image_address (profiles/uefi.ql): no relocation needed
TEXT_RVA = 0x1000

GUIDS = {
    "guid_smm_base2": "f4ccbfb7-f6e0-47fd-9dd4-10a8f150c191",
    "guid_sw_dispatch2": "18a3c6dc-5eea-48c8-a1c1-b53389f98999",
    "guid_smm_cpu": "eb346b97-975f-4a9f-8b22-f8e92bb3d569",
}
DATA_QWORDS = ("smm_base2", "gsmst", "sw_dispatch", "dispatch_handle", "smm_cpu",
               "register_context", "saved_rax", "last_rax", "smi_count")

# Offsets from the UEFI/PI specifications (checked against Qiling's ctypes structures
# at start-up): EFI_SYSTEM_TABLE.BootServices, EFI_BOOT_SERVICES.LocateProtocol,
# EFI_SMM_SYSTEM_TABLE2.SmmLocateProtocol.
OFF_BOOT_SERVICES = 96
OFF_LOCATE_PROTOCOL = 320
OFF_SMM_LOCATE_PROTOCOL = 208

ENTRY_ASM = f"""
entry:
    push rbx
    sub rsp, 0x30
    mov rbx, qword ptr [rdx + {OFF_BOOT_SERVICES:#x}]
    lea rcx, [rip + guid_smm_base2]
    xor edx, edx
    lea r8, [rip + smm_base2]
    call qword ptr [rbx + {OFF_LOCATE_PROTOCOL:#x}]
    test rax, rax
    jnz entry_done
    mov rcx, qword ptr [rip + smm_base2]
    lea rdx, [rip + gsmst]
    call qword ptr [rcx + 0x8]
    test rax, rax
    jnz entry_done
    mov rax, qword ptr [rip + gsmst]
    lea rcx, [rip + guid_sw_dispatch2]
    xor edx, edx
    lea r8, [rip + sw_dispatch]
    call qword ptr [rax + {OFF_SMM_LOCATE_PROTOCOL:#x}]
    test rax, rax
    jnz entry_done
    mov rcx, qword ptr [rip + sw_dispatch]
    lea rdx, [rip + handler]
    lea r8, [rip + register_context]
    lea r9, [rip + dispatch_handle]
    call qword ptr [rcx]
entry_done:
    add rsp, 0x30
    pop rbx
    ret
"""

HANDLER_ASM = f"""
handler:
    push rbx
    push rsi
    sub rsp, 0x38
    mov rsi, r8
    mov rax, qword ptr [rip + gsmst]
    lea rcx, [rip + guid_smm_cpu]
    xor edx, edx
    lea r8, [rip + smm_cpu]
    call qword ptr [rax + {OFF_SMM_LOCATE_PROTOCOL:#x}]
    test rax, rax
    jnz handler_done
    mov rcx, qword ptr [rip + smm_cpu]
    mov edx, 0x4
    mov r8d, 0x26
    xor r9d, r9d
    lea rax, [rip + saved_rax]
    mov qword ptr [rsp + 0x20], rax
    call qword ptr [rcx]
    test rax, rax
    jnz handler_done
    movzx ebx, byte ptr [rsi + 0x8]
    cmp ebx, {SW_SMI_INPUT:#x}
    jne handler_done
    inc qword ptr [rip + smi_count]
    mov eax, dword ptr [rip + saved_rax]
    mov dword ptr [rip + last_rax], eax
handler_done:
    xor eax, eax
    add rsp, 0x38
    pop rsi
    pop rbx
    ret
"""


def _data_source() -> tuple[str, dict[str, int], int]:
    """The driver's data as labelled directives; returns (source, offsets from its start, size)."""
    lines = ["    .align 0x10", "data_start:"]
    offsets: dict[str, int] = {}
    cursor = 0
    for name, text in GUIDS.items():
        raw = ", ".join(f"{b:#04x}" for b in _guid_bytes(text))
        lines.append(f"{name}:\n    .byte {raw}")
        offsets[name] = cursor
        cursor += 16
    for name in DATA_QWORDS:
        value = SW_SMI_INPUT if name == "register_context" else 0
        lines.append(f"{name}:\n    .quad {value:#x}")
        offsets[name] = cursor
        cursor += 8
    return "\n".join(lines) + "\n", offsets, cursor


def _guid_bytes(text: str) -> bytes:
    import uuid

    return uuid.UUID(text).bytes_le


def build_driver() -> tuple[bytes, dict[str, int], int]:
    """Assemble the driver; returns (section bytes, symbol offsets, handler instruction count).

    Keystone rules from unicorn_probe.md section 7: ``0x`` literals only, no options,
    data reached through ``[rip + label]``, assembled at the load address; the code is
    checked back with capstone.
    """
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    data_source, data, data_size = _data_source()
    source = ENTRY_ASM + HANDLER_ASM + data_source
    base = IMAGE_BASE + TEXT_RVA
    encoding, _count = Ks(KS_ARCH_X86, KS_MODE_64).asm(source, base, as_bytes=True)
    blob = bytes(encoding or b"")
    if len(blob) < data_size or len(blob) > 0x1000:
        raise RuntimeError(f"driver assembled to {len(blob)} bytes")
    data_start = len(blob) - data_size
    code = blob[:data_start].rstrip(b"\x90")  # .align pads with NOPs
    disasm = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, base))
    if sum(i.size for i in disasm) != len(code):
        raise RuntimeError("capstone could not decode the whole driver")
    rets = [i for i in disasm if i.mnemonic == "ret"]
    if len(rets) != 2:
        raise RuntimeError("expected exactly two `ret` in the driver")
    handler_address = rets[0].address + rets[0].size
    handler_insns = sum(1 for i in disasm if i.address >= handler_address)
    for insn in disasm:  # every data reference must land on its label
        if "rip +" in insn.op_str:
            target = insn.address + insn.size + int(insn.op_str.split("rip + ")[1].split("]")[0], 0)
            if target != handler_address and not data_start <= target - base < len(blob):
                raise RuntimeError(f"{insn.mnemonic} {insn.op_str} points outside the data")
    symbols = {name: data_start + offset for name, offset in data.items()}
    symbols["entry"] = 0
    symbols["handler"] = handler_address - base
    if struct.unpack_from("<Q", blob, symbols["register_context"])[0] != SW_SMI_INPUT:
        raise RuntimeError("data labels are not where the layout puts them")
    return blob, symbols, handler_insns


def build_pe(section: bytes, entry_rva: int) -> bytes:
    """A minimal PE32+ image: one RWX section, no relocations, subsystem EFI boot-service driver."""
    file_align, section_align = 0x200, 0x1000
    headers_size = 0x200
    raw_size = (len(section) + file_align - 1) // file_align * file_align
    image_size = TEXT_RVA + (len(section) + section_align - 1) // section_align * section_align
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", 0x8664, 1, 0, 0, 0, 0xF0, 0x0022)
    optional = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B, 1, 0, raw_size, raw_size, 0, entry_rva, TEXT_RVA,
        IMAGE_BASE, section_align, file_align, 0, 0, 0, 0, 0, 0, 0,
        image_size, headers_size, 0, 0x0B, 0,
        0x10000, 0x10000, 0x10000, 0x1000, 0, 16,
    ) + bytes(16 * 8)
    section_header = struct.pack("<8sIIIIIIHHI", b".text\0\0\0", len(section), TEXT_RVA,
                                 raw_size, headers_size, 0, 0, 0, 0, 0xE0000060)
    headers = bytearray(headers_size)
    blob = dos + coff + optional + section_header
    headers[:len(blob)] = blob
    body = bytearray(raw_size)
    body[:len(section)] = section
    return bytes(headers + body)


class QilingSmm:
    """One Qiling UEFI instance with the bench driver loaded and its entry point run."""

    def __init__(self, workdir: Path) -> None:
        from qiling import Qiling
        from qiling.const import QL_VERBOSE
        from qiling.os.uefi.smst import EFI_SMM_SYSTEM_TABLE2
        from qiling.os.uefi.UefiSpec import EFI_BOOT_SERVICES, EFI_SYSTEM_TABLE

        expected = (EFI_SYSTEM_TABLE.BootServices.offset, EFI_BOOT_SERVICES.LocateProtocol.offset,
                    EFI_SMM_SYSTEM_TABLE2.SmmLocateProtocol.offset)
        if expected != (OFF_BOOT_SERVICES, OFF_LOCATE_PROTOCOL, OFF_SMM_LOCATE_PROTOCOL):
            raise RuntimeError(f"unexpected UEFI table offsets in this qiling: {expected}")
        section, self.symbols, self.handler_static_insns = build_driver()
        path = workdir / "BenchSwSmiSmm.efi"  # 'Smm' in the name puts it in Qiling's SMM context
        path.write_bytes(build_pe(section, TEXT_RVA + self.symbols["entry"]))
        self.ql = Qiling([str(path)], str(workdir), verbose=QL_VERBOSE.DISABLED)
        self.ql.run()
        handlers = self.ql.loader.smm_context.swsmi_handlers
        if SW_SMI_INPUT not in handlers:
            raise RuntimeError(f"the driver did not register SW SMI {SW_SMI_INPUT:#x} "
                               f"(registered: {sorted(handlers)})")
        self.entry, self.args = handlers[SW_SMI_INPUT]
        if self.entry != IMAGE_BASE + TEXT_RVA + self.symbols["handler"]:
            raise RuntimeError(f"handler registered at {self.entry:#x}, not the bench handler")
        self.smis = 0

    def _stop(self, ql: Any) -> None:  # noqa: ANN401 - a Qiling instance (untyped library)
        ql.emu_stop()

    def smi(self) -> None:
        """One SW SMI exactly as peers.md section 4 drove them."""
        ql = self.ql
        ql.arch.regs.rax = RAX_SEED + self.smis
        ql.os.smm.invoke_swsmi(0, SW_SMI_INPUT, self.entry, self.args, onexit=self._stop)
        ql.emu_start(ql.arch.regs.rip, 2**64 - 1)
        self.smis += 1

    def read_qword(self, name: str) -> int:
        raw = self.ql.mem.read(IMAGE_BASE + TEXT_RVA + self.symbols[name], 8)
        return int(struct.unpack("<Q", bytes(raw))[0])

    def verify(self) -> None:
        """The handler ran once per SMI and read the RAX set before the last one."""
        count = self.read_qword("smi_count")
        last = self.read_qword("last_rax") & 0xFFFF_FFFF
        expected_last = (RAX_SEED + self.smis - 1) & 0xFFFF_FFFF
        if count != self.smis or last != expected_last:
            raise RuntimeError(f"handler ran {count} times for {self.smis} SMIs, read RAX "
                               f"{last:#x} (expected {expected_last:#x})")

    def count_handler_instructions(self) -> int:
        """Instructions executed inside the driver image by one SMI.

        The hook stays installed: call this only on an instance that is not timed.
        """
        counter = [0]

        def on_code(_ql: Any, _address: int, _size: int) -> None:  # noqa: ANN401
            counter[0] += 1

        low = IMAGE_BASE
        self.ql.hook_code(on_code, begin=low, end=low + 0x2000)
        self.ql.arch.uc.ctl_remove_cache(low, low + 0x2000)  # code hooks bind at translation
        self.smi()
        return counter[0]

    def batch(self, count: int) -> float:
        """Seconds for ``count`` SMIs."""
        smi = self.smi
        started = time.perf_counter()
        for _ in range(count):
            smi()
        return time.perf_counter() - started


def _setup(workdir: Path) -> tuple[QilingSmm, dict[str, Any]]:
    from importlib.metadata import version

    import qiling

    started = time.perf_counter()
    counter = QilingSmm(workdir)
    executed = counter.count_handler_instructions()
    counter.verify()
    bench = QilingSmm(workdir)
    setup_seconds = time.perf_counter() - started
    info = {
        "qiling": qiling.__version__,
        "unicorn": version("unicorn"),
        "python": sys.version.split()[0],
        "handler_instructions": executed,
        "handler_static_instructions": counter.handler_static_insns,
        "service_calls_per_smi": 2,
        "sw_smi": SW_SMI_INPUT,
        "setup_seconds": setup_seconds,
    }
    return bench, info


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="smmemu-qiling-") as tmp:
        try:
            bench, info = _setup(Path(tmp))
            bench.batch(args.warmup)
            bench.verify()
        except Exception as err:  # noqa: BLE001 - reported to the parent as data
            _emit({"error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(limit=4)})
            return 1
        if not args.serve:
            samples = [bench.batch(args.batch) for _ in range(args.samples)]
            bench.verify()
            _emit({**info, "batch": args.batch, "samples": samples, "verified": True})
            return 0
        _emit({**info, "ready": True})
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            try:
                count = int(words[1])
                seconds = bench.batch(count)
                bench.verify()
                _emit({"seconds": seconds, "smis": count})
            except Exception as err:  # noqa: BLE001 - reported to the parent as data
                _emit({"error": f"{type(err).__name__}: {err}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
