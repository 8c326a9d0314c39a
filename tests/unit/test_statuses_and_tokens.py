"""Errors as google.rpc.Status messages, and page tokens (no server: plain functions)."""

import grpc
import pytest

from reapi import error_status, page_tokens
from reapi.errors import FailedPrecondition, InvalidArgument, RateLimited, ReapiError
from reapi.gen.google.rpc import status_pb2


def test_status_numbers_and_names_are_grpcs() -> None:
    for code in grpc.StatusCode:
        assert error_status.number(code.name) == code.value[0]
        assert error_status.name(code.value[0]) == code.name
    assert error_status.name(99) == "99"
    assert error_status.number("NO_SUCH_CODE") == grpc.StatusCode.INTERNAL.value[0]


def test_an_error_keeps_its_class_code_and_a_subclass_its_parents() -> None:
    assert InvalidArgument("x").code == "INVALID_ARGUMENT"
    assert RateLimited("slow down", 1.0).code == "RESOURCE_EXHAUSTED"
    assert ReapiError("x").code == "INTERNAL"


def test_missing_blobs_ride_along_as_one_violation_each() -> None:
    err = FailedPrecondition("missing", missing=(("a" * 64, 3), ("b" * 64, 0)))
    status = error_status.of(err)
    assert (status.code, status.message) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "missing")
    failure = status_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    assert [(v.type, v.subject) for v in failure.violations] == [
        ("MISSING", f"blobs/{'a' * 64}/3"),
        ("MISSING", f"blobs/{'b' * 64}/0"),
    ]
    assert not error_status.of(InvalidArgument("bad")).details


def test_a_page_token_reads_back_only_for_its_own_listing() -> None:
    token = page_tokens.encode("op", 1234)
    assert page_tokens.decode("op", token) == 1234
    with pytest.raises(InvalidArgument, match="was not issued by this server"):
        page_tokens.decode("bfs", token)
    for garbage in ("%%%", "b3A6eA==", page_tokens.encode("op", -1)):  # not base64; "op:x"; negative
        with pytest.raises(InvalidArgument):
            page_tokens.decode("op", garbage)
