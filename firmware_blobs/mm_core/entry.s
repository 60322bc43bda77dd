# SMI entry: from the architectural 16-bit entry state to 64-bit mode.
#
# On entry (SDM Vol. 3C, SMM chapter; reference/smm_semantics.md 1.2): CS.base is
# SMBASE, EIP 0x8000, DS/ES/SS have base 0 and 4 GiB limits, CR0.PE/PG are
# clear, CR4 and EFER are 0. The stub uses only absolute addresses through DS,
# so the same bytes work at any SMBASE; the host copies [smi_entry,
# smi_entry_end) to every CPU's SMBASE+0x8000 and patches the CPU index at
# smi_entry_cpu_index. Far jumps and the o32 lgdt are written as bytes:
# keystone 0.9.2 silently mis-encodes them (unicorn_probe.md row 17). ESI
# carries the CPU index into 64-bit code.

.code16
smi_entry:
    cli
    # mov esi, imm32: the CPU index
    .byte 0x66, 0xbe
smi_entry_cpu_index:
    .long 0x0
    # o32 a32 lgdt [gdt_descriptor]
    .byte 0x66, 0x67, 0x0f, 0x01, 0x15
    .long gdt_descriptor
    mov eax, cr0
    # clear PG, CD, NW, AM, WP, TS, EM; set PE, MP, NE
    and eax, 0x1ffafff3
    or eax, 0x23
    mov cr0, eax
    # o32 ljmp 0x08:pm32_entry
    .byte 0x66, 0xea
    .long pm32_entry
    .word 0x8
smi_entry_end:

.code32
pm32_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov ebx, CORE_STATE
    cmp dword ptr [ebx], 0x0
    jne pm32_full_tables
    # First SMIs: one CPU builds the boot tables, the others wait for them.
    xor eax, eax
    mov ecx, 0x1
    lock cmpxchg dword ptr [ebx + CS_BOOT_LOCK], ecx
    jne pm32_wait_boot_tables
    call build_boot_tables
    mov dword ptr [ebx + CS_BOOT_READY], 0x1
pm32_wait_boot_tables:
    pause
    cmp dword ptr [ebx + CS_BOOT_READY], 0x0
    je pm32_wait_boot_tables
    mov eax, BOOT_PML4
    jmp pm32_paging
pm32_full_tables:
    mov eax, PML4
pm32_paging:
    mov cr3, eax
    # CR4 = PAE | MCE | OSFXSR | OSXMMEXCPT
    mov eax, 0x660
    mov cr4, eax
    # EFER.LME | EFER.NXE. ECX is loaded right before each access so that the image
    # manifest can record the MSR of both sites (msr_numbers: they need no host hook).
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x900
    mov ecx, 0xc0000080
    wrmsr
    # CR0 |= PG | WP | NE | MP | PE
    mov eax, cr0
    or eax, 0x80010023
    mov cr0, eax
    # ljmp 0x18:lm64_entry
    .byte 0xea
    .long lm64_entry
    .word 0x18

# Identity-map TSEG with four 2 MiB pages: enough to reach long mode on the
# first SMI, before core_init builds the real tables.
build_boot_tables:
    cld
    mov edi, BOOT_PML4
    xor eax, eax
    mov ecx, 0xc00
    rep stosd
    mov ebx, BOOT_PML4
    mov dword ptr [ebx], BOOT_PDPT + 0x3
    mov ebx, BOOT_PDPT
    mov dword ptr [ebx], BOOT_PD + 0x3
    mov ebx, BOOT_PD
    mov dword ptr [ebx + 0x1e0], TSEG_BASE + 0x83
    mov dword ptr [ebx + 0x1e8], TSEG_BASE + 0x200083
    mov dword ptr [ebx + 0x1f0], TSEG_BASE + 0x400083
    mov dword ptr [ebx + 0x1f8], TSEG_BASE + 0x600083
    mov ebx, CORE_STATE
    ret

.code64
lm64_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    # This CPU's stack and per-CPU block (GS base, IA32_GS_BASE 0xC0000101).
    mov rax, rsi
    shl rax, 0xe
    mov rsp, STACK_TOP
    add rsp, rax
    mov rax, rsi
    shl rax, 0x8
    add rax, PERCPU
    mov rdi, rax
    mov rdx, rax
    shr rdx, 0x20
    mov ecx, 0xc0000101
    wrmsr
    mov qword ptr [rdi + PC_INDEX], rsi
    mov rax, rsi
    shl rax, 0x8
    add rax, FAULT_RECORD
    mov qword ptr [rdi + PC_FAULT_RECORD], rax
    # This CPU's TSS: RSM restores the interrupted TR, so clear the busy bit of
    # its descriptor and load it again on every SMI.
    lea rax, [rip + gdt]
    mov rcx, rsi
    shl rcx, 0x4
    add rax, rcx
    and byte ptr [rax + 0x25], 0xfd
    lea rax, [rcx + 0x20]
    ltr ax
    lea rax, [rip + idt_descriptor]
    lidt [rax]
    mov rbx, CORE_STATE
    cmp qword ptr [rbx + CS_CPU_READY + rsi*8], 0x0
    jne lm64_dispatch
    # A CPU's first SMI initialises only, as edk2's SmiRendezvous runs InitializeSmm.
    call cpu_init
    jmp lm64_leave
lm64_dispatch:
    call smi_rendezvous
lm64_leave:
    rsm

# The OVMF-style SMBASE relocation handler (OvmfPkg SmmRelocationLib): the host
# copies [smm_relocation_entry, smm_relocation_end) to 0x38000, the default
# SMBASE+0x8000, writes the new SMBASE and the offset of the save state's SMBASE
# field (0xFF00 AMD64 map, 0xFEF8 Intel map) into RELOC_MAILBOX, and sends the
# CPU an SMI. The handler stores the new SMBASE and resumes; RSM loads it.
.code16
smm_relocation_entry:
    # a32 o32 mov eax, [RELOC_MAILBOX]
    .byte 0x67, 0x66, 0xa1
    .long RELOC_MAILBOX
    # a32 mov bx, [RELOC_FIELD]
    .byte 0x67, 0x8b, 0x1d
    .long RELOC_FIELD
    # o32 mov cs:[bx], eax
    .byte 0x2e, 0x66, 0x89, 0x07
    # a32 mov byte [RELOC_DONE], 1
    .byte 0x67, 0xc6, 0x05
    .long RELOC_DONE
    .byte 0x1
    # rsm
    .byte 0x0f, 0xaa
smm_relocation_end:
.code64
