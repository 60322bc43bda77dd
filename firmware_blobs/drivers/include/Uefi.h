/*
  Uefi.h - the UEFI 2.x base types, status codes and tables that smmemu's test
  drivers use.  Written from the UEFI Specification (2.10): section 2.3.1 "Data
  Types", section 4 "EFI System Table", section 7 "Services - Boot Services" and
  Appendix D "Status Codes".  Only what the drivers in this directory need is
  declared in full; every other service is an opaque pointer so that the
  structure layouts (and so the offsets the emulator must honour) stay exact.

  SPDX-License-Identifier: BSD-2-Clause-Patent
*/
#ifndef SMMEMU_DRIVERS_UEFI_H_
#define SMMEMU_DRIVERS_UEFI_H_

/* Microsoft x64 calling convention: the UEFI ABI on x64 (UEFI 2.10, 2.3.4). */
#define EFIAPI __attribute__((ms_abi))

#define IN
#define OUT
#define OPTIONAL
#define CONST const
#define STATIC static
#define VOID void

typedef unsigned char       UINT8;
typedef unsigned short      UINT16;
typedef unsigned int        UINT32;
typedef unsigned long long  UINT64;
typedef signed long long    INT64;
typedef UINT64              UINTN;
typedef INT64               INTN;
typedef unsigned char       BOOLEAN;
typedef char                CHAR8;
typedef unsigned short      CHAR16;

#define TRUE  ((BOOLEAN)1)
#define FALSE ((BOOLEAN)0)
#define NULL  ((VOID *)0)

typedef UINTN  EFI_STATUS;
typedef VOID   *EFI_HANDLE;
typedef VOID   *EFI_EVENT;
typedef UINTN  EFI_TPL;
typedef UINT64 EFI_PHYSICAL_ADDRESS;

/* 128-bit GUID, 64-bit aligned in memory (UEFI 2.10, table 2.3.1). */
typedef struct {
  UINT32  Data1;
  UINT16  Data2;
  UINT16  Data3;
  UINT8   Data4[8];
} EFI_GUID;

/* Status codes (Appendix D): errors have the top bit of UINTN set. */
#define EFI_ERROR_BIT            0x8000000000000000ULL
#define EFI_ERROR(Status)        (((INTN)(EFI_STATUS)(Status)) < 0)
#define EFI_SUCCESS              ((EFI_STATUS)0)
#define EFI_LOAD_ERROR           ((EFI_STATUS)(EFI_ERROR_BIT | 1))
#define EFI_INVALID_PARAMETER    ((EFI_STATUS)(EFI_ERROR_BIT | 2))
#define EFI_UNSUPPORTED          ((EFI_STATUS)(EFI_ERROR_BIT | 3))
#define EFI_BUFFER_TOO_SMALL     ((EFI_STATUS)(EFI_ERROR_BIT | 5))
#define EFI_OUT_OF_RESOURCES     ((EFI_STATUS)(EFI_ERROR_BIT | 9))
#define EFI_NOT_FOUND            ((EFI_STATUS)(EFI_ERROR_BIT | 14))

/* EFI_MEMORY_TYPE (section 7.2, AllocatePages). */
typedef enum {
  EfiReservedMemoryType,
  EfiLoaderCode,
  EfiLoaderData,
  EfiBootServicesCode,
  EfiBootServicesData,
  EfiRuntimeServicesCode,
  EfiRuntimeServicesData,
  EfiConventionalMemory,
  EfiUnusableMemory,
  EfiACPIReclaimMemory,
  EfiACPIMemoryNVS,
  EfiMemoryMappedIO,
  EfiMemoryMappedIOPortSpace,
  EfiPalCode,
  EfiPersistentMemory,
  EfiUnacceptedMemoryType,
  EfiMaxMemoryType
} EFI_MEMORY_TYPE;

/* EFI_ALLOCATE_TYPE (section 7.2, AllocatePages). */
typedef enum {
  AllocateAnyPages,
  AllocateMaxAddress,
  AllocateAddress,
  MaxAllocateType
} EFI_ALLOCATE_TYPE;

/* EFI_INTERFACE_TYPE (section 7.3, InstallProtocolInterface). */
typedef enum {
  EFI_NATIVE_INTERFACE
} EFI_INTERFACE_TYPE;

