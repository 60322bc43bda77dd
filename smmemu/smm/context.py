"""CPU-state transformations for SMI entry and RSM, done on Unicorn context blobs.

Unicorn cannot enter QEMU's own SMM (setting HF_SMM crashes the process,
unicorn_probe.md 2E), so smmemu performs entry and RSM itself. Register I/O
through the binding costs about 2 us per register (row 13), so the
transformations work on the context blob, with field offsets from
:func:`smmemu.engine.context_layout`:

* **Entry** keeps everything the SDM leaves unchanged (GPRs, CR2, CR3, GDTR,
  IDTR, LDTR, TR, x87/SSE state, MSRs) from the interrupted state and takes the
  architectural entry values (EIP 0x8000, EFLAGS 2, CR4 0, EFER 0, DR7 0x400,
  16-bit segments with CS.base = SMBASE) from a real-mode template. CR0 is then
  written through the API (PE, PG, EM and TS cleared, other bits kept) so that
  QEMU recomputes its hidden flags (smm_semantics.md 1.2).
* **RSM** puts back the state RSM restores (smm_semantics.md 3): GPRs, RIP,
  RFLAGS, segments with their hidden parts, descriptor tables, CR0, CR3, CR4,
  EFER, DR6, DR7; CR2, other MSRs and x87/SSE state stay as SMM left them.
"""

from __future__ import annotations

import struct

from smmemu.engine import GPR_ORDER, SEGMENT_ORDER, ContextLayout
from smmemu.smm.savestate import CpuSnapshot, Segment

__all__ = ["SMM_SEGMENT_FLAGS", "entry_blob", "rsm_blob", "smm_template", "snapshot"]

_SEG = struct.Struct("<I4xQII")
SMM_SEGMENT_FLAGS = (1 << 15) | (1 << 12) | (1 << 9) | (1 << 8) | (1 << 23)
"""P, S, writable, accessed, G: the 8093h access rights of the SMM entry segments."""


def _read_segment(layout: ContextLayout, blob: bytes | bytearray, name: str) -> Segment:
    selector, base, limit, flags = _SEG.unpack_from(blob, layout.seg(name))
    return Segment(selector & 0xFFFF, base, limit, flags)


def _write_segment(layout: ContextLayout, blob: bytearray, name: str, seg: Segment) -> None:
    _SEG.pack_into(blob, layout.seg(name), seg.selector, seg.base, seg.limit, seg.flags)


_GPRS = struct.Struct("<16Q")
_CACHES = struct.Struct("<" + "I4xQII" * 10)
_Q = struct.Struct("<Q")
_CR034 = struct.Struct("<Q16xQQ")  # cr[0], cr[3], cr[4] of CPUX86State.cr[5]
_DR67 = struct.Struct("<QQ")  # dr[6], dr[7]


def snapshot(layout: ContextLayout, blob: bytes, *, rflags: int) -> CpuSnapshot:
    """The interrupted state as the save-state writer needs it.

    ``rflags`` must come from the register API: QEMU keeps the arithmetic flags
    lazily outside the EFLAGS field. The ten segment and table caches (ES..GS,
    LDTR, TR, GDTR, IDTR) are contiguous in CPUX86State; their selectors are
    16-bit values QEMU keeps in 32-bit fields.
    """
    fields = iter(_CACHES.unpack_from(blob, layout.segs))
    cr0, cr3, cr4 = _CR034.unpack_from(blob, layout.cr)
    dr6, dr7 = _DR67.unpack_from(blob, layout.dr_offset(6))
    return CpuSnapshot(
        _GPRS.unpack_from(blob, layout.regs), _Q.unpack_from(blob, layout.eip)[0], rflags,
        cr0, cr3, cr4, _Q.unpack_from(blob, layout.efer)[0], dr6, dr7,
        tuple(zip(fields, fields, fields, fields, strict=True)),
    )


