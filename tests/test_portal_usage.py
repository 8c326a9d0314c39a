"""Usage counters: a real REAPI server counts hits, misses and bytes in memory and flushes them to
the database in the background, never once per RPC; the usage page draws them."""

import time
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.test import Client as PageClient

from portal.models import UsageDay
from tests.servers import ReapiServer
from tests.tenants import Persona
from tests.usage_traffic import EXPECTED, traffic, usage_of


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
    assert usage_of(acme.tenant) == EXPECTED


def test_counters_reach_the_database_within_seconds_and_the_page_draws_them(acme: Persona) -> None:
    with ReapiServer("external", env={"REAPI_USAGE_FLUSH_SECONDS": "1"}) as server:
        traffic(server, acme.pat())
        deadline = time.monotonic() + 5
        while usage_of(acme.tenant) != EXPECTED:
            assert time.monotonic() < deadline, usage_of(acme.tenant)
            time.sleep(0.2)
    page = PageClient()
    page.force_login(get_user_model().objects.get(username=acme.developer))
    body = page.get(f"/t/{acme.slug}/usage/").content.decode()
    assert body.count("<svg") == 2
    assert 'id="total-hits">1<' in body and 'id="total-misses">2<' in body
    assert "hits: 1</title>" in body and "served: 3.9 KiB</title>" in body
