# Read-only data of the image: identification, GDT, IDT descriptor, GUIDs.

# Image identification. VERSION_INFO answers from here, as the MM Supervisor
# answers from its own PE header (MmSupervisorPkg/Core/Request/VersionInfo.c):
#   +0x00 signature "SMEMCORE"
#   +0x08 Version (major << 16 | minor)
#   +0x0C PatchLevel
#   +0x10 MaxSupervisorRequestLevel (MM_SUPERVISOR_REQUEST_MAX_SUPPORTED = 4)
.align 0x8
core_info:
    .ascii "SMEMCORE"
    .long 0x10000
    .long 0x1
    .quad 0x4

# GDT: 0x08 code32, 0x10 flat data, 0x18 code64, then one 64-bit TSS descriptor
# per CPU at 0x20 + 0x10 * i (base TSS_BASE + TSS_SIZE * i, limit 0x67).
.align 0x8
gdt:
    .quad 0x0
    .quad 0xcf9b000000ffff
    .quad 0xcf93000000ffff
    .quad 0xaf9b000000ffff
    .quad 0x700898450000067
    .quad 0x0
    .quad 0x700898450800067
    .quad 0x0
    .quad 0x700898451000067
    .quad 0x0
    .quad 0x700898451800067
    .quad 0x0
    .quad 0x700898452000067
    .quad 0x0
    .quad 0x700898452800067
    .quad 0x0
    .quad 0x700898453000067
    .quad 0x0
    .quad 0x700898453800067
    .quad 0x0
gdt_descriptor:
    .word 0x9f
    .long gdt

idt_descriptor:
    .word 0xfff
    .quad IDT_BASE

# GUIDs in EFI byte order (Data1 LE32, Data2 LE16, Data3 LE16, Data4 bytes).
.align 0x8
guid_mm_supervisor_request:
    .long 0x8c633b23
    .word 0x1260
    .word 0x4ea6
    .byte 0x83, 0xf, 0x7d, 0xdc, 0x97, 0x38, 0x21, 0x11
guid_dxe_mm_ready_to_lock:
    .long 0x60ff8964
    .word 0xe906
    .word 0x41d0
    .byte 0xaf, 0xed, 0xf2, 0x41, 0xe9, 0x74, 0xe0, 0x8e
guid_end_of_dxe:
    .long 0x2ce967a
    .word 0xdd7e
    .word 0x4ffc
    .byte 0x9e, 0xe7, 0x81, 0xc, 0xf0, 0x47, 0x8, 0x80
guid_ready_to_boot:
    .long 0x7ce88fb3
    .word 0x4bd7
    .word 0x4679
    .byte 0x87, 0xa8, 0xa8, 0xd8, 0xde, 0xe5, 0xd, 0x2b
guid_exit_boot_services:
    .long 0x27abf055
    .word 0xb1b8
    .word 0x4c26
    .byte 0x80, 0x48, 0x74, 0x8f, 0x37, 0xba, 0xa2, 0xdf
guid_echo:
    .long 0x12345678
    .word 0x1234
    .word 0x5678
    .byte 0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef

# Entry points of the exception stubs, vectors 0-31, for init_idt.
.align 0x8
isr_table:
    .quad isr_00
    .quad isr_01
    .quad isr_02
    .quad isr_03
    .quad isr_04
    .quad isr_05
    .quad isr_06
    .quad isr_07
    .quad isr_08
    .quad isr_09
    .quad isr_0a
    .quad isr_0b
    .quad isr_0c
    .quad isr_0d
    .quad isr_0e
    .quad isr_0f
    .quad isr_10
    .quad isr_11
    .quad isr_12
    .quad isr_13
    .quad isr_14
    .quad isr_15
    .quad isr_16
    .quad isr_17
    .quad isr_18
    .quad isr_19
    .quad isr_1a
    .quad isr_1b
    .quad isr_1c
    .quad isr_1d
    .quad isr_1e
    .quad isr_1f
