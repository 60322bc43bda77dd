# smmemu MM core: SMRAM layout shared by every source file.
#
# The image is linked for TSEG at 0x07800000 (8 MiB), the layout of both smmemu
# profiles. SMBASE of CPU 0 is the TSEG base, so the image starts at
# SMBASE+0x8000 (the architectural SMI entry point) and must end before
# SMBASE+0xFB00 (the save-state tile). Everything else lives in the data area
# from TSEG+0x10000. The host writes BOOT_INFO before the first SMI, as an IPL
# hands HOBs to a Standalone MM core.

.equ TSEG_BASE,        0x07800000
.equ BOOT_INFO,        0x07810000
.equ CORE_STATE,       0x07810100
.equ FAULT_RECORD,     0x07810200
.equ HANDLER_TABLE,    0x07811000
.equ UNBLOCK_TABLE,    0x07812000
.equ IDT_BASE,         0x07813000
.equ TSS_BASE,         0x07814000
.equ BOOT_PML4,        0x07815000
.equ BOOT_PDPT,        0x07816000
.equ BOOT_PD,          0x07817000
.equ PML4,             0x07818000
.equ PDPT,             0x07819000
.equ PD0,              0x0781a000
.equ PT_POOL,          0x0781e000
.equ PT_POOL_END,      0x07830000
.equ EXC_STACK_TOP,    0x07834000
.equ STACK_TOP,        0x07840000
.equ COMM_COPY,        0x07840000
.equ COMM_COPY_SIZE,   0x00020000
# SMRAM heap for images and handlers the host loads (up to the last page, which
# the emulator keeps free).
.equ MM_HEAP,          0x07880000
.equ MM_HEAP_END,      0x07fff000

# BOOT_INFO fields
.equ BI_BUFFERS,       0x10
.equ BI_TSEG_BASE,     0x40
.equ BI_TSEG_SIZE,     0x48
.equ BI_PMBASE,        0x50

# CORE_STATE fields
.equ CS_INITIALIZED,   0x00
.equ CS_READY_TO_LOCK, 0x08
.equ CS_EXIT_BOOT,     0x10
.equ CS_SMI_COUNT,     0x18
.equ CS_SMI_STS,       0x20
.equ CS_APM_CNT,       0x28
.equ CS_CHANNEL,       0x30
.equ CS_NEXT_PT,       0x40
.equ CS_UNBLOCK_COUNT, 0x48
.equ CS_MMI_STATUS,    0x50
