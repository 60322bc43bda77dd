"""Tests for the MM core build tool: keystone assembly checked by capstone.

The fixture under tests/fixtures/asm/mixed is a miniature SMI entry (real mode -> protected mode ->
long mode) written the way the house rules demand: o32 lgdt as `.byte 0x66` + `lgdt cs:[bx]`, far
jumps as bytes. Expected bytes are written as hex with the assembly next to them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from smmemu.disasm import Immediate, Mode, disassemble, disassemble_one, format_line, format_listing
from smmemu.errors import AssemblyError, ImageError
from smmemu.firmware import build as build_module
from smmemu.firmware.assembler import assemble, assembler_version
from smmemu.firmware.build import (
    DEFAULT_CONFIG,
    BuildConfig,
    BuiltImage,
    build,
    check,
    load_build_config,
    main,
)

FIXTURES = Path(__file__).parent / "fixtures" / "asm"
MIXED = FIXTURES / "mixed" / "build.toml"

# The 16-bit entry of the fixture, at 0x38000.
ENTRY_16 = bytes.fromhex(
    "fa"  # cli
    "bb6000"  # mov bx, gdtr - 0x38000         (gdtr = 0x38060)
    "66"  # .byte 0x66                          (o32 for the next instruction)
    "2e0f0117"  # lgdt cs:[bx]
    "0f20c0"  # mov eax, cr0
    "6683c801"  # or eax, 0x1
    "0f22c0"  # mov cr0, eax
    "66ea"  # .byte 0x66, 0xea                  (o32 ljmp ptr16:32)
    "1b800300"  # .long protected_mode          (0x3801b)
    "0800"  # .word 0x8
)
# The first long-mode instruction, at long_mode = 0x38037.
LEA_DATA = bytes.fromhex("488d0512000000")  # lea rax, [rip + data]   (0x3803e + 0x12 = 0x38050)

MIXED_SYMBOLS = {
    "smi_entry": 0x38000,
    "protected_mode": 0x3801B,
    "long_mode": 0x38037,
    "done": 0x3804E,
    "data": 0x38050,  # .align 0x8 after hlt at 0x3804e pads one byte
    "gdtr": 0x38060,
    "gdt": 0x38066,
    "gdt_end": 0x38086,
    "name": 0x38086,
}


def _project(tmp_path: Path, source: str, *, load: int = 0x38000, entry: str = "") -> BuildConfig:
    """Write a one-file build (t.s) into tmp_path and load its config."""
    (tmp_path / "t.s").write_text(source + "\n", encoding="utf-8")
    entries = f'"{entry}"' if entry else ""
    (tmp_path / "build.toml").write_text(
        "[image]\n"
        'name = "t"\n'
        f"load_address = {load:#x}\n"
        'sources = ["t.s"]\n'
        'output = "out/t.bin"\n'
        'manifest = "out/t.manifest.json"\n'
        f"entry_points = [{entries}]\n",
        encoding="utf-8",
    )
    return load_build_config(tmp_path / "build.toml")


def _build(tmp_path: Path, source: str, *, load: int = 0x38000) -> BuiltImage:
    return build(_project(tmp_path, source, load=load))


def _copy_mixed(tmp_path: Path) -> Path:
    target = tmp_path / "mixed"
    shutil.copytree(MIXED.parent, target)
    return target / "build.toml"


# --- building the mixed-mode fixture -------------------------------------------------------------


def test_mixed_fixture_builds_with_expected_symbols() -> None:
    image = build(load_build_config(MIXED))
    assert image.symbols == MIXED_SYMBOLS
    assert image.blob.startswith(ENTRY_16)
    assert image.blob[0x37:0x3E] == LEA_DATA
    assert image.blob[0x50:0x58] == bytes.fromhex("8877665544332211")  # .quad 0x1122334455667788
    assert image.blob.endswith(b"smm\n")
    assert len(image.blob) == 0x8A


def test_hand_encoded_far_jump_decodes_to_the_label() -> None:
    image = build(load_build_config(MIXED))
    # 66 ea 1b 80 03 00 08 00 = o32 ljmp 0x8:protected_mode, in 16-bit code
    far16 = disassemble_one(image.blob[0x13:], 0x38013, Mode.BITS16)
    assert far16 is not None
    assert (far16.mnemonic, far16.op_str, far16.size) == ("ljmp", "8:0x3801b", 8)
    # ea 37 80 03 00 18 00 = ljmp 0x18:long_mode, in 32-bit code
    far32 = disassemble_one(image.blob[0x30:], 0x38030, Mode.BITS32)
    assert far32 is not None
    assert (far32.mnemonic, far32.op_str) == ("ljmp", "0x18:0x38037")


def test_manifest_contents() -> None:
    config = load_build_config(MIXED)
    image = build(config)
    manifest = json.loads(image.manifest_text)
    assert manifest["format"] == 1
    assert manifest["name"] == "fixture-mixed"
    assert manifest["load_address"] == "0x00038000"
    assert manifest["size"] == len(image.blob)
    assert manifest["sha256"] == hashlib.sha256(image.blob).hexdigest()
    assert manifest["assembler"] == {"name": "keystone-engine", "version": "0.9.2", "core": "0.9"}
    assert manifest["entry_points"] == {"smi_entry": "0x00038000", "long_mode": "0x00038037"}
    assert manifest["symbols"] == {k: f"0x{v:08x}" for k, v in MIXED_SYMBOLS.items()}
    assert list(manifest["symbols"]) == sorted(MIXED_SYMBOLS)
    for name in ("entry16.s", "long64.s"):
        digest = hashlib.sha256((MIXED.parent / name).read_bytes()).hexdigest()
        assert manifest["sources"][name] == digest
    assert manifest["verified_instructions"] == 19
    assert image.manifest_text.endswith("}\n")
    assert '\n  "format": 1,' in image.manifest_text  # two-space indent, sorted keys


def test_manifest_is_byte_identical_across_builds(tmp_path: Path) -> None:
    config_path = _copy_mixed(tmp_path)
    config = load_build_config(config_path)
    assert main(["--config", str(config_path)]) == 0
    first = (config.output.read_bytes(), config.manifest.read_bytes())
    assert main(["--config", str(config_path)]) == 0
    assert (config.output.read_bytes(), config.manifest.read_bytes()) == first
    assert build(config).manifest_text == build(config).manifest_text


def test_listing_has_one_line_per_statement() -> None:
    image = build(load_build_config(MIXED))
    assert image.listing[2] == format_line(0x38000, b"\xfa", f"{'cli':<44} entry16.s:4")
    assert any("lea rax, [rip + data]" in line and "long64.s:5" in line for line in image.listing)


def test_align_pads_to_the_absolute_address(tmp_path: Path) -> None:
    # keystone aligns the linear address, not the offset: at 0x1001 one nop + 15 bytes of padding
    image = _build(tmp_path, "nop\n.align 0x10\ndata:\n.byte 0x1", load=0x1001)
    assert image.symbols["data"] == 0x1010
    assert len(image.blob) == 0x10


def test_accepted_aliases_and_forms(tmp_path: Path) -> None:
    source = "\n".join(
        [
            "top:",
            "jz top",  # 74 fe           je
            "sal eax, 0x1",  # d1 e0     shl eax, 1
            "mov rax, 0x1122334455667788",  # 48 b8 ...   movabs
            "rep stosb",  # f3 aa
            "repz cmpsb",  # f3 a6       repe cmpsb
            "ljmp [rax]",  # ff 28       capstone: jmp ptr [rax]
            "rex64 ljmp [rax]",  # 48 ff 28   capstone: ljmp [rax]
            "retfq",  # 48 cb
            "iretq",  # 48 cf
            "mov dword ptr [rbx + rcx*0x4 - 0x8], 0x5",
            "lea rsi, [rip + top]",
            '.ascii "a\\n\\"b"',
        ]
    )
    image = _build(tmp_path, source)
    assert image.blob.endswith(b'a\n"b')
    assert image.manifest["verified_instructions"] == 11


# --- house rules (rejected before keystone runs) ------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (".code16\nljmp 0x8:0x38100", r"t\.s:2: far pointer '0x8:0x38100': keystone truncates"),
        (".code16\nljmp [bx]", r"t\.s:2: ljmp in 16-bit code"),
        (".code32\nlgdt [eax]", r"t\.s:2: lgdt in 32-bit code: keystone adds 0x66"),
        (".code32\nlidt [eax]", r"t\.s:2: lidt in 32-bit code"),
        (".code16\nlgdt cs:[bx]", r"t\.s:2: lgdt in 16-bit code must directly follow `\.byte 0x66"),
        (".code64\nmov rbx, [0x40004000]", r"t\.s:2: absolute memory operand '\[0x40004000\]'"),
        ("mov eax, [label]\nlabel:", r"absolute memory operand '\[label\]'"),
        ("mov eax, 10", r"t\.s:1: number '10': write numbers as 0x"),
        ("nop; nop", r"t\.s:1: ';' separates statements"),
        ("foo: nop", r"a label must be alone on its line"),
        ('.asciz "x"', r"unsupported directive \.asciz"),
        (".word 0x12345", r"0x12345 does not fit \.word"),
        ("jmp far [rax]", r"far jumps and calls"),
        ("jmp nowhere", r"unknown symbol\(s\) nowhere"),
        ("a:\na:", r"t\.s:2: 'a' already defined at t\.s:1"),
        ("rax:", r"'rax' is reserved"),
        (".align 0x3", r"power-of-two"),
        (".equ A, B\n.equ B, A\nmov eax, A", r"circular \.equ"),
        ('.ascii "\\x41"', r"unsupported escape"),
    ],
)
def test_house_rules_reject(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(AssemblyError, match=message):
        _build(tmp_path, source)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(AssemblyError, match=r"2 problem") as caught:
        _build(tmp_path, "mov eax, 10\nnop\nmov ebx, 0x20 ; x")
    assert "t.s:1:" in str(caught.value)
    assert "t.s:3:" in str(caught.value)
    assert caught.value.line == 1
    assert caught.value.source == "mov eax, 10"


def test_keystone_error_is_located(tmp_path: Path) -> None:
    with pytest.raises(AssemblyError, match=r"t\.s:3: keystone: Invalid mnemonic") as caught:
        _build(tmp_path, "nop\njmp later\nbadinsn eax\nlater:\nnop")
    assert caught.value.line == 3


# --- silent keystone mis-encodings caught by the capstone check --------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # 66 e8 00 00 00 00: keystone makes a 16-bit call push a 32-bit return address
        (".code16\ncall next\nnext:", r"operand-size prefix \(0x66\) in 16-bit code"),
        # 66 c3: o32 ret in 16-bit code
        (".code16\nret", r"operand-size prefix"),
        # 66 0f 01 00: the 32-bit sgdt gets the same o16 prefix as lgdt
        (".code32\nsgdt [eax]", r"operand-size prefix \(0x66\) in 32-bit code"),
        # bb 00 81: mov bx, 0x8100 (the top of the immediate is dropped)
        (".code16\nmov bx, 0x38100", r"0x38100 encoded as 0x8100 \(16-bit\)"),
        # 48 8b 43 ff: mov rax, [rbx - 1]
        ("mov rax, [rbx + 0xffffffff]", r"displacement is -0x1, expected 0xffffffff"),
        # 48 8b 9c 24 00 10 00 00: mov rbx, [rsp + 0x1000]
        ("mov rbx, [eiz + 0x1000]", r"registers decode as rsp\*1"),
        # 48 8d 05 00 00 00 00: lea rax, [rip] (label difference dropped)
        ("lea rax, [rip + b - a]\na:\nnop\nb:", r"displacement is 0x0, expected 0x1"),
        # 0f 1f 80 00 00 00 00: a 32-bit long NOP, which 16-bit code decodes differently
        (".code16\nnop\n.align 0x8\nnop", r"padding 0f 1f 80 .* is not NOPs in 16-bit code"),
    ],
)
def test_verifier_catches_keystone_misencodings(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(AssemblyError, match=message) as caught:
        _build(tmp_path, source)
    assert caught.value.line is not None


def _fake_keystone(monkeypatch: pytest.MonkeyPatch, code: bytes) -> None:
    def fake(source: str, address: int) -> bytes:
        return code

    monkeypatch.setattr(build_module, "assemble", fake)


@pytest.mark.parametrize(
    ("source", "fake", "message"),
    [
        # "cc" is int3, not hlt
        ("nop\nhlt", "90cc", r"t\.s:2: mnemonic 'hlt' decoded as 'int3'.*\n.*bytes:    cc"),
        # b8 0b 00 00 00 = mov eax, 0xb
        ("mov eax, 0xa", "b80b000000", r"0xa encoded as 0xb \(32-bit\)"),
        # eb 00 = jmp to the nop, not to target
        ("jmp target\nnop\ntarget:\nhlt", "eb0090f4", r"branch target is 0x38002, expected"),
        # 48 8b 05 10 00 00 00 = mov rax, [rip + 0x10]: the absolute-operand trap
        ("mov rax, [rbx + 0x10]", "488b0510000000", r"encoded RIP-relative"),
        # 48 8d 05 00 00 00 00 = lea rax, [rip]: one byte short of the label
        ("lea rax, [rip + data]\nnop\ndata:", "488d050000000090", r"target is 0x38007, expected"),
        # one byte more than the source accounts for
        ("nop\nhlt", "90f490", r"the source accounts for 2 bytes but keystone produced 3"),
        # .long written with the wrong value
        (".long 0x12345678", "78563400", r"keystone produced 78 56 34 00, expected 78 56 34 12"),
    ],
)
def test_verifier_rejects_wrong_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, fake: str, message: str
) -> None:
    _fake_keystone(monkeypatch, bytes.fromhex(fake))
    with pytest.raises(AssemblyError, match=message):
        _build(tmp_path, source)


def test_missing_entry_point(tmp_path: Path) -> None:
    with pytest.raises(AssemblyError, match=r"entry point label\(s\) not defined: start"):
        build(_project(tmp_path, "nop", entry="start"))


# --- --check -------------------------------------------------------------------------------------


def test_check_passes_then_detects_a_changed_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _copy_mixed(tmp_path)
    assert main(["--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fixture-mixed: 138 bytes at 0x00038000, 19 instructions verified")
    assert main(["--check", "--config", str(config_path)]) == 0
    config = load_build_config(config_path)
    blob = bytearray(config.output.read_bytes())
    blob[0x38] ^= 0xFF
    config.output.write_bytes(bytes(blob))
    assert main(["--check", "--config", str(config_path)]) == 1
    err = capsys.readouterr().err
    assert "first difference at offset 0x38 (address 0x00038038, in long_mode+0x1)" in err
    assert "1 byte(s) differ" in err


def test_check_reports_manifest_fields(tmp_path: Path) -> None:
    config_path = _copy_mixed(tmp_path)
    assert main(["--config", str(config_path)]) == 0
    config = load_build_config(config_path)
    manifest = json.loads(config.manifest.read_text(encoding="utf-8"))
    manifest["verified_instructions"] = 18
    config.manifest.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", "utf-8")
    assert check(config) == [
        "mixed.manifest.json: field 'verified_instructions' differs: committed 18, built 19"
    ]


def test_check_reports_missing_blob(tmp_path: Path) -> None:
    config = load_build_config(_copy_mixed(tmp_path))
    assert check(config)[0].startswith("mixed.bin: missing")
    assert main(["--check", "--config", str(config.path)]) == 1


def test_build_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _project(tmp_path, "mov eax, 10")
    assert main(["--config", str(config.path)]) == 1
    assert "t.s:1: number '10'" in capsys.readouterr().err
    assert not config.output.exists()


# --- config --------------------------------------------------------------------------------------


def test_config_paths_are_relative_to_build_toml() -> None:
    config = load_build_config(MIXED)
    assert config.load_address == 0x38000
    assert config.sources == ("entry16.s", "long64.s")
    assert config.output == MIXED.parent / "mixed.bin"
    assert config.entry_points == ("smi_entry", "long_mode")


def test_default_config_is_the_mm_core() -> None:
    assert DEFAULT_CONFIG.parts[-3:] == ("firmware_blobs", "mm_core", "build.toml")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read build config"):
        load_build_config(tmp_path / "absent.toml")
    (tmp_path / "build.toml").write_text('[image]\nname = "x"\n', encoding="utf-8")
    with pytest.raises(ImageError, match="exactly the keys"):
        load_build_config(tmp_path / "build.toml")


# --- assembler and disassembler ------------------------------------------------------------------


def test_assembler_keeps_decimal_literals_decimal() -> None:
    # With any ks option set, keystone 0.9.2 would read 10 as 0x10 (b8 10 00 00 00).
    assert assemble("mov eax, 10", 0x1000) == bytes.fromhex("b80a000000")  # mov eax, 10


def test_assembler_wraps_keystone_errors() -> None:
    with pytest.raises(AssemblyError, match="keystone: Invalid mnemonic"):
        assemble("badinsn eax", 0)
    with pytest.raises(AssemblyError, match="not ASCII"):
        assemble("nop # é", 0)


def test_assembler_version() -> None:
    assert assembler_version() == {"name": "keystone-engine", "version": "0.9.2", "core": "0.9"}


def test_disassemble_one_detail() -> None:
    # 48 8d 05 12 00 00 00 = lea rax, [rip + 0x12] at 0x38037 -> 0x38050
    lea = disassemble_one(LEA_DATA, 0x38037, Mode.BITS64)
    assert lea is not None
    assert lea.detail is not None
    assert lea.text == "lea rax, [rip + 0x12]"
    assert lea.detail.rip_relative
    assert lea.detail.memory[0].target == 0x38050
    # 74 02 = je +2 at 0x3804a -> 0x3804e
    je = disassemble_one(bytes.fromhex("7402"), 0x3804A, Mode.BITS64)
    assert je is not None
    assert je.detail is not None
    assert je.detail.branch_target == 0x3804E
    # 66 83 c8 01 = or eax, 1 in 16-bit code: o32 prefix, 32-bit immediate
    orr = disassemble_one(bytes.fromhex("6683c801"), 0x3800C, Mode.BITS16)
    assert orr is not None
    assert orr.detail is not None
    assert orr.detail.operand_size_prefix
    assert orr.detail.immediates[0] == Immediate(value=1, size=4)
    assert disassemble_one(b"\xff\xff", 0, Mode.BITS64) is None


def test_disassemble_stops_at_bad_bytes() -> None:
    # fa = cli; f4 = hlt; ff ff = invalid
    found = disassemble(bytes.fromhex("faf4ffff"), 0x1000, Mode.BITS64)
    assert [(i.address, i.mnemonic) for i in found] == [(0x1000, "cli"), (0x1001, "hlt")]
    assert found[0].detail is None
    assert len(disassemble(bytes.fromhex("faf4"), 0x1000, Mode.BITS64, count=1)) == 1


def test_format_listing() -> None:
    code = bytes.fromhex(
        "488d0500000000"  # lea rax, [rip]
        "ebfe"  # jmp .
        "ff"  # (bad)
    )
    assert format_listing(code, 0x1000, Mode.BITS64, highlight=0x1007) == (
        "   0x00001000  48 8d 05 00 00 00 00           lea rax, [rip]\n"
        "=> 0x00001007  eb fe                          jmp 0x1007\n"
        "   0x00001009  ff                             (bad)\n"
    )
    assert format_listing(code, 0x1000, Mode.BITS64, count=1).count("\n") == 1


def test_committed_mm_core_is_reproduced_byte_for_byte_from_source() -> None:
    """The bundled image and manifest are exactly what the sources assemble to."""
    config = load_build_config(DEFAULT_CONFIG)
    assert check(config) == []
    built = build(config)
    assert built.blob == config.output.read_bytes()
    assert built.manifest_text == config.manifest.read_text(encoding="utf-8")


def test_msr_numbers_only_where_the_code_alone_fixes_ecx(tmp_path: Path) -> None:
    # 0x38000 mov ecx, 0xc0000080 (5) ; 0x38005 rdmsr (2)   -> fixed: falls through from the mov
    # 0x38007 mov ecx, 0x1b (5) ; 0x3800c again: rdmsr (2)  -> a label: a jump may bring any ECX
    # 0x3800e mov ecx, 0x10 (5) ; 0x38013 nop ; 0x38014 wrmsr -> not right after the mov
    image = _build(tmp_path, ".code64\nmov ecx, 0xc0000080\nrdmsr\nmov ecx, 0x1b\nagain:\nrdmsr\n"
                             "mov ecx, 0x10\nnop\nwrmsr\njmp again")
    assert image.manifest["msr_sites"] == {"0x00038005": "rdmsr", "0x0003800c": "rdmsr",
                                           "0x00038014": "wrmsr"}
    assert image.manifest["msr_numbers"] == {"0x00038005": "0xc0000080"}


def test_msr_site_after_a_register_move_is_not_fixed(tmp_path: Path) -> None:
    # mov ecx, ebx (2) ; rdmsr
    image = _build(tmp_path, ".code64\nmov ecx, ebx\nrdmsr")
    assert image.manifest["msr_sites"] == {"0x00038002": "rdmsr"}
    assert image.manifest["msr_numbers"] == {}
