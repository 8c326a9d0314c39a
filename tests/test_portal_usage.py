"""Usage counters: a real REAPI server counts hits, misses and bytes in memory and flushes them to
the database in the background, never once per RPC; the usage page draws them."""

import time
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.test import Client as PageClient

from portal.models import AccessToken, UsageDay
from tests.support.servers import ReapiServer
from tests.support.tenants import Persona
from tests.support.usage_traffic import EXPECTED, traffic, usage_of


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


def test_usage_is_split_by_cluster_member_and_token(acme: Persona) -> None:
    alice_pat, bob_pat = acme.pat(), acme.pat(user=acme.developer)
    # The server adds its counts to the database as it stops: nothing to wait for.
    with ReapiServer("external", env={"REAPI_USAGE_FLUSH_SECONDS": "3600"}) as server:
        traffic(server, alice_pat)
        traffic(server, bob_pat)
        traffic(server, bob_pat)
    assert usage_of(acme.tenant)["hits"] == 3
    alices = AccessToken.objects.get(prefix=alice_pat[:13])
    bobs = AccessToken.objects.get(prefix=bob_pat[:13])
    rows = UsageDay.objects.filter(tenant=acme.tenant)
    assert {(r.token_id, r.user_id, r.hits) for r in rows} == {
        (alices.pk, alices.user_id, 1),
        (bobs.pk, bobs.user_id, 2),
    }

    admin = PageClient()
    admin.force_login(get_user_model().objects.get(username=acme.admin))
    whole = admin.get(f"/t/{acme.slug}/usage/")
    assert whole.status_code == 200
    body = whole.content.decode()
    assert 'id="total-hits">3<' in body
    assert (
        "By member" in body
        and (acme.developer or "?") in body
        and alices.prefix in body
        and bobs.prefix in body
    )
    assert body.count('<td data-label="Day">') == 1, "days without traffic are left out"
    one = admin.get(f"/t/{acme.slug}/usage/?view=token:{bobs.pk}").content.decode()
    assert 'id="total-hits">2<' in one and 'id="total-misses">4<' in one
    internal = admin.get(f"/t/{acme.slug}/usage/?view=cluster:internal").content.decode()
    assert 'id="total-hits">0<' in internal and 'id="no-traffic"' in internal

    # A developer sees their own tokens in the splits, and may not pick another's.
    bob = PageClient()
    bob.force_login(get_user_model().objects.get(username=acme.developer))
    mine = bob.get(f"/t/{acme.slug}/usage/").content.decode()
    assert "By member" not in mine and bobs.prefix in mine and alices.prefix not in mine
    refused = bob.get(f"/t/{acme.slug}/usage/?view=token:{alices.pk}")
    assert refused.status_code == 400 and "That choice is not one of this page" in refused.content.decode()
    assert 'id="total-hits">3<' in refused.content.decode()  # the whole tenant, as any member sees it
