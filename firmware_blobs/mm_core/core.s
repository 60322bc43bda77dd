# MM core proper (64-bit): one-time initialisation and the per-SMI entry point.
#
# core_main follows edk2's Standalone MM core MmEntryPoint with an MM_COMM_BUFFER
# and its 24-byte MM_COMM_BUFFER_STATUS mailbox (reference/comm_protocols.md 4.2
# and checklist items 8-11), looking at the user mailbox first as the MM
# Supervisor does (comm_protocols.md 3.3). The interrupt source is read from
# SMI_STS and APM_CNT and kept in CORE_STATE for reports; as in edk2, the
# decision to process a request is the mailbox's IsCommBufferValid.

# First SMI of a CPU. The BSP (IA32_APIC_BASE bit 8, as OVMF's
# PlatformSmmBspElection) builds the shared state; every CPU then sets up its
# own TSS and marks itself ready. APs wait (bounded) for the BSP's global setup.
cpu_init:
    push rbx
    push rsi
    sub rsp, 0x20
    mov rbx, CORE_STATE
    mov ecx, 0x1b
    rdmsr
    test eax, 0x100
    jz cpu_init_ap
    call core_init
    jmp cpu_init_local
cpu_init_ap:
    mov ecx, RELEASE_TIMEOUT
cpu_init_wait:
    cmp qword ptr [rbx + CS_INITIALIZED], 0x0
    jne cpu_init_local
    pause
    dec ecx
    jnz cpu_init_wait
cpu_init_local:
    # TSS: RSP0 and IST1 = this CPU's exception stack; no I/O bitmap.
    mov rax, rsi
    imul rax, rax, TSS_SIZE
    add rax, TSS_BASE
    mov rcx, rsi
    shl rcx, 0xc
    add rcx, EXC_STACK_TOP
    mov qword ptr [rax + 0x4], rcx
    mov qword ptr [rax + 0x24], rcx
    mov word ptr [rax + 0x66], 0x68
    mov qword ptr [rbx + CS_CPU_READY + rsi*8], 0x1
    add rsp, 0x20
    pop rsi
    pop rbx
    ret

core_init:
    push rbp
    mov rbp, rsp
    push rbx
    push r12
    push rsi
    push rdi
    sub rsp, 0x20
    # Page tables: PML4 -> PDPT -> four PDs covering 4 GiB; everything not
    # mapped below is not present.
    cld
    mov rdi, PML4
    xor eax, eax
    mov rcx, 0x2c00
    rep stosq
    mov rbx, PML4
    mov qword ptr [rbx], PDPT + 0x3
    mov rbx, PDPT
    mov qword ptr [rbx], PD0 + 0x3
    mov qword ptr [rbx + 0x8], PD0 + 0x1003
    mov qword ptr [rbx + 0x10], PD0 + 0x2003
    mov qword ptr [rbx + 0x18], PD0 + 0x3003
    # SMRAM: present, writable, executable 4 KiB pages, one page table per 2 MiB from
    # the pool, so that the pages of loaded images can carry their sections'
    # permissions (the host narrows them after loading, as PiSmmCore's image
    # protection does).
    mov rbx, CORE_STATE
    mov rax, PT_POOL
    mov qword ptr [rbx + CS_NEXT_PT], rax
    mov rdx, PD0 + 0x1e0
    mov rcx, TSEG_BASE
    mov r8, TSEG_BASE + 0x800000
core_init_smram_pt:
    mov rax, qword ptr [rbx + CS_NEXT_PT]
    lea rsi, [rax + 0x1000]
    mov qword ptr [rbx + CS_NEXT_PT], rsi
    mov rdi, rax
    or rax, 0x3
    mov qword ptr [rdx], rax
    add rdx, 0x8
    xor esi, esi