/* EFI_LOCATE_SEARCH_TYPE (section 7.3, LocateHandle). */
typedef enum {
  AllHandles,
  ByRegisterNotify,
  ByProtocol
} EFI_LOCATE_SEARCH_TYPE;

/* Header of every UEFI table (section 4.2). */
typedef struct {
  UINT64  Signature;
  UINT32  Revision;
  UINT32  HeaderSize;
  UINT32  CRC32;
  UINT32  Reserved;
} EFI_TABLE_HEADER;

/* One entry of a configuration table (section 4.6). */
typedef struct {
  EFI_GUID  VendorGuid;
  VOID      *VendorTable;
} EFI_CONFIGURATION_TABLE;

/* Memory and protocol services shared by the boot services and the MM tables. */
typedef EFI_STATUS (EFIAPI *EFI_ALLOCATE_PAGES)(
  IN EFI_ALLOCATE_TYPE Type, IN EFI_MEMORY_TYPE MemoryType, IN UINTN Pages,
  IN OUT EFI_PHYSICAL_ADDRESS *Memory);
typedef EFI_STATUS (EFIAPI *EFI_FREE_PAGES)(IN EFI_PHYSICAL_ADDRESS Memory, IN UINTN Pages);
typedef EFI_STATUS (EFIAPI *EFI_ALLOCATE_POOL)(
  IN EFI_MEMORY_TYPE PoolType, IN UINTN Size, OUT VOID **Buffer);
typedef EFI_STATUS (EFIAPI *EFI_FREE_POOL)(IN VOID *Buffer);
typedef EFI_STATUS (EFIAPI *EFI_INSTALL_PROTOCOL_INTERFACE)(
  IN OUT EFI_HANDLE *Handle, IN EFI_GUID *Protocol, IN EFI_INTERFACE_TYPE InterfaceType,
  IN VOID *Interface);
typedef EFI_STATUS (EFIAPI *EFI_UNINSTALL_PROTOCOL_INTERFACE)(
  IN EFI_HANDLE Handle, IN EFI_GUID *Protocol, IN VOID *Interface);
typedef EFI_STATUS (EFIAPI *EFI_HANDLE_PROTOCOL)(
  IN EFI_HANDLE Handle, IN EFI_GUID *Protocol, OUT VOID **Interface);
typedef EFI_STATUS (EFIAPI *EFI_LOCATE_HANDLE)(
  IN EFI_LOCATE_SEARCH_TYPE SearchType, IN EFI_GUID *Protocol OPTIONAL,
  IN VOID *SearchKey OPTIONAL, IN OUT UINTN *BufferSize, OUT EFI_HANDLE *Buffer);
typedef EFI_STATUS (EFIAPI *EFI_LOCATE_PROTOCOL)(
  IN EFI_GUID *Protocol, IN VOID *Registration OPTIONAL, OUT VOID **Interface);

/* A boot-services slot this corpus never calls: kept for the layout only. */
typedef VOID *EFI_UNUSED_SERVICE;