def smm_template(layout: ContextLayout, real_mode: bytes, smbase: int) -> bytes:
    """A real-mode template patched to the SMM entry segments for ``smbase``.

    CS: selector (SMBASE >> 4) & 0xFFFF, base SMBASE, 4 GiB limit; DS, ES, FS,
    GS, SS: selector 0, base 0, 4 GiB limit; all with access rights 8093h.
    """
    blob = bytearray(real_mode)
    for name in SEGMENT_ORDER:
        if name == "cs":
            seg = Segment((smbase >> 4) & 0xFFFF, smbase, 0xFFFF_FFFF, SMM_SEGMENT_FLAGS)
        else:
            seg = Segment(0, 0, 0xFFFF_FFFF, SMM_SEGMENT_FLAGS)
        _write_segment(layout, blob, name, seg)
    struct.pack_into("<Q", blob, layout.eip, 0x8000)
    return bytes(blob)


def _copy(dst: bytearray, src: bytes | bytearray, start: int, end: int) -> None:
    dst[start:end] = src[start:end]


def entry_blob(layout: ContextLayout, interrupted: bytes, template: bytes) -> bytearray:
    """The context to start the SMI handler with (CR0 is fixed up by the caller)."""
    blob = bytearray(interrupted)
    _copy(blob, template, layout.eip, layout.hflags + 4)
    _copy(blob, template, layout.segs, layout.segs + 6 * ContextLayout.SEGMENT_CACHE_SIZE)
    _copy(blob, template, layout.cr_offset(0), layout.cr_offset(1))
    _copy(blob, template, layout.cr_offset(4), layout.cr_offset(5))
    _copy(blob, template, layout.efer, layout.efer + 8)
    _copy(blob, template, layout.dr_offset(7), layout.dr_offset(8))
    struct.pack_into("<i", blob, layout.old_exception, -1)
    return blob


def rsm_blob(layout: ContextLayout, current: bytes, interrupted: bytes,
             gprs: tuple[int, ...] | None = None, rip: int | None = None) -> bytearray:
    """The context RSM returns to: ``interrupted`` where RSM restores state, ``current`` elsewhere.

    ``gprs`` and ``rip`` are the values RSM reads from the save-state map (None: the
    map still holds the interrupted ones).
    """
    blob = bytearray(current)
    _copy(blob, interrupted, layout.regs, layout.hflags2 + 4)
    _copy(blob, interrupted, layout.segs, layout.idt + ContextLayout.SEGMENT_CACHE_SIZE)
    _copy(blob, interrupted, layout.cr_offset(0), layout.cr_offset(1))
    _copy(blob, interrupted, layout.cr_offset(3), layout.cr_offset(5))
    _copy(blob, interrupted, layout.efer, layout.efer + 8)
    _copy(blob, interrupted, layout.dr_offset(6), layout.dr_offset(8))
    if gprs is not None:
        _GPRS.pack_into(blob, layout.regs, *gprs)
    if rip is not None:
        _Q.pack_into(blob, layout.eip, rip & 0xFFFF_FFFF_FFFF_FFFF)
    return blob


def read_registers(layout: ContextLayout, blob: bytes) -> dict[str, int]:
    """GPRs, RIP, CR0, CR3, CR4 and EFER from a blob (RFLAGS needs the register API)."""
    regs = dict(zip(GPR_ORDER, _GPRS.unpack_from(blob, layout.regs), strict=True))
    regs["rip"] = _Q.unpack_from(blob, layout.eip)[0]
    regs["cr0"], regs["cr3"], regs["cr4"] = _CR034.unpack_from(blob, layout.cr)
    regs["efer"] = _Q.unpack_from(blob, layout.efer)[0]
    return regs


def reset_old_exception(layout: ContextLayout, blob: bytes) -> bytearray:
    """Clear QEMU's ``old_exception`` so the next fault is not escalated to #DF (row 5)."""
    out = bytearray(blob)
    struct.pack_into("<i", out, layout.old_exception, -1)
    return out


def error_code(layout: ContextLayout, blob: bytes) -> int:
    """The error code QEMU recorded for the last exception."""
    return int(struct.unpack_from("<I", blob, layout.error_code)[0])
