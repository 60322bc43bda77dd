/*
  SwSmiCounter - a traditional DXE_SMM_DRIVER.  Its entry point receives the
  boot-services EFI_SYSTEM_TABLE, finds the MM system table through
  EFI_SMM_BASE2_PROTOCOL, registers a software-MMI child handler for command
  0x61 with EFI_SMM_SW_DISPATCH2_PROTOCOL, and a GUID'd MMI handler that
  reports how many times the software-MMI handler has run.

  SPDX-License-Identifier: BSD-2-Clause-Patent
*/
#include "PiMm.h"

/* 5a1c0d2e-7f3b-4e91-b6a8-0c4d2f9e8b17 */
CONST EFI_GUID gSwSmiCounterGuid = {
  0x5a1c0d2e, 0x7f3b, 0x4e91, { 0xb6, 0xa8, 0x0c, 0x4d, 0x2f, 0x9e, 0x8b, 0x17 }
};

EFI_GUID gEfiSmmBase2ProtocolGuid       = EFI_SMM_BASE2_PROTOCOL_GUID;
EFI_GUID gEfiSmmSwDispatch2ProtocolGuid = EFI_SMM_SW_DISPATCH2_PROTOCOL_GUID;

#define SW_SMI_COUNTER_COMMAND  0x61

/* Times SwSmiCallback has run; lives in .data. */
volatile UINT64  gSwSmiCount;

/* Software-MMI child handler for command 0x61: counts. */
STATIC EFI_STATUS EFIAPI
SwSmiCallback (
  IN EFI_HANDLE     DispatchHandle,
  IN CONST VOID     *Context OPTIONAL,
  IN OUT VOID       *CommBuffer OPTIONAL,
  IN OUT UINTN      *CommBufferSize OPTIONAL
  )
{
  (VOID)DispatchHandle;
  (VOID)Context;
  (VOID)CommBuffer;
  (VOID)CommBufferSize;
  gSwSmiCount = gSwSmiCount + 1;
  return EFI_SUCCESS;
}

/*
  GUID'd handler: writes the count as a UINT64 to the first 8 payload bytes and
  sets *CommBufferSize to 8.  A payload shorter than 8 bytes is left alone.
*/
STATIC EFI_STATUS EFIAPI
CounterQueryHandler (
  IN EFI_HANDLE     DispatchHandle,
  IN CONST VOID     *Context OPTIONAL,
  IN OUT VOID       *CommBuffer OPTIONAL,
  IN OUT UINTN      *CommBufferSize OPTIONAL
  )
{
  (VOID)DispatchHandle;
  (VOID)Context;
  if ((CommBuffer == NULL) || (CommBufferSize == NULL) || (*CommBufferSize < sizeof (UINT64))) {
    return EFI_SUCCESS;
  }
  *(volatile UINT64 *)CommBuffer = gSwSmiCount;
  *CommBufferSize = sizeof (UINT64);
  return EFI_SUCCESS;
}

SMMEMU_MMI_HANDLER gMmiHandlers[] = {
  { &gSwSmiCounterGuid, CounterQueryHandler },
};

EFI_STATUS EFIAPI
_ModuleEntryPoint (
  IN EFI_HANDLE        ImageHandle,
  IN EFI_SYSTEM_TABLE  *SystemTable
  )
{
  EFI_SMM_BASE2_PROTOCOL         *SmmBase2;
  EFI_SMM_SYSTEM_TABLE2          *Smst;
  EFI_SMM_SW_DISPATCH2_PROTOCOL  *SwDispatch;
  EFI_SMM_SW_REGISTER_CONTEXT    SwContext;
  EFI_HANDLE                     SwHandle;
  BOOLEAN                        InSmram;
  EFI_STATUS                     Status;

  (VOID)ImageHandle;
  SmmBase2 = NULL;
  Status = SystemTable->BootServices->LocateProtocol (&gEfiSmmBase2ProtocolGuid, NULL,
                                                      (VOID **)&SmmBase2);
  if (EFI_ERROR (Status)) {
    return Status;
  }

  InSmram = FALSE;
  Status = SmmBase2->InSmm (SmmBase2, &InSmram);
  if (EFI_ERROR (Status)) {
    return Status;
  }
  if (!InSmram) {
    return EFI_UNSUPPORTED;
  }

  Smst = NULL;
  Status = SmmBase2->GetSmstLocation (SmmBase2, &Smst);
  if (EFI_ERROR (Status)) {
    return Status;
  }
  if (Smst == NULL) {
    return EFI_NOT_FOUND;
  }

  SwDispatch = NULL;
  Status = Smst->MmLocateProtocol (&gEfiSmmSwDispatch2ProtocolGuid, NULL, (VOID **)&SwDispatch);
  if (EFI_ERROR (Status)) {
    return Status;
  }

  SwContext.SwSmiInputValue = SW_SMI_COUNTER_COMMAND;
  SwHandle = NULL;
  Status = SwDispatch->Register (SwDispatch, SwSmiCallback, &SwContext, &SwHandle);
  if (EFI_ERROR (Status)) {
    return Status;
  }

  return SmmemuRegisterHandlers (Smst, gMmiHandlers, SMMEMU_ARRAY_SIZE (gMmiHandlers));
}
