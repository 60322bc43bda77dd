/*
  Faulty - an MM_STANDALONE driver whose GUID'd MMI handler reads 8 bytes at
  linear address 0: a deliberate NULL-pointer dereference.  Under edk2 (page 0
  not present in the MM page tables) the read raises #PF; the emulator is
  expected to report a guest fault at address 0 from inside this handler.

  SPDX-License-Identifier: BSD-2-Clause-Patent
*/
#include "PiMm.h"

/* d0f1e2a3-b4c5-4d6e-8f70-8192a3b4c5d6 */
CONST EFI_GUID gFaultyGuid = {
  0xd0f1e2a3, 0xb4c5, 0x4d6e, { 0x8f, 0x70, 0x81, 0x92, 0xa3, 0xb4, 0xc5, 0xd6 }
};

/*
  The pointer is read through a volatile global so that the compiler can neither
  prove it NULL (and replace the access with a trap instruction) nor drop it.
*/
volatile UINT64 *volatile gNullPointer = NULL;

/*
  Reads *gNullPointer.  Should the read not fault, the value read is stored in
  the first 8 payload bytes (when the payload has room) and EFI_SUCCESS is
  returned: a test treats that outcome as the fault having gone undetected.
*/
STATIC EFI_STATUS EFIAPI
NullDereferenceHandler (
  IN EFI_HANDLE     DispatchHandle,
  IN CONST VOID     *Context OPTIONAL,
  IN OUT VOID       *CommBuffer OPTIONAL,
  IN OUT UINTN      *CommBufferSize OPTIONAL
  )
{
  UINT64  Value;

  (VOID)DispatchHandle;
  (VOID)Context;
  Value = *gNullPointer;
  if ((CommBuffer != NULL) && (CommBufferSize != NULL) && (*CommBufferSize >= sizeof (UINT64))) {
    *(volatile UINT64 *)CommBuffer = Value;
  }
  return EFI_SUCCESS;
}

SMMEMU_MMI_HANDLER gMmiHandlers[] = {
  { &gFaultyGuid, NullDereferenceHandler },
};

EFI_STATUS EFIAPI
_ModuleEntryPoint (
  IN EFI_HANDLE           ImageHandle,
  IN EFI_MM_SYSTEM_TABLE  *MmSt
  )
{
  (VOID)ImageHandle;
  return SmmemuRegisterHandlers (MmSt, gMmiHandlers, SMMEMU_ARRAY_SIZE (gMmiHandlers));
}