core_init_smram_pte:
    lea rax, [rcx + 0x3]
    mov qword ptr [rdi + rsi*8], rax
    add rcx, 0x1000
    inc esi
    cmp esi, 0x200
    jb core_init_smram_pte
    cmp rcx, r8
    jb core_init_smram_pt
    # Comm buffers and their status mailboxes: present, writable, NX.
    mov r12, BOOT_INFO
    mov rdi, qword ptr [r12 + 0x10]
    mov rsi, qword ptr [r12 + 0x18]
    call map_range
    mov rdi, qword ptr [r12 + 0x20]
    mov rsi, 0x1
    call map_range
    mov rdi, qword ptr [r12 + 0x28]
    mov rsi, qword ptr [r12 + 0x30]
    call map_range
    mov rdi, qword ptr [r12 + 0x38]
    mov rsi, 0x1
    call map_range
    # edk2 policy (traditional drivers): DRAM below TSEG present, writable, NX, as
    # PiSmmCpuDxeSmm maps non-SMRAM memory before ready-to-lock.
    mov rax, BOOT_INFO
    cmp qword ptr [rax + BI_MAP_DRAM], 0x0
    je core_init_dram_done
    mov rbx, PD0
    xor ecx, ecx
core_init_dram:
    mov rdx, rcx
    shr rdx, 0x15
    mov rax, qword ptr [rbx + rdx*8]
    test rax, rax
    jz core_init_dram_large
    test al, 0x80
    jnz core_init_dram_next
    # A 4 KiB table already holds the comm buffers: fill its empty entries, except
    # page 0, which stays unmapped (edk2's SMM NULL-pointer detection).
    mov rdi, 0xffffffffff000
    and rdi, rax
    xor esi, esi
    test rcx, rcx
    jnz core_init_dram_pte
    inc esi
core_init_dram_pte:
    cmp qword ptr [rdi + rsi*8], 0x0
    jne core_init_dram_pte_next
    mov rax, rsi
    shl rax, 0xc
    add rax, rcx
    or rax, 0x3
    bts rax, 0x3f
    mov qword ptr [rdi + rsi*8], rax
core_init_dram_pte_next:
    inc esi
    cmp esi, 0x200
    jb core_init_dram_pte
    jmp core_init_dram_next
core_init_dram_large:
    mov rax, rcx
    or rax, 0x83
    bts rax, 0x3f
    mov qword ptr [rbx + rdx*8], rax
core_init_dram_next:
    add rcx, 0x200000
    cmp rcx, TSEG_BASE
    jb core_init_dram
core_init_dram_done:
    # The platform flash window [BI_MAP_MMIO, BI_MAP_MMIO_END), when the host models
    # one: present, writable, uncached (PCD), NX 2 MiB pages, as PiSmmCpuDxeSmm maps
    # the flash MMIO that FVB and variable drivers read and program.
    mov rax, BOOT_INFO
    mov rcx, qword ptr [rax + BI_MAP_MMIO]
    mov rsi, qword ptr [rax + BI_MAP_MMIO_END]
    mov rbx, PD0
core_init_mmio:
    cmp rcx, rsi
    jae core_init_mmio_done
    mov rdx, rcx
    shr rdx, 0x15
    mov rax, rcx
    or rax, 0x93
    bts rax, 0x3f
    mov qword ptr [rbx + rdx*8], rax
    add rcx, 0x200000
    jmp core_init_mmio
