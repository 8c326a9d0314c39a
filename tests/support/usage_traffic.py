"""Known cache traffic for the usage counters' tests: what a REAPI server must count for it."""

import hashlib
import time

import grpc
import pytest

from portal.models import Tenant, UsageDay
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer


def traffic(server: ReapiServer, pat: str) -> None:
    """2 misses, 1 hit; 1,000 + 3,000 bytes stored; 3,000 + 1,000 bytes served."""
    with server.channel() as channel:
        client = Client(channel, pat)
        action = digest(hashlib.sha256(str(time.time_ns()).encode()).digest())
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as miss:
                client.get_action_result(action)
            assert miss.value.code() == grpc.StatusCode.NOT_FOUND
        small = time.time_ns().to_bytes(8, "big") * 125
        assert client.upload(small).responses[0].status.code == 0
        client.update_action_result(action, re_pb2.ActionResult(exit_code=0))
        client.get_action_result(action)
        big = time.time_ns().to_bytes(8, "big") * 375
        assert client.write(big) == 3000
        assert client.read(digest(big)) == big
        assert client.batch_read(digest(small)).responses[0].data == small


def usage_of(tenant: Tenant) -> dict[str, int]:
    """What the usage table holds for the tenant on the external cluster, summed over days."""
    rows = UsageDay.objects.filter(tenant=tenant, cluster="external")
    return {f: sum(getattr(r, f) for r in rows) for f in ("hits", "misses", "bytes_stored", "bytes_served")}


EXPECTED = {"hits": 1, "misses": 2, "bytes_stored": 4000, "bytes_served": 4000}
