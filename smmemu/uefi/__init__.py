"""UEFI / PI data types: EFI_STATUS, GUIDs and the MM communication layouts."""