core_init_mmio_done:
    mov rax, PML4
    mov cr3, rax
    call init_idt
    # MMI handler table, then the core's own handlers.
    mov rbx, HANDLER_TABLE
    mov qword ptr [rbx], 0x0
    mov qword ptr [rbx + 0x8], 0x40
    lea rcx, [rip + msup_handler]
    lea rdx, [rip + guid_mm_supervisor_request]
    call register_builtin
    lea rcx, [rip + ready_to_lock_handler]
    lea rdx, [rip + guid_dxe_mm_ready_to_lock]
    call register_builtin
    lea rcx, [rip + event_handler]
    lea rdx, [rip + guid_end_of_dxe]
    call register_builtin
    lea rcx, [rip + event_handler]
    lea rdx, [rip + guid_ready_to_boot]
    call register_builtin
    lea rcx, [rip + exit_boot_services_handler]
    lea rdx, [rip + guid_exit_boot_services]
    call register_builtin
    lea rcx, [rip + event_handler]
    lea rdx, [rip + guid_echo]
    call register_builtin
    mov rbx, CORE_STATE
    mov qword ptr [rbx + CS_INITIALIZED], 0x1
    # The boot SMI ends like any other: status cleared, EOS set.
    mov rdx, BOOT_INFO
    mov rdx, qword ptr [rdx + BI_PMBASE]
    add edx, 0x34
    in eax, dx
    mov ecx, eax
    call end_of_smi
    add rsp, 0x20
    pop rdi
    pop rsi
    pop r12
    pop rbx
    pop rbp
    ret


# Every SMI after the first, on every CPU (edk2 SmiRendezvous, simplified):
# all CPUs check in; the BSP waits (bounded) for the others, runs the MM core
# entry, then releases the APs and waits for them to leave. APs spin until
# released; an AP whose BSP never comes (an SMI IPI to an AP alone) gives up
# after a bounded wait.
smi_rendezvous:
    push rbx
    push rdi
    push r12
    push r13
    push r14
    sub rsp, 0x20
    mov rbx, CORE_STATE
    mov rdi, qword ptr [rbx + CS_GENERATION]
    lock inc qword ptr [rbx + CS_ARRIVED]
    mov ecx, 0x1b
    rdmsr
    test eax, 0x100
    jz smi_rendezvous_ap
    mov qword ptr [rbx + CS_BSP], rsi
    mov rax, BOOT_INFO
    mov r12, qword ptr [rax + BI_CPU_COUNT]
    mov r13d, ARRIVAL_TIMEOUT
smi_rendezvous_arrivals:
    cmp qword ptr [rbx + CS_ARRIVED], r12
    jae smi_rendezvous_all_in
    pause
    dec r13d
    jnz smi_rendezvous_arrivals
smi_rendezvous_all_in:
    call core_main
    mov r14, qword ptr [rbx + CS_ARRIVED]
    dec r14
    lock inc qword ptr [rbx + CS_GENERATION]
    mov r13d, RELEASE_TIMEOUT
smi_rendezvous_departures:
    cmp qword ptr [rbx + CS_DEPARTED], r14
    jae smi_rendezvous_reset
    pause
    dec r13d
    jnz smi_rendezvous_departures
smi_rendezvous_reset:
    mov qword ptr [rbx + CS_ARRIVED], 0x0
    mov qword ptr [rbx + CS_DEPARTED], 0x0
    jmp smi_rendezvous_out
smi_rendezvous_ap:
    mov r13d, RELEASE_TIMEOUT
smi_rendezvous_wait:
    cmp qword ptr [rbx + CS_GENERATION], rdi
    jne smi_rendezvous_released
    pause
    dec r13d
    jnz smi_rendezvous_wait
    lock dec qword ptr [rbx + CS_ARRIVED]
    jmp smi_rendezvous_out
smi_rendezvous_released:
    lock inc qword ptr [rbx + CS_DEPARTED]
smi_rendezvous_out:
    add rsp, 0x20
    pop r14
    pop r13
    pop r12
    pop rdi
    pop rbx
    ret

# rcx = handler, rdx = GUID: MmiHandlerRegister with a scratch DispatchHandle.
register_builtin:
    sub rsp, 0x38
    lea r8, [rsp + 0x28]
    call mmi_handler_register
    add rsp, 0x38
    ret

