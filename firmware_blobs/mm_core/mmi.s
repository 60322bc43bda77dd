# MmiManage and MmiHandlerRegister, EFIAPI (Microsoft x64) functions.
#
# The handler table is an array of 32-byte records at HANDLER_TABLE+0x10:
#   +0x00 Flags (bit 0 in use, bit 1 root handler)
#   +0x08 Handler (EFI_MM_HANDLER_ENTRY_POINT)
#   +0x10 HandlerType GUID (zero for root handlers)
# HANDLER_TABLE+0x00 holds the count and +0x08 the capacity. The record address
# is the DispatchHandle. Built-in and loaded handlers share this one table and
# this one dispatch path.
#
# The combination rules follow edk2 StandaloneMmPkg/Core/Mmi.c (reference/
# comm_protocols.md 1.6): start with EFI_NOT_FOUND; EFI_SUCCESS wins and stops a
# GUID'd dispatch; EFI_INTERRUPT_PENDING ends a GUID'd dispatch with that status
# and is kept for root dispatch unless EFI_SUCCESS was seen;
# EFI_WARN_INTERRUPT_SOURCE_QUIESCED counts as EFI_SUCCESS;
# EFI_WARN_INTERRUPT_SOURCE_PENDING is kept unless EFI_SUCCESS was seen; any
# other status is ignored (edk2 ASSERTs in DEBUG builds).

# EFI_STATUS MmiManage(HandlerType, Context, CommBuffer, CommBufferSize)
mmi_manage:
    push rbp
    mov rbp, rsp
    push rbx
    push rsi
    push rdi
    push r12
    push r13
    push r14
    push r15
    sub rsp, 0x28
    mov r12, rcx
    mov r13, rdx
    mov r14, r8
    mov r15, r9
    mov rsi, 0x800000000000000e
    mov rbx, HANDLER_TABLE
    mov rdi, qword ptr [rbx]
    add rbx, 0x10
mmi_manage_loop:
    test rdi, rdi
    jz mmi_manage_done
    mov rax, qword ptr [rbx]
    test al, 0x1
    jz mmi_manage_next
    test r12, r12
    jz mmi_manage_want_root
    test al, 0x2
    jnz mmi_manage_next
    mov rax, qword ptr [rbx + 0x10]
    cmp rax, qword ptr [r12]
    jne mmi_manage_next
    mov rax, qword ptr [rbx + 0x18]
    cmp rax, qword ptr [r12 + 0x8]
    jne mmi_manage_next
    jmp mmi_manage_call
mmi_manage_want_root:
    test al, 0x2
    jz mmi_manage_next
mmi_manage_call:
    mov rcx, rbx
    mov rdx, r13
    mov r8, r14
    mov r9, r15
    call qword ptr [rbx + 0x8]
    test rax, rax
    jnz mmi_manage_not_success
    xor esi, esi
    test r12, r12
    jnz mmi_manage_done
    jmp mmi_manage_next
mmi_manage_not_success:
    mov rdx, 0xa000000000000000
    cmp rax, rdx
    jne mmi_manage_not_pending
    test r12, r12
    jz mmi_manage_root_pending
    mov rsi, rax
    jmp mmi_manage_done
mmi_manage_root_pending:
    test rsi, rsi
    jz mmi_manage_next
    mov rsi, rax
    jmp mmi_manage_next
mmi_manage_not_pending:
    mov rdx, 0x2000000000000001
    cmp rax, rdx
    jne mmi_manage_not_quiesced
    xor esi, esi
    jmp mmi_manage_next
mmi_manage_not_quiesced:
    mov rdx, 0x2000000000000000
    cmp rax, rdx
    jne mmi_manage_next
    test rsi, rsi
    jz mmi_manage_next
    mov rsi, rax
mmi_manage_next:
    add rbx, 0x20
    dec rdi
    jmp mmi_manage_loop
mmi_manage_done:
    mov rax, rsi
    add rsp, 0x28
    pop r15
    pop r14
    pop r13
    pop r12
    pop rdi
    pop rsi
    pop rbx
    pop rbp
    ret

# EFI_STATUS MmiHandlerRegister(Handler, HandlerType OPTIONAL, DispatchHandle)
mmi_handler_register:
    test rcx, rcx
    jz mmi_handler_register_invalid
    test r8, r8
    jz mmi_handler_register_invalid
    mov r10, HANDLER_TABLE
    mov rax, qword ptr [r10]
    cmp rax, qword ptr [r10 + 0x8]
    jae mmi_handler_register_full
    mov r11, rax
    shl r11, 0x5
    lea r11, [r10 + r11 + 0x10]
    inc rax
    mov qword ptr [r10], rax
    mov qword ptr [r11 + 0x8], rcx
    test rdx, rdx
    jz mmi_handler_register_root
    mov rax, qword ptr [rdx]
    mov qword ptr [r11 + 0x10], rax
    mov rax, qword ptr [rdx + 0x8]
    mov qword ptr [r11 + 0x18], rax
    mov qword ptr [r11], 0x1
    jmp mmi_handler_register_done
mmi_handler_register_root:
    mov qword ptr [r11 + 0x10], 0x0
    mov qword ptr [r11 + 0x18], 0x0
    mov qword ptr [r11], 0x3
mmi_handler_register_done:
    mov qword ptr [r8], r11
    xor eax, eax
    ret
mmi_handler_register_invalid:
    mov rax, 0x8000000000000002
    ret
mmi_handler_register_full:
    mov rax, 0x8000000000000009
    ret