/* EFI_BOOT_SERVICES (section 4.4): 44 services after the header, in this order. */
typedef struct {
  EFI_TABLE_HEADER                  Hdr;
  EFI_UNUSED_SERVICE                RaiseTPL;
  EFI_UNUSED_SERVICE                RestoreTPL;
  EFI_ALLOCATE_PAGES                AllocatePages;
  EFI_FREE_PAGES                    FreePages;
  EFI_UNUSED_SERVICE                GetMemoryMap;
  EFI_ALLOCATE_POOL                 AllocatePool;
  EFI_FREE_POOL                     FreePool;
  EFI_UNUSED_SERVICE                CreateEvent;
  EFI_UNUSED_SERVICE                SetTimer;
  EFI_UNUSED_SERVICE                WaitForEvent;
  EFI_UNUSED_SERVICE                SignalEvent;
  EFI_UNUSED_SERVICE                CloseEvent;
  EFI_UNUSED_SERVICE                CheckEvent;
  EFI_INSTALL_PROTOCOL_INTERFACE    InstallProtocolInterface;
  EFI_UNUSED_SERVICE                ReinstallProtocolInterface;
  EFI_UNINSTALL_PROTOCOL_INTERFACE  UninstallProtocolInterface;
  EFI_HANDLE_PROTOCOL               HandleProtocol;
  VOID                              *Reserved;
  EFI_UNUSED_SERVICE                RegisterProtocolNotify;
  EFI_LOCATE_HANDLE                 LocateHandle;
  EFI_UNUSED_SERVICE                LocateDevicePath;
  EFI_UNUSED_SERVICE                InstallConfigurationTable;
  EFI_UNUSED_SERVICE                LoadImage;
  EFI_UNUSED_SERVICE                StartImage;
  EFI_UNUSED_SERVICE                Exit;
  EFI_UNUSED_SERVICE                UnloadImage;
  EFI_UNUSED_SERVICE                ExitBootServices;
  EFI_UNUSED_SERVICE                GetNextMonotonicCount;
  EFI_UNUSED_SERVICE                Stall;
  EFI_UNUSED_SERVICE                SetWatchdogTimer;
  EFI_UNUSED_SERVICE                ConnectController;
  EFI_UNUSED_SERVICE                DisconnectController;
  EFI_UNUSED_SERVICE                OpenProtocol;
  EFI_UNUSED_SERVICE                CloseProtocol;
  EFI_UNUSED_SERVICE                OpenProtocolInformation;
  EFI_UNUSED_SERVICE                ProtocolsPerHandle;
  EFI_UNUSED_SERVICE                LocateHandleBuffer;
  EFI_LOCATE_PROTOCOL               LocateProtocol;
  EFI_UNUSED_SERVICE                InstallMultipleProtocolInterfaces;
  EFI_UNUSED_SERVICE                UninstallMultipleProtocolInterfaces;
  EFI_UNUSED_SERVICE                CalculateCrc32;
  EFI_UNUSED_SERVICE                CopyMem;
  EFI_UNUSED_SERVICE                SetMem;
  EFI_UNUSED_SERVICE                CreateEventEx;
} EFI_BOOT_SERVICES;

/* EFI_SYSTEM_TABLE (section 4.3). */
typedef struct {
  EFI_TABLE_HEADER         Hdr;
  CHAR16                   *FirmwareVendor;
  UINT32                   FirmwareRevision;
  EFI_HANDLE               ConsoleInHandle;
  VOID                     *ConIn;
  EFI_HANDLE               ConsoleOutHandle;
  VOID                     *ConOut;
  EFI_HANDLE               StandardErrorHandle;
  VOID                     *StdErr;
  VOID                     *RuntimeServices;
  EFI_BOOT_SERVICES        *BootServices;
  UINTN                    NumberOfTableEntries;
  EFI_CONFIGURATION_TABLE  *ConfigurationTable;
} EFI_SYSTEM_TABLE;

/*
  Layout checks: the emulator builds these tables byte by byte, so the offsets
  the drivers read are pinned here and repeated in docs/drivers.md.
*/
#define SMMEMU_OFFSET_IS(Type, Field, Offset) \
  _Static_assert (__builtin_offsetof (Type, Field) == (Offset), #Type "." #Field)

SMMEMU_OFFSET_IS (EFI_GUID, Data4, 8);
_Static_assert (sizeof (EFI_GUID) == 16, "EFI_GUID size");
_Static_assert (sizeof (EFI_TABLE_HEADER) == 24, "EFI_TABLE_HEADER size");
SMMEMU_OFFSET_IS (EFI_BOOT_SERVICES, AllocatePool, 0x40);
SMMEMU_OFFSET_IS (EFI_BOOT_SERVICES, FreePool, 0x48);
SMMEMU_OFFSET_IS (EFI_BOOT_SERVICES, LocateProtocol, 0x140);
_Static_assert (sizeof (EFI_BOOT_SERVICES) == 0x178, "EFI_BOOT_SERVICES size");
SMMEMU_OFFSET_IS (EFI_SYSTEM_TABLE, FirmwareRevision, 0x20);
SMMEMU_OFFSET_IS (EFI_SYSTEM_TABLE, BootServices, 0x60);
_Static_assert (sizeof (EFI_SYSTEM_TABLE) == 0x78, "EFI_SYSTEM_TABLE size");

#endif
