"""gRPC edge of the Remote Asset API (build.bazel.remote.asset.v1): Fetch and Push over
reapi/assets.py, with the CAS's auth, tenancy and storage.

Failures are the RPC's status, not FetchBlobResponse.status: Bazel 4.2.3 reads the digest of
a response without looking at its status, so an error inside a response would reach it as an
empty blob and a checksum mismatch; a failed RPC reaches it as the message that says why
(`PERMISSION_DENIED: http://… is refused: …`).
"""

import contextlib
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from django.conf import settings
from google.protobuf import any_pb2

from reapi import assets, clusters, db_threads, digests, egress
from reapi.call_context import principal
from reapi.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    Unimplemented,
)
from reapi.gen.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
from reapi.gen.build.bazel.remote.asset.v1 import remote_asset_pb2_grpc as ra_grpc
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.rpc import status_pb2
from reapi.grpc_edge import unary
from reapi.models import Asset

SHA256 = re_pb2.DigestFunction.SHA256
R = TypeVar("R")


def _caller(cluster: str, instance: str) -> assets.Caller:
    who = principal()
    who.check_instance(instance)
    return assets.Caller(
        tenant=who.tenant,
        tenant_id=who.tenant_id,
        cluster=cluster,
        backend=clusters.for_call(cluster, who.cache_mode),
        who=who,
        token_id=who.token_id,
        token_prefix=who.token_prefix,
    )


def _check_digest_function(value: int) -> None:
    if value not in (re_pb2.DigestFunction.UNKNOWN, SHA256):
        names = dict(re_pb2.DigestFunction.Value.items())
        name = next((n for n, v in names.items() if v == value), str(value))
        raise InvalidArgument(f"digest_function {name} is not supported: this server's CAS is SHA256")


AssetMessage = (
    ra_pb2.FetchBlobRequest
    | ra_pb2.FetchDirectoryRequest
    | ra_pb2.PushBlobRequest
    | ra_pb2.PushDirectoryRequest
)


def _qualifiers(request: AssetMessage) -> list[tuple[str, str]]:
    return [(q.name, q.value) for q in request.qualifiers]


def _when(request: AssetMessage, name: str) -> datetime | None:
    if not request.HasField(name):  # type: ignore[arg-type]
        return None
    when: datetime = getattr(request, name).ToDatetime(tzinfo=UTC)
    return when


@contextlib.contextmanager
def _bad_request_details(context: grpc.ServicerContext) -> Iterator[None]:
    """Unsupported qualifiers also go as a google.rpc.BadRequest detail, one violation each
    (field `qualifiers.name`, `"NAME" not supported`), as the Remote Asset API asks."""
    try:
        yield
    except assets.UnsupportedQualifiers as err:
        detail = any_pb2.Any()
        detail.Pack(
            status_pb2.BadRequest(
                field_violations=[
                    status_pb2.BadRequest.FieldViolation(
                        field="qualifiers.name", description=f'"{name}" not supported'
                    )
                    for name in err.names
                ]
            )
        )
        status = status_pb2.Status(
            code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=err.message, details=[detail]
        )
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        raise


def _asked(
    cluster: str, request: AssetMessage, kind: str, context: grpc.ServicerContext
) -> tuple[assets.Caller, assets.AssetRequest]:
    """Who asks, and for what: the request's URIs and qualifiers, checked (unsupported
    qualifiers go back with their BadRequest details)."""
    with _bad_request_details(context):
        _check_digest_function(request.digest_function)
        caller = _caller(cluster, request.instance_name)
        return caller, assets.parse_request(kind, request.uris, _qualifiers(request))


def _digest(found: assets.Found) -> re_pb2.Digest:
    return re_pb2.Digest(hash=found.digest.hash, size_bytes=found.digest.size)


def _answer(found: assets.Found) -> dict[str, Any]:
    """The fields a Fetch response shares: OK, the URI served, and its checksum qualifier."""
    return {
        "status": status_pb2.Status(code=0),
        "uri": found.uri,
        "qualifiers": [ra_pb2.Qualifier(name=assets.CHECKSUM, value=found.sri)] if found.sri else [],
        "digest_function": SHA256,
    }


