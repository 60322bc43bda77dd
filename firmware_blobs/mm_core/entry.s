# SMI entry: from the architectural 16-bit entry state to 64-bit mode.
#
# On entry (SDM Vol. 3C, SMM chapter; reference/smm_semantics.md 1.2): CS.base is
# SMBASE, EIP 0x8000, DS/ES/SS have base 0 and 4 GiB limits, CR0.PE/PG are
# clear, CR4 and EFER are 0. The stub uses only absolute addresses through DS,
# so the same bytes work at any SMBASE. Far jumps and the o32 lgdt are written
# as bytes: keystone 0.9.2 silently mis-encodes them (unicorn_probe.md row 17).

.code16
smi_entry:
    cli
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
    call build_boot_tables
    mov eax, BOOT_PML4
    jmp pm32_paging
pm32_full_tables:
    mov eax, PML4
pm32_paging:
    mov cr3, eax
    # CR4 = PAE | MCE | OSFXSR | OSXMMEXCPT
    mov eax, 0x660
    mov cr4, eax
    # EFER.LME | EFER.NXE
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x900
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
    mov dword ptr [ebx], 0x07816003
    mov ebx, BOOT_PDPT
    mov dword ptr [ebx], 0x07817003
    mov ebx, BOOT_PD
    mov dword ptr [ebx + 0x1e0], 0x07800083
    mov dword ptr [ebx + 0x1e8], 0x07a00083
    mov dword ptr [ebx + 0x1f0], 0x07c00083
    mov dword ptr [ebx + 0x1f8], 0x07e00083
    ret

.code64
lm64_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov rsp, STACK_TOP
    # The TSS descriptor turns busy on ltr; RSM restores the interrupted TR, so
    # clear the busy bit and load it again on every SMI.
    lea rax, [rip + gdt]
    and byte ptr [rax + 0x25], 0xfd
    mov ax, 0x20
    ltr ax
    lea rax, [rip + idt_descriptor]
    lidt [rax]
    mov rbx, CORE_STATE
    cmp qword ptr [rbx], 0x0
    jne lm64_dispatch
    # First SMI: initialise only, as edk2's SmiRendezvous runs InitializeSmm.
    call core_init
    mov rdx, BOOT_INFO
    mov rdx, qword ptr [rdx + BI_PMBASE]
    add edx, 0x34
    in eax, dx
    mov ecx, eax
    call end_of_smi
    jmp lm64_leave
lm64_dispatch:
    call core_main
lm64_leave:
    rsm
