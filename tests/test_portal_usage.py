"""Usage counters: a real REAPI server counts hits, misses and bytes in memory and flushes them to
the database in the background, never once per RPC; the usage page draws them."""

import hashlib
import time
from collections.abc import Iterator

import grpc
import pytest
from django.contrib.auth import get_user_model
from django.test import Client as PageClient

from portal.models import UsageDay
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from tests.reapi_client import Client, digest
from tests.servers import ReapiServer
from tests.tenants import Persona


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


def usage_of(persona: Persona) -> dict[str, int]:
    rows = UsageDay.objects.filter(tenant=persona.tenant, cluster="external")
    return {f: sum(getattr(r, f) for r in rows) for f in ("hits", "misses", "bytes_stored", "bytes_served")}


EXPECTED = {"hits": 1, "misses": 2, "bytes_stored": 4000, "bytes_served": 4000}


@pytest.fixture(scope="module")
def slow_flushing_server() -> Iterator[ReapiServer]:
    with ReapiServer("external", env={"REAPI_USAGE_FLUSH_SECONDS": "3600"}) as server:
        yield server


def test_rpcs_do_not_write_usage_and_a_stopping_server_flushes(
    slow_flushing_server: ReapiServer, acme: Persona
) -> None:
    traffic(slow_flushing_server, acme.pat())
    assert not UsageDay.objects.filter(tenant=acme.tenant).exists(), "no database write per RPC"
    slow_flushing_server.stop()
    assert usage_of(acme) == EXPECTED


def test_counters_reach_the_database_within_seconds_and_the_page_draws_them(acme: Persona) -> None:
    with ReapiServer("external", env={"REAPI_USAGE_FLUSH_SECONDS": "1"}) as server:
        traffic(server, acme.pat())
        deadline = time.monotonic() + 5
        while usage_of(acme) != EXPECTED:
            assert time.monotonic() < deadline, usage_of(acme)
            time.sleep(0.2)
    page = PageClient()
    page.force_login(get_user_model().objects.get(username=acme.developer))
    body = page.get(f"/t/{acme.slug}/usage/").content.decode()
    assert body.count("<svg") == 2
    assert 'id="total-hits">1<' in body and 'id="total-misses">2<' in body
    assert "hits: 1</title>" in body and "served: 3.9 KiB</title>" in body
