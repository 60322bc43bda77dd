# 4 KiB identity mappings for buffers outside SMRAM: present, writable, NX.
# Page tables come from the pool [PT_POOL, PT_POOL_END); PD entries covering
# SMRAM are 2 MiB pages and are never split.

# rdi = physical start (page aligned, 0 = nothing to map), rsi = page count.
# Preserves every register but rax.
map_range:
    push rdi
    push rsi
    test rdi, rdi
    jz map_range_done
map_range_loop:
    test rsi, rsi
    jz map_range_done
    call map_page
    add rdi, 0x1000
    dec rsi
    jmp map_range_loop
map_range_done:
    pop rsi
    pop rdi
    ret

# rdi = physical page address below 4 GiB. rax = 0 on success.
map_page:
    push rbx
    push rcx
    push rdx
    mov rax, rdi
    shr rax, 0x1e
    cmp rax, 0x4
    jae map_page_fail
    shl rax, 0xc
    mov rbx, PD0
    add rbx, rax
    mov rax, rdi
    shr rax, 0x15
    and eax, 0x1ff
    lea rbx, [rbx + rax*8]
    mov rax, qword ptr [rbx]
    test rax, rax
    jnz map_page_have_table
    mov rdx, CORE_STATE
    mov rax, qword ptr [rdx + CS_NEXT_PT]
    mov rcx, PT_POOL_END
    cmp rax, rcx
    jae map_page_fail
    lea rcx, [rax + 0x1000]
    mov qword ptr [rdx + CS_NEXT_PT], rcx
    or rax, 0x3
    mov qword ptr [rbx], rax
map_page_have_table:
    test al, 0x80
    jnz map_page_fail
    mov rcx, 0xffffffffff000
    and rax, rcx
    mov rdx, rdi
    shr rdx, 0xc
    and edx, 0x1ff
    lea rbx, [rax + rdx*8]
    mov rax, rdi
    or rax, 0x3
    bts rax, 0x3f
    mov qword ptr [rbx], rax
    xor eax, eax
    jmp map_page_out
map_page_fail:
    mov eax, 0x1
map_page_out:
    pop rdx
    pop rcx
    pop rbx
    ret
