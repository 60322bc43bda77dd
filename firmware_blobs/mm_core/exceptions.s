# The core's exception handlers: every vector 0-31 records a fault record at
# FAULT_RECORD and dead-loops, as edk2's CpuExceptionHandlerLib dumps the
# context and calls CpuDeadLoop. The emulator delivers exceptions through this
# IDT (Unicorn never does), then reports the record.
#
# FAULT_RECORD (one per CPU, u64 each): +0x00 Valid, +0x08 Vector, +0x10 ErrorCode,
# +0x18 RIP, +0x20 CS, +0x28 RFLAGS, +0x30 RSP, +0x38 SS, +0x40 CR2, +0x48 CR3,
# +0x50 RAX, RBX, RCX, RDX, RSI, RDI, RBP, R8 ... R15 (through +0xC0).
# Gates use IST1, so a broken stack still gets a record; the record address
# comes from the per-CPU block (GS).

init_idt:
    cld
    mov rdi, IDT_BASE
    xor eax, eax
    mov ecx, 0x200
    rep stosq
    lea rsi, [rip + isr_table]
    mov rdi, IDT_BASE
    mov ecx, 0x20
init_idt_gate:
    mov rax, qword ptr [rsi]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 0x2], 0x18
    mov byte ptr [rdi + 0x4], 0x1
    mov byte ptr [rdi + 0x5], 0x8e
    shr rax, 0x10
    mov word ptr [rdi + 0x6], ax
    shr rax, 0x10
    mov dword ptr [rdi + 0x8], eax
    mov dword ptr [rdi + 0xc], 0x0
    add rsi, 0x8
    add rdi, 0x10
    dec ecx
    jnz init_idt_gate
    ret

isr_00:
    push 0x0
    push 0
    jmp isr_common
isr_01:
    push 0x0
    push 1
    jmp isr_common
isr_02:
    push 0x0
    push 2
    jmp isr_common
isr_03:
    push 0x0
    push 3
    jmp isr_common
isr_04:
    push 0x0
    push 4
    jmp isr_common
isr_05:
    push 0x0
    push 5
    jmp isr_common
isr_06:
    push 0x0
    push 6
    jmp isr_common
isr_07:
    push 0x0
    push 7
    jmp isr_common
isr_08:
    push 8
    jmp isr_common
isr_09:
    push 0x0
    push 9
    jmp isr_common
isr_0a:
    push 0xa
    jmp isr_common
isr_0b:
    push 0xb
    jmp isr_common
isr_0c:
    push 0xc
    jmp isr_common
isr_0d:
    push 0xd
    jmp isr_common
isr_0e:
    push 0xe
    jmp isr_common
isr_0f:
    push 0x0
    push 0xf
    jmp isr_common
isr_10:
    push 0x0
    push 0x10
    jmp isr_common
isr_11:
    push 0x11
    jmp isr_common
isr_12:
    push 0x0
    push 0x12
    jmp isr_common
isr_13:
    push 0x0
    push 0x13
    jmp isr_common
isr_14:
    push 0x0
    push 0x14
    jmp isr_common
isr_15:
    push 0x15
    jmp isr_common
isr_16:
    push 0x0
    push 0x16
    jmp isr_common
isr_17:
    push 0x0
    push 0x17
    jmp isr_common
isr_18:
    push 0x0
    push 0x18
    jmp isr_common
isr_19:
    push 0x0
    push 0x19
    jmp isr_common
isr_1a:
    push 0x0
    push 0x1a
    jmp isr_common
isr_1b:
    push 0x0
    push 0x1b
    jmp isr_common
isr_1c:
    push 0x0
    push 0x1c
    jmp isr_common
isr_1d:
    push 0x1d
    jmp isr_common
isr_1e:
    push 0x1e
    jmp isr_common
isr_1f:
    push 0x0
    push 0x1f
    jmp isr_common

isr_common:
    push rbx
    push rax
    xor eax, eax
    mov rbx, qword ptr gs:[rax + PC_FAULT_RECORD]
    pop rax
    mov qword ptr [rbx + 0x50], rax
    mov rax, qword ptr [rsp]
    mov qword ptr [rbx + 0x58], rax
    mov qword ptr [rbx + 0x60], rcx
    mov qword ptr [rbx + 0x68], rdx
    mov qword ptr [rbx + 0x70], rsi
    mov qword ptr [rbx + 0x78], rdi
    mov qword ptr [rbx + 0x80], rbp
    mov qword ptr [rbx + 0x88], r8
    mov qword ptr [rbx + 0x90], r9
    mov qword ptr [rbx + 0x98], r10
    mov qword ptr [rbx + 0xa0], r11
    mov qword ptr [rbx + 0xa8], r12
    mov qword ptr [rbx + 0xb0], r13
    mov qword ptr [rbx + 0xb8], r14
    mov qword ptr [rbx + 0xc0], r15
    mov rax, qword ptr [rsp + 0x8]
    mov qword ptr [rbx + 0x8], rax
    mov rax, qword ptr [rsp + 0x10]
    mov qword ptr [rbx + 0x10], rax
    mov rax, qword ptr [rsp + 0x18]
    mov qword ptr [rbx + 0x18], rax
    mov rax, qword ptr [rsp + 0x20]
    mov qword ptr [rbx + 0x20], rax
    mov rax, qword ptr [rsp + 0x28]
    mov qword ptr [rbx + 0x28], rax
    mov rax, qword ptr [rsp + 0x30]
    mov qword ptr [rbx + 0x30], rax
    mov rax, qword ptr [rsp + 0x38]
    mov qword ptr [rbx + 0x38], rax
    mov rax, cr2
    mov qword ptr [rbx + 0x40], rax
    mov rax, cr3
    mov qword ptr [rbx + 0x48], rax
    mov qword ptr [rbx], 0x1
isr_dead_loop:
    hlt
    jmp isr_dead_loop
