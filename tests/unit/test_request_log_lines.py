"""The request log's logfmt line, built field by field: what a client sent is quoted unless it
is a plain token, and the duration reads as milliseconds with three decimals."""

from typing import Any

import pytest

from reapi import request_log
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2


class Principal:
    tenant = "acme"
    token_prefix = "aw_pat_ab12"


class Sink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Sink:
    found = Sink()
    monkeypatch.setattr(request_log, "_sink", found)
    monkeypatch.setattr(request_log, "JSON", False)
    return found


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a" * 64, "a" * 64),
        ("ipv4:127.0.0.1:4242", "ipv4:127.0.0.1:4242"),
        ("", '""'),
        # Letters outside ASCII are letters to str.isalnum, and still quoted.
        ("café", '"caf\\u00e9"'),
        ("٣٤", '"\\u0663\\u0664"'),
        ("a b", '"a b"'),
        ("x\nmethod=forged", '"x\\nmethod=forged"'),
    ],
)
def test_a_value_is_written_bare_only_when_it_is_a_plain_token(value: str, written: str) -> None:
    assert request_log._value(value) == written


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.000734, "0.734"), (0.0000049, "0.004"), (12.3456789, "12345.678")]
)
def test_the_duration_is_milliseconds_with_three_decimals(sink: Sink, seconds: float, shown: str) -> None:
    lines = request_log.Lines("/build.bazel.remote.execution.v2.ActionCache/GetActionResult", Principal())
    meta: Any = re_pb2.RequestMetadata(tool_invocation_id="inv-1", action_id="f" * 64)
    lines.done("OK", seconds, 2048, meta, "ipv4:10.0.0.7:51234", "")
    assert sink.lines == [
        "method=build.bazel.remote.execution.v2.ActionCache/GetActionResult code=OK"
        f" duration_ms={shown} bytes=2048 tenant=acme token_prefix=aw_pat_ab12"
        f" tool_invocation_id=inv-1 action_id={'f' * 64} peer=ipv4:10.0.0.7:51234"
    ]
