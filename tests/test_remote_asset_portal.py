"""The portal's Assets page and the .bazelrc builder's remote downloader option."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from reapi.models import Asset
from tests.support.servers import manage
from tests.support.tenants import Persona


def client_for(username: str) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.get(username=username))
    return client


def add_asset(persona: Persona, uri: str, size: int, hits: int, used_minutes_ago: int | None) -> Asset:
    now = timezone.now()
    return Asset.objects.create(
        storage="reapi-external",
        tenant=persona.tenant,
        key=f"{abs(hash(uri)):064x}"[:64],
        uri=uri,
        digest_hash="a" * 64,
        digest_size=size,
        hits=hits,
        first_fetched_at=now - timedelta(days=1),
        last_used_at=None if used_minutes_ago is None else now - timedelta(minutes=used_minutes_ago),
    )


def test_members_see_their_tenants_assets_and_outsiders_get_404(acme: Persona, globex: Persona) -> None:
    add_asset(acme, "https://mirror.example.com/rules_go-0.30.tar.gz", 5 * 1024 * 1024, 12, 5)
    add_asset(acme, "https://mirror.example.com/old.tar.gz", 2048, 0, None)
    add_asset(globex, "https://globex.example.com/secret.tar.gz", 10, 1, 1)
    page = client_for(acme.developer or "").get(f"/t/{acme.slug}/assets/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "https://mirror.example.com/rules_go-0.30.tar.gz" in body
    assert "5.0 MiB" in body
    assert body.index("rules_go-0.30") < body.index("old.tar.gz")  # most recently used first
    assert 'id="total-assets">2<' in body
    assert 'id="total-asset-hits">12<' in body
    assert "globex.example.com" not in body
    assert f'href="/t/{acme.slug}/assets/" aria-current="page">Assets</a>' in body
    assert client_for(globex.admin).get(f"/t/{acme.slug}/assets/").status_code == 404


def test_the_bazelrc_builder_offers_the_remote_downloader(acme: Persona) -> None:
    client = client_for(acme.developer or "")
    form = client.get(f"/t/{acme.slug}/bazelrc/").content.decode()
    assert 'name="downloader"' in form and "--experimental_remote_downloader" in form
    body = client.get(
        f"/t/{acme.slug}/bazelrc/?cluster=external&execution=0&download=all&timeout=60&downloader=on"
    ).content.decode()
    assert "build --remote_cache=grpc://127.0.0.1:8980" in body
    assert "build --experimental_remote_downloader=grpc://127.0.0.1:8980" in body
    plain = client.get(f"/t/{acme.slug}/bazelrc/?cluster=external&execution=0&download=all&timeout=60")
    assert "build --experimental_remote_downloader" not in plain.content.decode()


def test_the_cli_prints_the_remote_downloader(acme: Persona) -> None:
    out = manage("bazelrc", "--tenant", acme.slug, "--cluster", "internal", "--remote-downloader").stdout
    assert "build --remote_cache=grpc://127.0.0.1:8981\n" in out
    assert "build --experimental_remote_downloader=grpc://127.0.0.1:8981\n" in out
