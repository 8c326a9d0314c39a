"""The client's RequestMetadata (REAPI), read from a call's gRPC metadata.

REAPI: clients send a serialized build.bazel.remote.execution.v2.RequestMetadata, binary,
under `build.bazel.remote.execution.v2.requestmetadata-bin` on every call. It is the client's
claim and nothing more, for logs, invocations and provenance, never for access: an oversize
header or one that does not parse reads as empty (the call goes on without it), and every
string is cut to a bound before anyone logs or stores it.
"""

import contextvars
from collections.abc import Iterable
from typing import Any

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"
# Bazel's header is a few hundred bytes (UUIDs, a version, a mnemonic and a label).
MAX_HEADER_BYTES = 4096
ID_CHARS = 100
LABEL_CHARS = 300


def parse(metadata: Iterable[tuple[str, str | bytes]] | None) -> re_pb2.RequestMetadata:
    """The call's RequestMetadata with its strings bounded; empty when absent or unusable."""
    meta = re_pb2.RequestMetadata()
    for key, value in metadata or ():
        if key != KEY or not isinstance(value, bytes):
            continue
        if len(value) > MAX_HEADER_BYTES:
            return meta
        try:
            meta.ParseFromString(value)
        except Exception:
            meta.Clear()
            return meta
        return bounded(meta)
    return meta


# The last call this thread parsed for, and what it found: the edge (metrics, the request log),
# provenance and invocations all ask during one call, and the header is parsed once.
_last: contextvars.ContextVar[tuple[Any, re_pb2.RequestMetadata]] = contextvars.ContextVar("request_metadata")


def of_call(context: Any) -> re_pb2.RequestMetadata:
    """`parse` of a gRPC call's metadata, once per call (read it, never change it)."""
    last = _last.get(None)
    if last is not None and last[0] is context:
        return last[1]
    meta = parse(context.invocation_metadata())
    _last.set((context, meta))
    return meta


def bounded(meta: re_pb2.RequestMetadata) -> re_pb2.RequestMetadata:
    meta.tool_invocation_id = meta.tool_invocation_id[:ID_CHARS]
    meta.correlated_invocations_id = meta.correlated_invocations_id[:ID_CHARS]
    meta.action_id = meta.action_id[:ID_CHARS]
    meta.action_mnemonic = meta.action_mnemonic[:ID_CHARS]
    meta.target_id = meta.target_id[:LABEL_CHARS]
    meta.configuration_id = meta.configuration_id[:ID_CHARS]
    meta.tool_details.tool_name = meta.tool_details.tool_name[:ID_CHARS]
    meta.tool_details.tool_version = meta.tool_details.tool_version[:ID_CHARS]
    return meta