core_main:
    push rbp
    mov rbp, rsp
    push rbx
    push r12
    push r13
    push r14
    sub rsp, 0x30
    mov rbx, CORE_STATE
    inc qword ptr [rbx + CS_SMI_COUNT]
    mov qword ptr [rbx + CS_CHANNEL], 0xff
    # Identify the source: SMI_STS (PMBASE+0x34) and the APM command byte.
    mov r12, BOOT_INFO
    mov rdx, qword ptr [r12 + BI_PMBASE]
    add edx, 0x34
    in eax, dx
    mov r13d, eax
    mov qword ptr [rbx + CS_SMI_STS], rax
    in al, 0xb2
    movzx eax, al
    mov qword ptr [rbx + CS_APM_CNT], rax
    # Synchronous request: user mailbox first, then the supervisor mailbox.
    lea rcx, [r12 + 0x28]
    mov edx, 0x1
    call process_channel
    test rax, rax
    jnz core_main_root
    lea rcx, [r12 + BI_BUFFERS]
    xor edx, edx
    call process_channel
core_main_root:
    # Root (asynchronous) handlers always run afterwards.
    xor ecx, ecx
    xor edx, edx
    xor r8d, r8d
    xor r9d, r9d
    call mmi_manage
    mov ecx, r13d
    call end_of_smi
    add rsp, 0x30
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

# rcx = MM_COMM_BUFFER {PhysicalStart, NumberOfPages, Status}, rdx = channel.
# Returns rax = 1 if the mailbox held a request, 0 otherwise.
process_channel:
    push rbp
    mov rbp, rsp
    push rbx
    push rsi
    push rdi
    push r12
    push r13
    push r14
    push r15
    sub rsp, 0x38
    mov r12, qword ptr [rcx]
    mov r13, qword ptr [rcx + 0x8]
    mov r14, qword ptr [rcx + 0x10]
    xor eax, eax
    test r12, r12
    jz process_channel_out
    test r14, r14
    jz process_channel_out
    cmp byte ptr [r14], 0x0
    je process_channel_out
    mov rbx, CORE_STATE
    mov qword ptr [rbx + CS_CHANNEL], rdx
    # Size checks: 24 + MessageLength must fit the buffer (and the SMRAM copy).
    mov r15, r13
    shl r15, 0xc
    mov rax, qword ptr [r12 + 0x10]
    cmp rax, r15
    ja process_channel_too_big
    lea rsi, [rax + 0x18]
    cmp rsi, r15
    ja process_channel_too_big
    cmp r15, COMM_COPY_SIZE
    ja process_channel_too_big
    mov qword ptr [rsp + 0x20], rsi
    # In-place mode (edk2's traditional PiSmmCore): dispatch on the buffer itself.
    mov rax, BOOT_INFO
    cmp qword ptr [rax + BI_IN_PLACE], 0x0
    je process_channel_copy
    mov rcx, r12
    jmp process_channel_dispatch
process_channel_copy:
    # Work on a copy in SMRAM: copy the request, zero the rest of the copy.
    mov rdi, COMM_COPY
    mov rcx, rsi
    mov rsi, r12
    call copy_bytes
    mov rdi, COMM_COPY
    add rdi, qword ptr [rsp + 0x20]
    mov rcx, r15
    sub rcx, qword ptr [rsp + 0x20]
    call zero_bytes
    mov rcx, COMM_COPY
process_channel_dispatch:
    # MmiManage(&HeaderGuid, NULL, Data, &Size) with Size = MessageLength.
    mov rax, qword ptr [rcx + 0x10]
    mov qword ptr [rsp + 0x28], rax
    xor edx, edx
    lea r8, [rcx + 0x18]
    lea r9, [rsp + 0x28]
    call mmi_manage
    mov rbx, rax
    mov rdx, CORE_STATE
    mov qword ptr [rdx + CS_MMI_STATUS], rax
    mov rcx, qword ptr [rsp + 0x28]
    add rcx, 0x18
    mov qword ptr [rsp + 0x30], rcx
    cmp rcx, r15
    ja process_channel_status
    mov rax, BOOT_INFO
    cmp qword ptr [rax + BI_IN_PLACE], 0x0
    jne process_channel_status
    mov rdi, r12
    mov rsi, COMM_COPY
    call copy_bytes
