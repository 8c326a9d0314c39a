"""The RequestMetadata a client sends with a call (REAPI), parsed best effort."""

from collections.abc import Iterable

from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

# REAPI: clients send RequestMetadata, binary, under this key on every call.
KEY = "build.bazel.remote.execution.v2.requestmetadata-bin"


def parse(invocation_metadata: Iterable[tuple[str, str | bytes]] | None) -> re_pb2.RequestMetadata:
    """The call's RequestMetadata; empty when it sent none or something that does not parse
    (what a client claims here is for logs and provenance, never for access)."""
    meta = re_pb2.RequestMetadata()
    for key, value in invocation_metadata or ():
        if key == KEY and isinstance(value, bytes):
            try:
                meta.ParseFromString(value)
            except Exception:
                meta.Clear()
            break
    return meta
