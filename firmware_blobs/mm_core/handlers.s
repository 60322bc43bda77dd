# The core's built-in MMI handlers (EFI_MM_HANDLER_ENTRY_POINT, EFIAPI):
#   rcx = DispatchHandle, rdx = Context, r8 = CommBuffer, r9 = &CommBufferSize.

# MM Supervisor request handler, GUID 8c633b23-1260-4ea6-830f-7ddc97382111.
# Semantics of MmSupervisorPkg/Core/Request/RequestDispatcher.c (reference/
# comm_protocols.md 3.2): a bad signature or revision sets Result to
# EFI_INVALID_PARAMETER and returns EFI_SUCCESS; otherwise Result starts as
# EFI_ABORTED; a payload too short for the request returns
# EFI_INVALID_PARAMETER (Result stays EFI_ABORTED); unknown requests, and the
# FETCH_POLICY and COMM_UPDATE requests this core does not implement, get
# Result EFI_UNSUPPORTED.
msup_handler:
    sub rsp, 0x28
    test r8, r8
    jz msup_invalid
    test r9, r9
    jz msup_invalid
    mov rax, qword ptr [r9]
    cmp rax, 0x18
    jb msup_invalid
    cmp dword ptr [r8], 0x5055534d
    jne msup_bad_header
    cmp dword ptr [r8 + 0x4], 0x1
    jne msup_bad_header
    mov rax, 0x8000000000000015
    mov qword ptr [r8 + 0x10], rax
    mov eax, dword ptr [r8 + 0x8]
    cmp eax, 0x3
    je msup_version_info
    cmp eax, 0x1
    je msup_unblock_mem
    mov rax, 0x8000000000000003
    mov qword ptr [r8 + 0x10], rax
    jmp msup_success
msup_version_info:
    mov rax, qword ptr [r9]
    cmp rax, 0x28
    jb msup_invalid
    lea rax, [rip + core_info]
    mov edx, dword ptr [rax + 0x8]
    mov dword ptr [r8 + 0x18], edx
    mov edx, dword ptr [rax + 0xc]
    mov dword ptr [r8 + 0x1c], edx
    mov rdx, qword ptr [rax + 0x10]
    mov qword ptr [r8 + 0x20], rdx
    mov qword ptr [r8 + 0x10], 0x0
    jmp msup_success
msup_unblock_mem:
    mov rax, qword ptr [r9]
    cmp rax, 0x50
    jb msup_invalid
    mov qword ptr [rsp + 0x20], r8
    lea rcx, [r8 + 0x18]
    call unblock_mem
    mov r8, qword ptr [rsp + 0x20]
    mov qword ptr [r8 + 0x10], rax
    jmp msup_success
msup_bad_header:
    mov rax, 0x8000000000000002
    mov qword ptr [r8 + 0x10], rax
msup_success:
    xor eax, eax
    add rsp, 0x28
    ret
msup_invalid:
    mov rax, 0x8000000000000002
    add rsp, 0x28
    ret

# rcx = MM_SUPERVISOR_UNBLOCK_MEMORY_PARAMS (EFI_MEMORY_DESCRIPTOR + GUID).
# Returns the request's Result (MmSupervisorPkg/Core/Request/UnblockMemory.c).
unblock_mem:
    push rbx
    push rsi
    push rdi
    push r12
    push r13
    push r14
    mov rax, CORE_STATE
    cmp qword ptr [rax + CS_READY_TO_LOCK], 0x0
    jne unblock_mem_denied
    mov rax, qword ptr [rcx + 0x28]
    or rax, qword ptr [rcx + 0x30]
    jz unblock_mem_invalid
    mov r12, qword ptr [rcx + 0x8]
    mov r13, qword ptr [rcx + 0x18]
    test r12d, 0xfff
    jnz unblock_mem_violation
    test r13, r13
    jz unblock_mem_invalid
    cmp r13, 0x100000
    ja unblock_mem_violation
    mov r14, r13
    shl r14, 0xc
    add r14, r12
    jc unblock_mem_violation
    mov rax, 0x100000000
    cmp r14, rax
    ja unblock_mem_violation
    # Overlap with MMRAM (TSEG) is a security violation.
    mov rax, BOOT_INFO
    mov rdx, qword ptr [rax + BI_TSEG_BASE]
    mov rbx, rdx
    add rbx, qword ptr [rax + BI_TSEG_SIZE]
    cmp r12, rbx
    jae unblock_mem_no_overlap
    cmp r14, rdx
    ja unblock_mem_violation
unblock_mem_no_overlap:
    # An identical earlier request succeeds again.
    mov rbx, UNBLOCK_TABLE
    mov rax, CORE_STATE
    mov rcx, qword ptr [rax + CS_UNBLOCK_COUNT]
unblock_mem_search:
    test rcx, rcx
    jz unblock_mem_new
    cmp qword ptr [rbx], r12
    jne unblock_mem_search_next
    cmp qword ptr [rbx + 0x8], r13
    je unblock_mem_success
unblock_mem_search_next:
    add rbx, 0x20
    dec rcx
    jmp unblock_mem_search
unblock_mem_new:
    mov rax, CORE_STATE
    mov rcx, qword ptr [rax + CS_UNBLOCK_COUNT]
    cmp rcx, 0x40
    jae unblock_mem_no_resources
    inc qword ptr [rax + CS_UNBLOCK_COUNT]
    mov qword ptr [rbx], r12
    mov qword ptr [rbx + 0x8], r13
    mov rdi, r12
    mov rsi, r13
    call map_range
    mov rax, cr3
    mov cr3, rax
unblock_mem_success:
    xor eax, eax
    jmp unblock_mem_out
unblock_mem_denied:
    mov rax, 0x800000000000000f
    jmp unblock_mem_out
unblock_mem_invalid:
    mov rax, 0x8000000000000002
    jmp unblock_mem_out
unblock_mem_violation:
    mov rax, 0x800000000000001a
    jmp unblock_mem_out
unblock_mem_no_resources:
    mov rax, 0x8000000000000009
unblock_mem_out:
    pop r14
    pop r13
    pop r12
    pop rdi
    pop rsi
    pop rbx
    ret

# gEfiDxeMmReadyToLockProtocolGuid: from now on UNBLOCK_MEM is refused.
ready_to_lock_handler:
    mov rax, CORE_STATE
    mov qword ptr [rax + CS_READY_TO_LOCK], 0x1
    xor eax, eax
    ret

# gEfiEventExitBootServicesGuid.
exit_boot_services_handler:
    mov rax, CORE_STATE
    mov qword ptr [rax + CS_EXIT_BOOT], 0x1
    xor eax, eax
    ret

# EndOfDxe, ReadyToBoot, and the echo handler: accept, leave the buffer as it
# is (the core copies the request back, so the reply equals the request).
event_handler:
    xor eax, eax
    ret
