/*
  PiMm.h - the Platform Initialization Management Mode interfaces that smmemu's
  test drivers use.  Written from the UEFI PI Specification 1.8, Volume 4
  "Management Mode Core Interface": section 2.1 "EFI_MM_SYSTEM_TABLE" and the
  MMI management services in 2.2, section 3.2 "EFI_MM_BASE_PROTOCOL" (GUID kept
  from PI 1.4's EFI_SMM_BASE2_PROTOCOL) and section 6.3 "MM Software
  Dispatch Protocol".  PI 1.5 renamed SMM to MM and kept the layouts and GUIDs,
  so the traditional (SMM) names are aliases of the MM ones.

  SPDX-License-Identifier: BSD-2-Clause-Patent
*/
#ifndef SMMEMU_DRIVERS_PI_MM_H_
#define SMMEMU_DRIVERS_PI_MM_H_

#include "Uefi.h"

/*
  An MMI handler (PI 1.8 Vol. 4, MmiHandlerRegister).  For a handler registered
  with a GUID and reached through MM Communicate, CommBuffer is the payload that
  follows the EFI_MM_COMMUNICATE_HEADER and *CommBufferSize its MessageLength;
  Context is NULL.  For a child handler of a dispatch protocol the meanings of
  Context and CommBuffer are set by that protocol.
*/
typedef EFI_STATUS (EFIAPI *EFI_MM_HANDLER_ENTRY_POINT)(
  IN EFI_HANDLE DispatchHandle, IN CONST VOID *Context OPTIONAL,
  IN OUT VOID *CommBuffer OPTIONAL, IN OUT UINTN *CommBufferSize OPTIONAL);

typedef EFI_STATUS (EFIAPI *EFI_MM_INTERRUPT_REGISTER)(
  IN EFI_MM_HANDLER_ENTRY_POINT Handler, IN CONST EFI_GUID *HandlerType OPTIONAL,
  OUT EFI_HANDLE *DispatchHandle);
typedef EFI_STATUS (EFIAPI *EFI_MM_INTERRUPT_UNREGISTER)(IN EFI_HANDLE DispatchHandle);
typedef EFI_STATUS (EFIAPI *EFI_MM_INTERRUPT_MANAGE)(
  IN CONST EFI_GUID *HandlerType, IN CONST VOID *Context OPTIONAL,
  IN OUT VOID *CommBuffer OPTIONAL, IN OUT UINTN *CommBufferSize OPTIONAL);

typedef EFI_STATUS (EFIAPI *EFI_MM_INSTALL_CONFIGURATION_TABLE)(
  IN CONST VOID *SystemTable, IN CONST EFI_GUID *Guid, IN VOID *Table, IN UINTN TableSize);
typedef EFI_STATUS (EFIAPI *EFI_MM_REGISTER_PROTOCOL_NOTIFY)(
  IN CONST EFI_GUID *Protocol, IN VOID *Function, OUT VOID **Registration);
typedef VOID (EFIAPI *EFI_AP_PROCEDURE)(IN OUT VOID *Buffer);
typedef EFI_STATUS (EFIAPI *EFI_MM_STARTUP_THIS_AP)(
  IN EFI_AP_PROCEDURE Procedure, IN UINTN CpuNumber, IN OUT VOID *ProcArguments OPTIONAL);

/* EFI_MM_CPU_IO_PROTOCOL: memory and I/O access, each a Read and a Write. */
typedef EFI_STATUS (EFIAPI *EFI_MM_CPU_IO)(
  IN CONST VOID *This, IN UINTN Width, IN UINT64 Address, IN UINTN Count,
  IN OUT VOID *Buffer);
typedef struct {
  EFI_MM_CPU_IO  Read;
  EFI_MM_CPU_IO  Write;
} EFI_MM_IO_ACCESS;
typedef struct {
  EFI_MM_IO_ACCESS  Mem;
  EFI_MM_IO_ACCESS  Io;
} EFI_MM_CPU_IO_PROTOCOL;