process_channel_status:
    mov byte ptr [r14], 0x0
    mov rax, qword ptr [rsp + 0x30]
    mov qword ptr [r14 + 0x10], rax
    xor eax, eax
    test rbx, rbx
    jz process_channel_store
    mov rax, 0x800000000000000e
process_channel_store:
    mov qword ptr [r14 + 0x8], rax
    mov eax, 0x1
    jmp process_channel_out
process_channel_too_big:
    # edk2 ASSERTs here and leaves the mailbox untouched; so does this core.
    or qword ptr [rbx + CS_CHANNEL], 0x100
    mov eax, 0x1
process_channel_out:
    add rsp, 0x38
    pop r15
    pop r14
    pop r13
    pop r12
    pop rdi
    pop rsi
    pop rbx
    pop rbp
    ret

# rdi = destination, rsi = source, rcx = byte count (qwords, then bytes).
copy_bytes:
    cld
    mov rdx, rcx
    shr rcx, 0x3
    rep movsq
    mov rcx, rdx
    and rcx, 0x7
    rep movsb
    ret

# rdi = destination, rcx = byte count. Leaves the bytes zero, as edk2's ZeroMem does,
# but stores only into 64-byte blocks that are not zero already. In Unicorn 2.1.4 every
# guest store takes the notdirty slow path (about 60 ns; its RAM is never marked dirty)
# while a load costs about 1 ns, and the comm-buffer copy is nearly all zero already.
# Bytes up to an 8-byte boundary first: unaligned qword accesses take the slow path too.
zero_bytes:
    cld
    xor eax, eax
    mov rdx, rdi
    neg rdx
    and rdx, 0x7
    cmp rdx, rcx
    jbe zero_bytes_head
    mov rdx, rcx
zero_bytes_head:
    sub rcx, rdx
    xchg rcx, rdx
    rep stosb
    mov rcx, rdx
zero_bytes_block:
    cmp rcx, 0x40
    jb zero_bytes_tail
    mov rdx, qword ptr [rdi]
    or rdx, qword ptr [rdi + 0x8]
    or rdx, qword ptr [rdi + 0x10]
    or rdx, qword ptr [rdi + 0x18]
    or rdx, qword ptr [rdi + 0x20]
    or rdx, qword ptr [rdi + 0x28]
    or rdx, qword ptr [rdi + 0x30]
    or rdx, qword ptr [rdi + 0x38]
    jz zero_bytes_next
    mov qword ptr [rdi], rax
    mov qword ptr [rdi + 0x8], rax
    mov qword ptr [rdi + 0x10], rax
    mov qword ptr [rdi + 0x18], rax
    mov qword ptr [rdi + 0x20], rax
    mov qword ptr [rdi + 0x28], rax
    mov qword ptr [rdi + 0x30], rax
    mov qword ptr [rdi + 0x38], rax
zero_bytes_next:
    add rdi, 0x40
    sub rcx, 0x40
    jmp zero_bytes_block
zero_bytes_tail:
    mov rdx, rcx
    shr rcx, 0x3
    rep stosq
    mov rcx, rdx
    and rcx, 0x7
    rep stosb
    ret

# ecx = the SMI_STS bits this SMI serviced. Clear them (write 1 to clear on
# hardware; QEMU ignores the write), then set EOS in SMI_EN as the last act
# before RSM, as coreboot's southbridge_smi_set_eos does (reference/
# smm_semantics.md 5.2): with EOS clear the chipset raises no further SMI.
end_of_smi:
    mov r8, BOOT_INFO
    mov rdx, qword ptr [r8 + BI_PMBASE]
    add edx, 0x34
    mov eax, ecx
    out dx, eax
    mov rdx, qword ptr [r8 + BI_PMBASE]
    add edx, 0x30
    in eax, dx
    or eax, 0x2
    out dx, eax
    ret
