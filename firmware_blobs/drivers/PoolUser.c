/*
  PoolUser - an MM_STANDALONE driver whose GUID'd MMI handler allocates MM pool,
  fills it and frees it on every call.  Request byte 0 selects a misuse for the
  emulator's pool checks to catch: 1 frees the buffer twice, 2 also frees a
  pointer that never came from the pool.

  SPDX-License-Identifier: BSD-2-Clause-Patent
*/
#include "PiMm.h"

/* 9b7e4c12-3a5d-4f60-8e2b-1c0f7a6d5e43 */
CONST EFI_GUID gPoolUserGuid = {
  0x9b7e4c12, 0x3a5d, 0x4f60, { 0x8e, 0x2b, 0x1c, 0x0f, 0x7a, 0x6d, 0x5e, 0x43 }
};

#define POOL_USER_MODE_NORMAL        0
#define POOL_USER_MODE_DOUBLE_FREE   1
#define POOL_USER_MODE_FOREIGN_FREE  2
#define POOL_USER_ALLOCATION_SIZE    64
#define POOL_USER_FILL_BASE          0xA0

/*
  The payload.  Only Mode is read; the results are written when the payload is
  at least sizeof (POOL_USER_PAYLOAD) bytes long, each one as soon as it is
  known, so that a run stopped by a detected misuse still shows the steps done.
*/
typedef struct {
  UINT8   Mode;             /* in: 0 normal, 1 double free, 2 foreign free; others as 0 */
  UINT8   Reserved[7];
  UINT64  AllocateStatus;   /* out: MmAllocatePool's status */
  UINT64  Buffer;           /* out: the address MmAllocatePool returned */
  UINT64  FreeStatus;       /* out: MmFreePool (Buffer) */
  UINT64  ExtraFreeStatus;  /* out: mode 1: second MmFreePool (Buffer); mode 2: MmFreePool
                               (&gForeignBuffer[0]); mode 0: 0 */
} POOL_USER_PAYLOAD;

_Static_assert (sizeof (POOL_USER_PAYLOAD) == 40, "POOL_USER_PAYLOAD size");

EFI_MM_SYSTEM_TABLE  *gMmst;

/* The pointer mode 2 frees: 64 bytes of this image's .data, never pool memory. */
UINT8  gForeignBuffer[POOL_USER_ALLOCATION_SIZE] = { 1 };

STATIC EFI_STATUS EFIAPI
PoolHandler (
  IN EFI_HANDLE     DispatchHandle,
  IN CONST VOID     *Context OPTIONAL,
  IN OUT VOID       *CommBuffer OPTIONAL,
  IN OUT UINTN      *CommBufferSize OPTIONAL
  )
{
  volatile POOL_USER_PAYLOAD  *Payload;
  volatile UINT8              *Bytes;
  VOID                        *Buffer;
  EFI_STATUS                  Status;
  UINT8                       Mode;
  UINTN                       Index;

  (VOID)DispatchHandle;
  (VOID)Context;
  Payload = NULL;
  Mode    = POOL_USER_MODE_NORMAL;
  if ((CommBuffer != NULL) && (CommBufferSize != NULL) && (*CommBufferSize >= 1)) {
    Mode = *(volatile UINT8 *)CommBuffer;
    if (*CommBufferSize >= sizeof (POOL_USER_PAYLOAD)) {
      Payload = (volatile POOL_USER_PAYLOAD *)CommBuffer;
      Payload->ExtraFreeStatus = 0;
    }
  }

  Buffer = NULL;
  Status = gMmst->MmAllocatePool (EfiRuntimeServicesData, POOL_USER_ALLOCATION_SIZE, &Buffer);
  if (Payload != NULL) {
    Payload->AllocateStatus = Status;
    Payload->Buffer         = (UINT64)(UINTN)Buffer;
  }
  if (EFI_ERROR (Status) || (Buffer == NULL)) {
    return EFI_SUCCESS;
  }

  Bytes = (volatile UINT8 *)Buffer;
  for (Index = 0; Index < POOL_USER_ALLOCATION_SIZE; Index++) {
    Bytes[Index] = (UINT8)(POOL_USER_FILL_BASE + Index);
  }

  if (Mode == POOL_USER_MODE_FOREIGN_FREE) {
    Status = gMmst->MmFreePool (&gForeignBuffer[0]);
    if (Payload != NULL) {
      Payload->ExtraFreeStatus = Status;
    }
  }

  Status = gMmst->MmFreePool (Buffer);
  if (Payload != NULL) {
    Payload->FreeStatus = Status;
  }

  if (Mode == POOL_USER_MODE_DOUBLE_FREE) {
    Status = gMmst->MmFreePool (Buffer);
    if (Payload != NULL) {
      Payload->ExtraFreeStatus = Status;
    }
  }
  return EFI_SUCCESS;
}

SMMEMU_MMI_HANDLER gMmiHandlers[] = {
  { &gPoolUserGuid, PoolHandler },
};

EFI_STATUS EFIAPI
_ModuleEntryPoint (
  IN EFI_HANDLE           ImageHandle,
  IN EFI_MM_SYSTEM_TABLE  *MmSt
  )
{
  (VOID)ImageHandle;
  gMmst = MmSt;
  return SmmemuRegisterHandlers (MmSt, gMmiHandlers, SMMEMU_ARRAY_SIZE (gMmiHandlers));
}
