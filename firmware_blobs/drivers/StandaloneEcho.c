/*
  StandaloneEcho - an MM_STANDALONE driver with one GUID'd MMI handler that
  reverses the bytes of its payload in place.  The reversal (rather than a plain
  echo) lets a test tell this handler from smmemu's built-in echo handler.

  SPDX-License-Identifier: BSD-2-Clause-Patent
*/
#include "PiMm.h"

/* 3e0a7f4e-9d3c-4b0f-8a41-5d7e2c1b9a60 */
CONST EFI_GUID gStandaloneEchoGuid = {
  0x3e0a7f4e, 0x9d3c, 0x4b0f, { 0x8a, 0x41, 0x5d, 0x7e, 0x2c, 0x1b, 0x9a, 0x60 }
};

/*
  Reverses CommBuffer[0 .. *CommBufferSize) in place.  A NULL buffer or size,
  or an empty payload, is left alone.  Always returns EFI_SUCCESS.
*/
STATIC EFI_STATUS EFIAPI
ReverseHandler (
  IN EFI_HANDLE     DispatchHandle,
  IN CONST VOID     *Context OPTIONAL,
  IN OUT VOID       *CommBuffer OPTIONAL,
  IN OUT UINTN      *CommBufferSize OPTIONAL
  )
{
  volatile UINT8  *Bytes;
  UINTN           Low;
  UINTN           High;
  UINT8           Byte;

  (VOID)DispatchHandle;
  (VOID)Context;
  if ((CommBuffer == NULL) || (CommBufferSize == NULL) || (*CommBufferSize == 0)) {
    return EFI_SUCCESS;
  }
  Bytes = (volatile UINT8 *)CommBuffer;
  Low   = 0;
  High  = *CommBufferSize - 1;
  while (Low < High) {
    Byte        = Bytes[Low];
    Bytes[Low]  = Bytes[High];
    Bytes[High] = Byte;
    Low++;
    High--;
  }
  return EFI_SUCCESS;
}

SMMEMU_MMI_HANDLER gMmiHandlers[] = {
  { &gStandaloneEchoGuid, ReverseHandler },
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
