# smmemu MM core: SMRAM layout shared by every source file.
#
# The image is linked for TSEG at 0x07800000 (8 MiB), the layout of both smmemu
# profiles, and supports up to MAX_CPUS CPUs. CPU i's SMBASE is
# TSEG_BASE + i * SMBASE_TILE (after relocation from the reset value 0x30000),
# so its entry stub sits at SMBASE+0x8000 and its save state below SMBASE+0x10000,
# all inside [TSEG_BASE, TSEG_BASE + 0x1e000). The image proper lives at
# TSEG_BASE + 0x20000; the host copies the entry stub into each tile, patching
# the CPU index, as edk2's PiSmmCpuDxeSmm patches gcSmiHandlerTemplate.
# The host writes BOOT_INFO before the first SMI, as an IPL hands HOBs to a
# Standalone MM core.

.equ TSEG_BASE,        0x07800000
.equ MAX_CPUS,         0x8
.equ SMBASE_TILE,      0x2000

.equ BOOT_INFO,        0x07840000
.equ CORE_STATE,       0x07840100
.equ FAULT_RECORD,     0x07841000
.equ FAULT_RECORD_SIZE, 0x100
.equ HANDLER_TABLE,    0x07842000
.equ UNBLOCK_TABLE,    0x07843000
.equ IDT_BASE,         0x07844000
.equ TSS_BASE,         0x07845000
.equ TSS_SIZE,         0x80
.equ PERCPU,           0x07846000
.equ PERCPU_SIZE,      0x100
.equ BOOT_PML4,        0x07847000
.equ BOOT_PDPT,        0x07848000
.equ BOOT_PD,          0x07849000
.equ PML4,             0x0784a000
.equ PDPT,             0x0784b000
.equ PD0,              0x0784c000
.equ PT_POOL,          0x07850000
.equ PT_POOL_END,      0x07860000
.equ EXC_STACK_TOP,    0x07861000
.equ EXC_STACK_SIZE,   0x1000
.equ STACK_TOP,        0x07874000
.equ STACK_SIZE,       0x4000
.equ COMM_COPY,        0x078a0000
.equ COMM_COPY_SIZE,   0x00020000
# SMRAM heap for images and handlers the host loads (up to the last page, which
# the emulator keeps free).
.equ MM_HEAP,          0x078c0000
.equ MM_HEAP_END,      0x07fff000

# BOOT_INFO fields
.equ BI_BUFFERS,       0x10
.equ BI_TSEG_BASE,     0x40
.equ BI_TSEG_SIZE,     0x48
.equ BI_PMBASE,        0x50
.equ BI_CPU_COUNT,     0x58
# Non-zero: process requests in the comm buffer itself, as edk2's traditional
# PiSmmCore does, instead of on a copy in SMRAM (the Standalone MM core's way).
.equ BI_IN_PLACE,      0x60
# Non-zero: map all DRAM below TSEG (NX) in the SMM page tables, as edk2 does
# before ready-to-lock, instead of only the comm buffers.
.equ BI_MAP_DRAM,      0x68
# [BI_MAP_MMIO, BI_MAP_MMIO_END): a 2 MiB-aligned MMIO window below 4 GiB (the platform
# flash) to map uncached and NX in SMM; equal values map nothing.
.equ BI_MAP_MMIO,      0x70
.equ BI_MAP_MMIO_END,  0x78
.equ RELOC_MAILBOX,    0x07840080
.equ RELOC_FIELD,      0x07840084
.equ RELOC_DONE,       0x07840088

# CORE_STATE fields
.equ CS_INITIALIZED,   0x00
.equ CS_READY_TO_LOCK, 0x08
.equ CS_EXIT_BOOT,     0x10
.equ CS_SMI_COUNT,     0x18
.equ CS_SMI_STS,       0x20
.equ CS_APM_CNT,       0x28
.equ CS_CHANNEL,       0x30
.equ CS_BOOT_LOCK,     0x38
.equ CS_NEXT_PT,       0x40
.equ CS_UNBLOCK_COUNT, 0x48
.equ CS_MMI_STATUS,    0x50
.equ CS_BOOT_READY,    0x58
.equ CS_ARRIVED,       0x60
.equ CS_GENERATION,    0x68
.equ CS_DEPARTED,      0x70
.equ CS_BSP,           0x78
.equ CS_CPU_READY,     0x80

# PERCPU fields (addressed through GS)
.equ PC_INDEX,         0x00
.equ PC_FAULT_RECORD,  0x08

# Bounded waits in the rendezvous (iterations of a pause loop).
.equ ARRIVAL_TIMEOUT,  0x10000
.equ RELEASE_TIMEOUT,  0x10000
