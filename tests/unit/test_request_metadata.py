"""The client's RequestMetadata header: read when sound, every string bounded, ignored when
oversize or unparsable (the call goes on without it)."""

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.request_metadata import ID_CHARS, KEY, LABEL_CHARS, MAX_HEADER_BYTES, parse


def header(**fields: str) -> tuple[str, bytes]:
    return KEY, re_pb2.RequestMetadata(**fields).SerializeToString()  # type: ignore[arg-type]


def test_it_reads_bazels_header_among_others() -> None:
    meta = parse((("x-aspect", "aw_pat_x"), header(tool_invocation_id="inv-1", target_id="//:a")))
    assert meta is not None
    assert (meta.tool_invocation_id, meta.target_id) == ("inv-1", "//:a")


def test_it_cuts_every_string_to_its_bound() -> None:
    meta = parse((header(tool_invocation_id="i" * 900, target_id="t" * 900, action_mnemonic="m" * 900),))
    assert meta is not None
    assert len(meta.tool_invocation_id) == ID_CHARS and len(meta.action_mnemonic) == ID_CHARS
    assert len(meta.target_id) == LABEL_CHARS


def test_it_ignores_an_oversize_or_unparsable_or_absent_header() -> None:
    # Ignored reads as empty: no invocation id, nothing to log or store.
    empty = re_pb2.RequestMetadata()
    assert parse((header(tool_invocation_id="big", target_id="x" * MAX_HEADER_BYTES),)) == empty
    assert parse(((KEY, b"\xff\xff\xff not a proto"),)) == empty
    assert parse(((KEY, "a str, not bytes"),)) == empty
    assert parse((("x-aspect", "aw_pat_x"),)) == empty
    assert parse(None) == empty