/* EFI_MM_SYSTEM_TABLE (PI 1.8 Vol. 4, 2.1); EFI_SMM_SYSTEM_TABLE2 has the same layout. */
typedef struct {
  EFI_TABLE_HEADER                    Hdr;
  CHAR16                              *MmFirmwareVendor;
  UINT32                              MmFirmwareRevision;
  EFI_MM_INSTALL_CONFIGURATION_TABLE  MmInstallConfigurationTable;
  EFI_MM_CPU_IO_PROTOCOL              MmIo;
  EFI_ALLOCATE_POOL                   MmAllocatePool;
  EFI_FREE_POOL                       MmFreePool;
  EFI_ALLOCATE_PAGES                  MmAllocatePages;
  EFI_FREE_PAGES                      MmFreePages;
  EFI_MM_STARTUP_THIS_AP              MmStartupThisAp;
  UINTN                               CurrentlyExecutingCpu;
  UINTN                               NumberOfCpus;
  UINTN                               *CpuSaveStateSize;
  VOID                                **CpuSaveState;
  UINTN                               NumberOfTableEntries;
  EFI_CONFIGURATION_TABLE             *MmConfigurationTable;
  EFI_INSTALL_PROTOCOL_INTERFACE      MmInstallProtocolInterface;
  EFI_UNINSTALL_PROTOCOL_INTERFACE    MmUninstallProtocolInterface;
  EFI_HANDLE_PROTOCOL                 MmHandleProtocol;
  EFI_MM_REGISTER_PROTOCOL_NOTIFY     MmRegisterProtocolNotify;
  EFI_LOCATE_HANDLE                   MmLocateHandle;
  EFI_LOCATE_PROTOCOL                 MmLocateProtocol;
  EFI_MM_INTERRUPT_MANAGE             MmiManage;
  EFI_MM_INTERRUPT_REGISTER           MmiHandlerRegister;
  EFI_MM_INTERRUPT_UNREGISTER         MmiHandlerUnRegister;
} EFI_MM_SYSTEM_TABLE;

typedef EFI_MM_SYSTEM_TABLE         EFI_SMM_SYSTEM_TABLE2;
typedef EFI_MM_HANDLER_ENTRY_POINT  EFI_SMM_HANDLER_ENTRY_POINT2;

SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmFirmwareRevision, 0x20);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmIo, 0x30);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmAllocatePool, 0x50);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmFreePool, 0x58);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, CurrentlyExecutingCpu, 0x78);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmConfigurationTable, 0xA0);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmLocateProtocol, 0xD0);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmiManage, 0xD8);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmiHandlerRegister, 0xE0);
SMMEMU_OFFSET_IS (EFI_MM_SYSTEM_TABLE, MmiHandlerUnRegister, 0xE8);
_Static_assert (sizeof (EFI_MM_SYSTEM_TABLE) == 0xF0, "EFI_MM_SYSTEM_TABLE size");

/*
  EFI_MM_BASE_PROTOCOL / EFI_SMM_BASE2_PROTOCOL (PI 1.8 Vol. 4, 3.2), installed
  in the boot-services protocol database; a traditional MM driver finds the MM
  system table through it.
*/
#define EFI_SMM_BASE2_PROTOCOL_GUID \
  { 0xf4ccbfb7, 0xf6e0, 0x47fd, { 0x9d, 0xd4, 0x10, 0xa8, 0xf1, 0x50, 0xc1, 0x91 } }

typedef struct EFI_SMM_BASE2_PROTOCOL EFI_SMM_BASE2_PROTOCOL;
typedef EFI_STATUS (EFIAPI *EFI_SMM_INSIDE_OUT2)(
  IN CONST EFI_SMM_BASE2_PROTOCOL *This, OUT BOOLEAN *InSmram);
typedef EFI_STATUS (EFIAPI *EFI_SMM_GET_SMST_LOCATION2)(
  IN CONST EFI_SMM_BASE2_PROTOCOL *This, IN OUT EFI_SMM_SYSTEM_TABLE2 **Smst);
struct EFI_SMM_BASE2_PROTOCOL {
  EFI_SMM_INSIDE_OUT2         InSmm;
  EFI_SMM_GET_SMST_LOCATION2  GetSmstLocation;
};