def _wait(future: "futures.Future[assets.Found]", context: grpc.ServicerContext, uri: str) -> assets.Found:
    """The download's result, waiting no longer than the client does. A download the client
    stops waiting for goes on, and a request that comes again joins it or finds it done."""
    remaining = context.time_remaining()
    limit = remaining if remaining is not None else float(settings.REAPI_ASSET_TIMEOUT_SECONDS) + 60
    end = time.monotonic() + limit
    while not future.done():
        futures.wait([future], timeout=min(0.5, max(end - time.monotonic(), 0)))
        if future.done():
            break
        if not context.is_active():
            raise Cancelled("the client went away; the download goes on for the next request")
        if time.monotonic() >= end:
            raise DeadlineExceeded(
                f"{egress.redact(uri)[:300]} is still downloading; ask again to pick it up when it is done"
            )
    return future.result()


def _timeout(request: ra_pb2.FetchBlobRequest | ra_pb2.FetchDirectoryRequest) -> float | None:
    if not request.HasField("timeout"):
        return None
    seconds = request.timeout.ToTimedelta().total_seconds()
    if seconds < 0:
        raise InvalidArgument(f"timeout {seconds} s is negative")
    return seconds or None


class _ClusterService:
    """A service of one cluster's endpoint (`reapi serve --cluster`)."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster


class FetchService(_ClusterService, ra_grpc.FetchServicer):
    @unary
    def FetchBlob(
        self, request: ra_pb2.FetchBlobRequest, context: grpc.ServicerContext
    ) -> ra_pb2.FetchBlobResponse:
        caller, wanted = _asked(self.cluster, request, Asset.Kind.BLOB, context)
        oldest = _when(request, "oldest_content_accepted")
        # On a thread that keeps its database connection: this call runs on the waiting pool
        # (methods.WAITING_METHODS), whose many threads must not each hold one.
        found = db_threads.run(assets.lookup, caller, wanted, oldest)
        if found is None:
            who = principal()
            if "cas:write" not in who.scopes:
                raise PermissionDenied(
                    f"{egress.redact(wanted.uris[0])[:300]} is not cached for tenant {who.tenant}, and "
                    "only a credential with the cas:write scope may make the server download it"
                )
            future = assets.fetch(caller, wanted, _timeout(request))
            found = _wait(future, context, wanted.uris[0])
        return ra_pb2.FetchBlobResponse(blob_digest=_digest(found), **_answer(found))

    @unary
    def FetchDirectory(
        self, request: ra_pb2.FetchDirectoryRequest, context: grpc.ServicerContext
    ) -> ra_pb2.FetchDirectoryResponse:
        caller, wanted = _asked(self.cluster, request, Asset.Kind.DIRECTORY, context)
        found = assets.lookup(caller, wanted, _when(request, "oldest_content_accepted"))
        if found is None:
            raise Unimplemented(
                "this server does not download directories: FetchDirectory serves what PushDirectory "
                f"stored, and nothing stored matches {egress.redact(wanted.uris[0])[:300]} with "
                "these qualifiers (FetchBlob downloads files)"
            )
        return ra_pb2.FetchDirectoryResponse(root_directory_digest=_digest(found), **_answer(found))


class PushService(_ClusterService, ra_grpc.PushServicer):
    @unary
    def PushBlob(
        self, request: ra_pb2.PushBlobRequest, context: grpc.ServicerContext
    ) -> ra_pb2.PushBlobResponse:
        return self._push(request, Asset.Kind.BLOB, "blob_digest", ra_pb2.PushBlobResponse(), context)

    @unary
    def PushDirectory(
        self, request: ra_pb2.PushDirectoryRequest, context: grpc.ServicerContext
    ) -> ra_pb2.PushDirectoryResponse:
        response = ra_pb2.PushDirectoryResponse()
        return self._push(request, Asset.Kind.DIRECTORY, "root_directory_digest", response, context)

    def _push(
        self,
        request: ra_pb2.PushBlobRequest | ra_pb2.PushDirectoryRequest,
        kind: str,
        digest_field: str,
        response: R,
        context: grpc.ServicerContext,
    ) -> R:
        """Record the request's URIs as naming the blob or directory its `digest_field` gives."""
        caller, wanted = _asked(self.cluster, request, kind, context)
        digest = digests.check_field(getattr(request, digest_field), digest_field)
        assets.push(caller, wanted, digest, _when(request, "expire_at"))
        return response
