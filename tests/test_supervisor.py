"""The MM Supervisor request handler (reference/comm_protocols.md 3.2 and checklist 12-13)."""

from __future__ import annotations

import struct

from helpers import (
    EFI_ABORTED,
    EFI_ACCESS_DENIED,
    EFI_INVALID_PARAMETER,
    EFI_NOT_FOUND,
    EFI_SECURITY_VIOLATION,
    EFI_SUCCESS,
    EFI_UNSUPPORTED,
    result_of,
    supervisor,
    unblock_params,
)

from smmemu import MM_SUPERVISOR_REQUEST_HANDLER_GUID as MSUP_GUID
from smmemu import Machine
from smmemu.uefi.guids import MM_READY_TO_LOCK_GUID


def test_version_info_reports_the_image_version(machine: Machine) -> None:
    reply = machine.communicate(MSUP_GUID, supervisor(3, bytes(16)))
    assert reply.status == EFI_SUCCESS
    assert reply.return_buffer_size == 24 + 40
    assert result_of(reply.data) == EFI_SUCCESS
    version, patch, max_level = struct.unpack_from("<IIQ", reply.data, 24)
    info = machine.image.info
    assert (version, patch, max_level) == (info.version, info.patch_level, 4)


def test_version_info_without_room_for_reply_is_not_found_with_result_aborted(
        machine: Machine) -> None:
    reply = machine.communicate(MSUP_GUID, supervisor(3))
    assert reply.status == EFI_NOT_FOUND
    assert result_of(reply.data) == EFI_ABORTED
    assert reply.return_buffer_size == 24 + 24


def test_bad_signature_sets_result_invalid_parameter_with_status_success(
        machine: Machine) -> None:
    reply = machine.communicate(MSUP_GUID, supervisor(3, bytes(16), signature=0x5055534E))
    assert reply.status == EFI_SUCCESS
    assert result_of(reply.data) == EFI_INVALID_PARAMETER


def test_revision_must_be_exactly_one(machine: Machine) -> None:
    for revision in (0, 2):
        reply = machine.communicate(MSUP_GUID, supervisor(3, bytes(16), revision=revision))
        assert reply.status == EFI_SUCCESS
        assert result_of(reply.data) == EFI_INVALID_PARAMETER


def test_unknown_request_is_unsupported(machine: Machine) -> None:
    reply = machine.communicate(MSUP_GUID, supervisor(7, bytes(16)))
    assert reply.status == EFI_SUCCESS
    assert result_of(reply.data) == EFI_UNSUPPORTED


def test_fetch_policy_and_comm_update_are_unsupported_until_implemented(q35: Machine) -> None:
    for request in (2, 4):
        reply = q35.communicate(MSUP_GUID, supervisor(request, bytes(224)))
        assert (reply.status, result_of(reply.data)) == (EFI_SUCCESS, EFI_UNSUPPORTED)


def test_header_shorter_than_24_bytes_returns_invalid_parameter(q35: Machine) -> None:
    reply = q35.communicate(MSUP_GUID, supervisor(3)[:20])
    assert reply.status == EFI_NOT_FOUND


def test_unblock_mem_accepts_a_page_outside_mmram_and_repeats(q35: Machine) -> None:
    request = supervisor(1, unblock_params(0x0030_0000, 2))
    first = q35.communicate(MSUP_GUID, request)
    again = q35.communicate(MSUP_GUID, request)
    assert (first.status, result_of(first.data)) == (EFI_SUCCESS, EFI_SUCCESS)
    assert result_of(again.data) == EFI_SUCCESS


def test_unblock_mem_rejects_a_zero_guid(q35: Machine) -> None:
    reply = q35.communicate(MSUP_GUID, supervisor(1, unblock_params(0x30_0000, 1, bytes(16))))
    assert result_of(reply.data) == EFI_INVALID_PARAMETER


def test_unblock_mem_rejects_mmram_overlap_as_security_violation(q35: Machine) -> None:
    base, _ = q35.smram[0]
    reply = q35.communicate(MSUP_GUID, supervisor(1, unblock_params(base - 0x1000, 2)))
    assert result_of(reply.data) == EFI_SECURITY_VIOLATION


def test_unblock_mem_rejects_unaligned_start(q35: Machine) -> None:
    reply = q35.communicate(MSUP_GUID, supervisor(1, unblock_params(0x30_0010, 1)))
    assert result_of(reply.data) == EFI_SECURITY_VIOLATION


def test_unblock_mem_after_ready_to_lock_is_access_denied(q35: Machine) -> None:
    assert q35.communicate(MM_READY_TO_LOCK_GUID, b"\x00").status == EFI_SUCCESS
    reply = q35.communicate(MSUP_GUID, supervisor(1, unblock_params(0x30_0000, 1)))
    assert result_of(reply.data) == EFI_ACCESS_DENIED


def test_unblock_mem_with_short_payload_leaves_result_aborted(q35: Machine) -> None:
    reply = q35.communicate(MSUP_GUID, supervisor(1, bytes(8)))
    assert reply.status == EFI_NOT_FOUND
    assert result_of(reply.data) == EFI_ABORTED