/* EFI_MM_SW_DISPATCH_PROTOCOL / EFI_SMM_SW_DISPATCH2_PROTOCOL (PI 1.8 Vol. 4, 6.3). */
#define EFI_SMM_SW_DISPATCH2_PROTOCOL_GUID \
  { 0x18a3c6dc, 0x5eea, 0x48c8, { 0xa1, 0xc1, 0xb5, 0x33, 0x89, 0xf9, 0x89, 0x99 } }

/* Register context: the value written to the APM control port (0xB2 on Intel). */
typedef struct {
  UINTN  SwSmiInputValue;
} EFI_SMM_SW_REGISTER_CONTEXT;

/* CommBuffer handed to a SW MMI child handler. */
typedef struct {
  UINTN  SwSmiCpuIndex;
  UINT8  CommandPort;
  UINT8  DataPort;
} EFI_SMM_SW_CONTEXT;

typedef struct EFI_SMM_SW_DISPATCH2_PROTOCOL EFI_SMM_SW_DISPATCH2_PROTOCOL;
typedef EFI_STATUS (EFIAPI *EFI_SMM_SW_REGISTER2)(
  IN CONST EFI_SMM_SW_DISPATCH2_PROTOCOL *This,
  IN EFI_SMM_HANDLER_ENTRY_POINT2 DispatchFunction,
  IN OUT EFI_SMM_SW_REGISTER_CONTEXT *RegisterContext, OUT EFI_HANDLE *DispatchHandle);
typedef EFI_STATUS (EFIAPI *EFI_SMM_SW_UNREGISTER2)(
  IN CONST EFI_SMM_SW_DISPATCH2_PROTOCOL *This, IN EFI_HANDLE DispatchHandle);
struct EFI_SMM_SW_DISPATCH2_PROTOCOL {
  EFI_SMM_SW_REGISTER2    Register;
  EFI_SMM_SW_UNREGISTER2  UnRegister;
  UINTN                   MaximumSwiValue;
};

SMMEMU_OFFSET_IS (EFI_SMM_BASE2_PROTOCOL, GetSmstLocation, 0x8);
SMMEMU_OFFSET_IS (EFI_SMM_SW_DISPATCH2_PROTOCOL, MaximumSwiValue, 0x10);
SMMEMU_OFFSET_IS (EFI_SMM_SW_CONTEXT, CommandPort, 0x8);
_Static_assert (sizeof (EFI_SMM_SW_CONTEXT) == 0x10, "EFI_SMM_SW_CONTEXT size");

/*
  Every driver here keeps its GUID'd handlers in a table of pointers and
  registers them in a loop.  The table is a writable global with external
  linkage, so the compiler cannot fold it away: it stays in .data and gives each
  image DIR64 base relocations (x64 code itself is RIP-relative).  An emulator
  that loads a driver without applying them registers wrong pointers.
*/
typedef struct {
  CONST EFI_GUID              *HandlerType;
  EFI_MM_HANDLER_ENTRY_POINT  Handler;
} SMMEMU_MMI_HANDLER;

#define SMMEMU_ARRAY_SIZE(Array) (sizeof (Array) / sizeof ((Array)[0]))

/* Registers each entry of Table with MmiHandlerRegister; stops at the first error. */
STATIC inline EFI_STATUS
SmmemuRegisterHandlers (
  IN EFI_MM_SYSTEM_TABLE       *Mmst,
  IN CONST SMMEMU_MMI_HANDLER  *Table,
  IN UINTN                     Count
  )
{
  EFI_STATUS  Status;
  EFI_HANDLE  DispatchHandle;
  UINTN       Index;

  for (Index = 0; Index < Count; Index++) {
    DispatchHandle = NULL;
    Status = Mmst->MmiHandlerRegister (Table[Index].Handler, Table[Index].HandlerType,
                                       &DispatchHandle);
    if (EFI_ERROR (Status)) {
      return Status;
    }
  }
  return EFI_SUCCESS;
}

#endif
