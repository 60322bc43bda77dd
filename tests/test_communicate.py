"""MM communicate through the DXE shim and the MM core (comm_protocols.md checklist 1-11)."""

from __future__ import annotations

import struct
import uuid

import pytest
from helpers import EFI_NOT_FOUND, EFI_SUCCESS

from smmemu import ECHO_HANDLER_GUID, CommBufferError, GuidError, Machine, StopReason
from smmemu.uefi.guids import (
    END_OF_DXE_GUID,
    EXIT_BOOT_SERVICES_GUID,
    MM_READY_TO_LOCK_GUID,
    READY_TO_BOOT_GUID,
)

UNKNOWN = uuid.UUID("11111111-2222-3333-4444-555555555555")


@pytest.mark.parametrize("buffer_id", [0, 1])
def test_echo_round_trips_on_each_buffer(machine: Machine, buffer_id: int) -> None:
    payload = bytes(range(256)) * 3
    reply = machine.communicate(ECHO_HANDLER_GUID, payload, buffer_id=buffer_id)
    assert reply.status == EFI_SUCCESS
    assert reply.data == payload
    assert reply.return_buffer_size == 24 + len(payload)
    assert reply.header_error is None
    assert reply.smi.ok


def test_unknown_guid_is_not_found_and_reply_is_the_request(machine: Machine) -> None:
    reply = machine.communicate(UNKNOWN, b"abc")
    assert reply.status == EFI_NOT_FOUND
    assert reply.return_buffer_size == 24 + 3
    assert reply.data == b"abc"


def test_guid_may_be_given_as_a_string(q35: Machine) -> None:
    reply = q35.communicate(str(ECHO_HANDLER_GUID).upper(), b"x")
    assert reply.status == EFI_SUCCESS


@pytest.mark.parametrize("guid", [MM_READY_TO_LOCK_GUID, END_OF_DXE_GUID, READY_TO_BOOT_GUID,
                                  EXIT_BOOT_SERVICES_GUID])
def test_event_notifications_with_one_zero_byte_succeed(q35: Machine, guid: uuid.UUID) -> None:
    reply = q35.communicate(guid, b"\x00")
    assert reply.status == EFI_SUCCESS
    assert reply.return_buffer_size == 25


def test_header_message_length_is_never_rewritten(q35: Machine) -> None:
    reply = q35.communicate(ECHO_HANDLER_GUID, b"hello")
    guid, length = reply.buffer[:16], struct.unpack_from("<Q", reply.buffer, 16)[0]
    assert uuid.UUID(bytes_le=guid) == ECHO_HANDLER_GUID
    assert length == 5


def test_mailbox_valid_flag_is_cleared_after_the_smi(q35: Machine) -> None:
    q35.communicate(ECHO_HANDLER_GUID, b"x")
    status = q35.read_physical(q35.comm_status(0), 24)
    assert status[0] == 0
    assert struct.unpack_from("<QQ", status, 8) == (EFI_SUCCESS, 25)


def test_buffer_is_zeroed_before_each_request(q35: Machine) -> None:
    q35.communicate(ECHO_HANDLER_GUID, b"\xaa" * 100)
    reply = q35.communicate(ECHO_HANDLER_GUID, b"\x55")
    assert reply.buffer[25:200] == bytes(175)


def test_largest_payload_fits_and_one_more_byte_is_refused(q35: Machine) -> None:
    _, size = q35.comm_buffer(0)
    largest = bytes([7]) * (size - 24)
    assert q35.communicate(ECHO_HANDLER_GUID, largest).data == largest
    with pytest.raises(CommBufferError, match=f"payload of {size - 23} bytes") as info:
        q35.communicate(ECHO_HANDLER_GUID, largest + b"\x07")
    assert info.value.reason == "comm-buffer-too-small"
    assert q35.communicate(ECHO_HANDLER_GUID, b"ok").status == EFI_SUCCESS


def test_empty_payload_is_refused(q35: Machine) -> None:
    with pytest.raises(CommBufferError, match="empty") as info:
        q35.communicate(ECHO_HANDLER_GUID, b"")
    assert info.value.reason == "invalid-data-buffer"


def test_unknown_buffer_id_is_refused(q35: Machine) -> None:
    with pytest.raises(CommBufferError, match="no comm buffer with id 5"):
        q35.communicate(ECHO_HANDLER_GUID, b"x", buffer_id=5)


@pytest.mark.parametrize("bad", ["not-a-guid", "12345678-1234-5678-1234-56789abcdefg", ""])
def test_malformed_guid_is_refused_with_the_value_named(q35: Machine, bad: str) -> None:
    with pytest.raises(GuidError, match="malformed GUID") as info:
        q35.communicate(bad, b"x")
    assert info.value.value == bad


def test_ovmf_trigger_order_also_works() -> None:
    with Machine("q35", trigger_order="ovmf") as m:
        assert m.communicate(ECHO_HANDLER_GUID, b"ovmf").data == b"ovmf"


def test_one_thousand_consecutive_smis_give_identical_results(q35: Machine) -> None:
    payload = bytes(range(64))
    first = q35.communicate(ECHO_HANDLER_GUID, payload)
    before = q35.smi_count
    for _ in range(1000):
        reply = q35.communicate(ECHO_HANDLER_GUID, payload)
        assert (reply.status, reply.data, reply.return_buffer_size, reply.buffer) == (
            first.status, first.data, first.return_buffer_size, first.buffer)
        assert reply.smi.stop is StopReason.HALTED
    assert q35.smi_count == before + 1000
