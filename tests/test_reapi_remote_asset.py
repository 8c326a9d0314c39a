"""The Remote Asset API over a real socket: downloads from an origin on 127.0.0.1, the cache
that serves them again without it, qualifiers, limits, scopes, tenancy, and the egress policy.

The origin is on loopback, which the server refuses unless REAPI_ASSET_ALLOWED_URLS names it:
the server here names it (`http://127.0.0.1:PORT/`, the documented way) beside a scheme-wide
`http://` entry, so URLs on other hosts are allowed by the list and still refused when they
resolve to, or are, internal addresses. No test connects anywhere but 127.0.0.1.
"""

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from portal import tenancy, tokens
from portal.models import AuditEvent
from reapi import provenance
from reapi.gen.build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
from reapi.gen.build.bazel.remote.asset.v1 import remote_asset_pb2_grpc as ra_grpc
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.gen.google.rpc import status_pb2
from reapi.models import Asset
from tests.support.asset_origin import Origin
from tests.support.reapi_client import Client, digest
from tests.support.servers import ReapiServer, free_port
from tests.support.storage_probe import stored_files
from tests.support.tenants import Persona

MAX_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture(scope="module")
def other() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture(scope="module")
def dead_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture(scope="module")
def server(origin: Origin, other: Origin, dead_port: int) -> Iterator[ReapiServer]:
    env = {
        "REAPI_ASSET_ALLOWED_URLS": f"{origin.base}/,{other.base}/,http://127.0.0.1:{dead_port}/,http://",
        "REAPI_ASSET_MAX_BYTES": str(MAX_BYTES),
        "REAPI_USAGE_FLUSH_SECONDS": "1",
    }
    with ReapiServer("external", env=env) as s:
        yield s


def sri(algorithm: str, data: bytes) -> str:
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


class Assets:
    def __init__(self, server: ReapiServer, token: str, instance: str = "") -> None:
        self.channel = server.channel()
        self.cas = Client(self.channel, token, instance)
        self.metadata = (("x-aspect", token),)
        self.instance = instance
        self.fetch = ra_grpc.FetchStub(self.channel)
        self.push = ra_grpc.PushStub(self.channel)

    def fetch_blob(
        self,
        *uris: str,
        checksum: str | None = None,
        canonical_id: str | None = None,
        timeout: float | None = None,
        oldest: datetime | None = None,
    ) -> ra_pb2.FetchBlobResponse:
        qualifiers = []
        if checksum is not None:
            qualifiers.append(("checksum.sri", checksum))
        if canonical_id is not None:
            qualifiers.append(("bazel.canonical_id", canonical_id))
        return self.fetch_with(list(uris), qualifiers, timeout, oldest)

    def fetch_with(
        self,
        uris: list[str],
        qualifiers: list[tuple[str, str]],
        timeout: float | None = None,
        oldest: datetime | None = None,
    ) -> ra_pb2.FetchBlobResponse:
        request = ra_pb2.FetchBlobRequest(
            instance_name=self.instance,
            uris=uris,
            qualifiers=[ra_pb2.Qualifier(name=n, value=v) for n, v in qualifiers],
        )
        return self._fetch(request, timeout, oldest)

    def _fetch(
        self, request: ra_pb2.FetchBlobRequest, timeout: float | None, oldest: datetime | None
    ) -> ra_pb2.FetchBlobResponse:
        if timeout is not None:
            request.timeout.CopyFrom(
                duration_pb2.Duration(seconds=int(timeout), nanos=int(timeout % 1 * 1e9))
            )
        if oldest is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(oldest)
            request.oldest_content_accepted.CopyFrom(stamp)
        return self.fetch.FetchBlob(request, metadata=self.metadata, timeout=60)


class Refusal:
    def __init__(self, error: grpc.RpcError) -> None:
        self.error = error

    def details(self) -> str:
        return self.error.details() or ""

    def trailing_metadata(self) -> dict[str, str | bytes]:
        return {m.key: m.value for m in self.error.trailing_metadata() or ()}


def refused(call: Callable[[], object], code: grpc.StatusCode) -> Refusal:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return Refusal(info.value)


def test_a_fetched_asset_is_stored_once_and_served_again_without_the_origin(
    server: ReapiServer, origin: Origin, acme: Persona
) -> None:
    data = os.urandom(200_000)
    url = origin.put(f"a-{acme.slug}.tar.gz", data)
    client = Assets(server, acme.pat(acme.developer))
    first = client.fetch_blob(url, checksum=sri("sha256", data))
    assert first.status.code == 0
    assert first.uri == url
    assert first.blob_digest == digest(data)
    assert first.digest_function == re_pb2.DigestFunction.SHA256
    assert client.cas.read(first.blob_digest) == data
    assert origin.hits(f"/files/a-{acme.slug}") == 1

    again = client.fetch_blob(url, checksum=sri("sha256", data))
    assert again.blob_digest == first.blob_digest
    # The same URL without a checksum is another asset (nothing pins its content): fetched too.
    assert client.fetch_blob(url).blob_digest == first.blob_digest
    assert origin.hits(f"/files/a-{acme.slug}") == 2
    origin.files.pop(f"a-{acme.slug}.tar.gz")  # the origin loses it: both are still served
    assert client.fetch_blob(url, checksum=sri("sha256", data)).blob_digest == first.blob_digest
    assert client.fetch_blob(url).blob_digest == first.blob_digest
    assert origin.hits(f"/files/a-{acme.slug}") == 2

    rows = Asset.objects.filter(tenant=acme.tenant)
    assert {r.uri for r in rows} == {url}
    assert {r.digest_hash for r in rows} == {first.blob_digest.hash}
    assert all(r.storage == "reapi-external" and r.origin == "fetched" for r in rows)
    # Hits are counted in memory and saved on the usage flusher's beat (1 s here).
    deadline = time.monotonic() + 10
    while sum(r.hits for r in Asset.objects.filter(tenant=acme.tenant)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sum(r.hits for r in Asset.objects.filter(tenant=acme.tenant)) == 3
    assert all(r.last_used_at is not None for r in Asset.objects.filter(tenant=acme.tenant))


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_checksums_are_verified_before_anything_is_stored(
    server: ReapiServer, origin: Origin, acme: Persona, algorithm: str
) -> None:
    data, other = os.urandom(50_000), os.urandom(50_000)
    url = origin.put(f"c-{algorithm}-{acme.slug}", data)
    client = Assets(server, acme.pat())
    ok = client.fetch_blob(url, checksum=sri(algorithm, data))
    assert ok.blob_digest == digest(data)
    assert [(q.name, q.value) for q in ok.qualifiers] == [("checksum.sri", sri(algorithm, data))]

    before = stored_files()
    bad_url = origin.put(f"bad-{algorithm}-{acme.slug}", other)
    # (The checksum of content never seen: one already cached would be served from the cache.)
    expected = sri(algorithm, os.urandom(50_000))
    err = refused(lambda: client.fetch_blob(bad_url, checksum=expected), grpc.StatusCode.ABORTED)
    assert "does not match checksum.sri" in err.details()
    assert bad_url in err.details()
    assert stored_files() == before
    # Bazel retries ABORTED: its retries get the same answer without another download.
    again = refused(lambda: client.fetch_blob(bad_url, checksum=expected), grpc.StatusCode.ABORTED)
    assert "not fetched again" in again.details()
    assert origin.hits(f"/files/bad-{algorithm}-{acme.slug}") == 1
    assert client.cas.missing(digest(other)) == [digest(other)]
    assert not Asset.objects.filter(tenant=acme.tenant, uri=bad_url).exists()


def test_a_malformed_checksum_is_an_invalid_argument(
    server: ReapiServer, origin: Origin, acme: Persona
) -> None:
    client = Assets(server, acme.pat())
    url = origin.put("m", b"x")
    for value in ("md5-AAAA", "sha256-not*base64", "sha256-" + base64.b64encode(b"short").decode(), ""):
        err = refused(partial(client.fetch_blob, url, checksum=value), grpc.StatusCode.INVALID_ARGUMENT)
        assert "checksum.sri" in err.details()


def test_a_checksum_finds_the_same_content_under_a_mirror_url(
    server: ReapiServer, origin: Origin, acme: Persona
) -> None:
    data = os.urandom(10_000)
    url = origin.put(f"mirror-{acme.slug}", data)
    client = Assets(server, acme.pat())
    client.fetch_blob(url, checksum=sri("sha256", data))
    elsewhere = f"{origin.base}/status/404?{acme.slug}"
    found = client.fetch_blob(elsewhere, checksum=sri("sha256", data))
    assert found.blob_digest == digest(data)
    assert found.uri == elsewhere  # the request's URI: the content is the same
    assert origin.hits("/status/404") == 0
    # sha512 checksums find it by the checksum text.
    url512 = origin.put(f"mirror512-{acme.slug}", data)
    client.fetch_blob(url512, checksum=sri("sha512", data))
    assert client.fetch_blob(elsewhere, checksum=sri("sha512", data)).blob_digest == digest(data)
    assert origin.hits("/status/404") == 0


def test_the_canonical_id_keeps_cache_hits_apart(server: ReapiServer, origin: Origin, acme: Persona) -> None:
    data = os.urandom(10_000)
    name = f"canon-{acme.slug}"
    url = origin.put(name, data)
    client = Assets(server, acme.pat())
    client.fetch_blob(url, checksum=sri("sha256", data), canonical_id="v1")
    origin.files.pop(name)
    assert client.fetch_blob(url, checksum=sri("sha256", data), canonical_id="v1").blob_digest == digest(data)
    # Another canonical id (or none) does not take the entry: the origin is asked, and 404s.
    refused(
        lambda: client.fetch_blob(url, checksum=sri("sha256", data), canonical_id="v2"),
        grpc.StatusCode.NOT_FOUND,
    )
    refused(lambda: client.fetch_blob(url, checksum=sri("sha256", data)), grpc.StatusCode.NOT_FOUND)


def test_header_qualifiers_are_passed_on_and_stay_with_their_origin(
    server: ReapiServer, origin: Origin, other: Origin, acme: Persona
) -> None:
    client = Assets(server, acme.pat())
    url = f"{origin.base}/echo-headers?{acme.slug}"
    client.fetch_with(
        [url],
        [
            ("http_header:X-Mirror-Token", "global"),
            ("http_header_url:0:Authorization", "Bearer for-url-0"),
            ("bazel.auth_headers", json.dumps({url: {"X-Bazel-Auth": "netrc"}})),
        ],
    )
    sent = origin.headers_of(f"/echo-headers?{acme.slug}")[-1]
    assert sent["x-mirror-token"] == "global"
    assert sent["authorization"] == "Bearer for-url-0"
    assert sent["x-bazel-auth"] == "netrc"
    assert sent["accept-encoding"] == "identity"

    # Redirected to another origin, the client's headers stay behind, but for those it gave
    # for that URL.
    hop = f"{origin.base}/redirect?to={other.base}/echo-headers"
    client.fetch_with(
        [hop],
        [
            ("http_header:Authorization", "Bearer for-the-first-origin"),
            ("bazel.auth_headers", json.dumps({f"{other.base}/echo-headers": {"X-Bazel-Auth": "other"}})),
        ],
    )
    sent = other.headers_of("/echo-headers")[-1]
    assert "authorization" not in sent
    assert sent["x-bazel-auth"] == "other"

    # Headers without a checksum are part of the asset: other credentials, another asset.
    before = origin.hits(f"/echo-headers?{acme.slug}")
    client.fetch_with([url], [("http_header:Authorization", "Bearer a")])
    client.fetch_with([url], [("http_header:Authorization", "Bearer a")])
    client.fetch_with([url], [("http_header:Authorization", "Bearer b")])
    assert origin.hits(f"/echo-headers?{acme.slug}") == before + 2


def test_bad_header_qualifiers_are_refused(server: ReapiServer, origin: Origin, acme: Persona) -> None:
    client = Assets(server, acme.pat())
    url = origin.put("h", b"h")
    for name, value in [
        ("http_header:Host", "internal.example"),
        ("http_header:Bad Name", "x"),
        ("http_header:X-Ok", "line\r\nbreak"),
        ("http_header_url:1:X-Ok", "no second URI"),
        ("http_header_url:x:X-Ok", "no index"),
        ("bazel.auth_headers", "not json"),
    ]:
        refused(partial(client.fetch_with, [url], [(name, value)]), grpc.StatusCode.INVALID_ARGUMENT)


def test_unknown_qualifiers_are_refused_by_name(server: ReapiServer, origin: Origin, acme: Persona) -> None:
    client = Assets(server, acme.pat())
    url = origin.put("q", b"q")
    err = refused(
        lambda: client.fetch_with([url], [("vcs.commit", "abc"), ("resource_type", "application/x-git")]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "'vcs.commit'" in err.details() and "'resource_type'" in err.details()
    detail = err.trailing_metadata()["grpc-status-details-bin"]
    assert isinstance(detail, bytes)
    status = status_pb2.Status.FromString(detail)
    bad = status_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("qualifiers.name", '"vcs.commit" not supported'),
        ("qualifiers.name", '"resource_type" not supported'),
    ]
    err = refused(
        lambda: client.fetch_with([url], [("checksum.sri", sri("sha256", b"q")), ("checksum.sri", "x")]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "given twice" in err.details()
    assert origin.hits("/files/q") == 0


def test_an_asset_over_the_size_cap_is_refused(server: ReapiServer, origin: Origin, acme: Persona) -> None:
    client = Assets(server, acme.pat())
    big = os.urandom(MAX_BYTES + 1)
    before = stored_files()
    for route in ("files", "chunked"):  # announced by Content-Length, and found while streaming
        origin.put(f"big-{route}-{acme.slug}", big)
        err = refused(
            partial(client.fetch_blob, f"{origin.base}/{route}/big-{route}-{acme.slug}"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "REAPI_ASSET_MAX_BYTES" in err.details()
    assert stored_files() == before
    # Exactly the cap is fine.
    exact = origin.put(f"exact-{acme.slug}", big[:MAX_BYTES])
    assert client.fetch_blob(exact).blob_digest.size_bytes == MAX_BYTES


def test_origin_failures_reach_the_client(
    server: ReapiServer, origin: Origin, acme: Persona, dead_port: int
) -> None:
    client = Assets(server, acme.pat())
    err = refused(
        lambda: client.fetch_blob(f"{origin.base}/status/404?{acme.slug}"), grpc.StatusCode.NOT_FOUND
    )
    assert "404" in err.details()
    err = refused(
        lambda: client.fetch_blob(f"{origin.base}/status/500?{acme.slug}"), grpc.StatusCode.UNAVAILABLE
    )
    assert "500" in err.details()
    assert origin.hits(f"/status/500?{acme.slug}") == 2  # a transient failure is tried once more
    refused(
        lambda: client.fetch_blob(f"{origin.base}/status/403?{acme.slug}"), grpc.StatusCode.PERMISSION_DENIED
    )

    # The first URI fails, the mirror after it gives the content.
    data = os.urandom(1000)
    mirror = origin.put(f"second-{acme.slug}", data)
    found = client.fetch_blob(f"{origin.base}/status/503?{acme.slug}", mirror, checksum=sri("sha256", data))
    assert found.uri == mirror and found.blob_digest == digest(data)

    # Nothing listening there (a port the list names).
    err = refused(
        lambda: client.fetch_blob(f"http://127.0.0.1:{dead_port}/files/x?{acme.slug}"),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert "onnection refused" in err.details()


def test_a_slow_origin_runs_out_of_time(server: ReapiServer, origin: Origin, acme: Persona) -> None:
    client = Assets(server, acme.pat())
    origin.put(f"slow-{acme.slug}", b"late")
    started = time.monotonic()
    err = refused(
        lambda: client.fetch_blob(f"{origin.base}/slow/5/slow-{acme.slug}", timeout=1),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    assert time.monotonic() - started < 4
    assert "time ran out" in err.details()
    # Gone from the origin: the client's own deadline ends the call, and the download goes on
    # without it, so the next request finds the asset.
    with pytest.raises(grpc.RpcError) as info:
        client.fetch.FetchBlob(
            ra_pb2.FetchBlobRequest(uris=[f"{origin.base}/slow/2/slow-{acme.slug}"]),
            metadata=client.metadata,
            timeout=0.5,
        )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(2.5)
    before = origin.hits(f"/slow/2/slow-{acme.slug}")
    found = client.fetch_blob(f"{origin.base}/slow/2/slow-{acme.slug}")
    assert found.blob_digest == digest(b"late")
    assert origin.hits(f"/slow/2/slow-{acme.slug}") == before


def test_identical_requests_share_one_download(server: ReapiServer, origin: Origin, acme: Persona) -> None:
    client = Assets(server, acme.pat())
    origin.put(f"shared-{acme.slug}", b"shared")
    url = f"{origin.base}/slow/1/shared-{acme.slug}"
    results: list[ra_pb2.FetchBlobResponse] = []
    threads = [threading.Thread(target=lambda: results.append(client.fetch_blob(url))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and {r.blob_digest.hash for r in results} == {digest(b"shared").hash}
    assert origin.hits(f"/slow/1/shared-{acme.slug}") == 1


def test_redirects_to_internal_addresses_are_refused_before_connecting(
    server: ReapiServer, origin: Origin, acme: Persona
) -> None:
    client = Assets(server, acme.pat())
    for target, shown in [
        ("http://10.0.0.1/secret", "10.0.0.1"),  # private, allowed by the list's http:// entry
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),  # cloud metadata
        ("http://[fd00::1]/x", "fd00::1"),  # unique-local
        (f"http://localhost:{origin.port}/files/x", "resolves to 127.0.0.1"),  # a name for loopback
        (f"http://2130706433:{origin.port}/files/x", "127.0.0.1"),  # loopback in disguise
        ("https://127.0.0.1/", "outside REAPI_ASSET_ALLOWED_URLS"),
        ("file:///etc/passwd", "only http and https"),
    ]:
        hop = f"{origin.base}/redirect?to={target}"
        err = refused(partial(client.fetch_blob, hop), grpc.StatusCode.PERMISSION_DENIED)
        assert shown in err.details(), (target, err.details())
        assert "refused" in err.details()


def test_names_and_addresses_of_internal_hosts_are_refused(
    server: ReapiServer, origin: Origin, acme: Persona
) -> None:
    client = Assets(server, acme.pat())
    origin.put("internal", b"internal")
    for url, shown in [
        (f"http://localhost:{origin.port}/files/internal", "localhost resolves to 127.0.0.1"),
        (f"http://127.0.0.2:{origin.port}/files/internal", "127.0.0.2 is an internal address"),
        (f"http://[::1]:{origin.port}/files/internal", "::1 is an internal address"),
        (f"http://[::ffff:127.0.0.1]:{origin.port}/files/internal", "internal address"),
        (f"http://0.0.0.0:{origin.port}/files/internal", "0.0.0.0"),
        (f"https://127.0.0.1:{origin.port}/files/internal", "outside REAPI_ASSET_ALLOWED_URLS"),
        (f"{origin.base}/files/../files/internal", "'..'"),
    ]:
        err = refused(partial(client.fetch_blob, url), grpc.StatusCode.PERMISSION_DENIED)
        assert shown in err.details(), (url, err.details())
        assert url in err.details() or "refused" in err.details()
    assert origin.hits("/files/internal") == 0


def test_a_url_outside_the_allowed_list_is_refused(origin: Origin, acme: Persona) -> None:
    env = {"REAPI_ASSET_ALLOWED_URLS": f"{origin.base}/allowed/"}
    with ReapiServer("external", env=env) as narrow:
        client = Assets(narrow, acme.pat())
        url = origin.put("outside", b"outside")
        err = refused(lambda: client.fetch_blob(url), grpc.StatusCode.PERMISSION_DENIED)
        assert f"{url} is refused: it is outside REAPI_ASSET_ALLOWED_URLS" in err.details()
    with ReapiServer("external") as default:  # the default list: any public host, no loopback
        client = Assets(default, acme.pat())
        err = refused(lambda: client.fetch_blob(url), grpc.StatusCode.PERMISSION_DENIED)
        assert "127.0.0.1 is an internal address" in err.details()
    assert origin.hits("/files/outside") == 0


def test_another_tenants_assets_are_not_visible(
    server: ReapiServer, origin: Origin, acme: Persona, globex: Persona
) -> None:
    data = os.urandom(5000)
    name = f"tenant-{acme.slug}"
    url = origin.put(name, data)
    Assets(server, acme.pat()).fetch_blob(url, checksum=sri("sha256", data))
    origin.files.pop(name)
    outsider = Assets(server, globex.pat(scopes="cas:read,ac:read"))
    err = refused(
        lambda: outsider.fetch_blob(url, checksum=sri("sha256", data)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert f"not cached for tenant {globex.slug}" in err.details()
    writer = Assets(server, globex.pat())
    refused(lambda: writer.fetch_blob(url, checksum=sri("sha256", data)), grpc.StatusCode.NOT_FOUND)
    # The instance name cannot reach acme's either.
    named = Assets(server, globex.pat(), instance=acme.slug)
    refused(lambda: named.fetch_blob(url), grpc.StatusCode.PERMISSION_DENIED)
    assert not Asset.objects.filter(tenant=globex.tenant).exists()


def test_a_read_only_token_gets_cached_assets_but_cannot_make_the_server_download(
    server: ReapiServer, origin: Origin, acme: Persona
) -> None:
    data = os.urandom(3000)
    url = origin.put(f"ro-{acme.slug}", data)
    reader = Assets(server, acme.pat(acme.developer, scopes="cas:read,ac:read"))
    err = refused(lambda: reader.fetch_blob(url), grpc.StatusCode.PERMISSION_DENIED)
    assert "cas:write" in err.details()
    assert origin.hits(f"/files/ro-{acme.slug}") == 0
    Assets(server, acme.pat()).fetch_blob(url)
    assert reader.fetch_blob(url).blob_digest == digest(data)
    # Asking for fresher content than the cache has is a download again: refused too.
    refused(
        lambda: reader.fetch_blob(url, oldest=datetime.now(UTC) + timedelta(minutes=1)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Without any CAS scope nothing is served.
    nothing = Assets(server, acme.pat(scopes="ac:read"))
    refused(lambda: nothing.fetch_blob(url), grpc.StatusCode.PERMISSION_DENIED)
    refused(
        lambda: reader.push.PushBlob(
            ra_pb2.PushBlobRequest(uris=["urn:x"], blob_digest=digest(data)), metadata=reader.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


def test_oldest_content_accepted_downloads_again(server: ReapiServer, origin: Origin, acme: Persona) -> None:
    url = origin.put(f"fresh-{acme.slug}", b"old")
    client = Assets(server, acme.pat())
    assert client.fetch_blob(url).blob_digest == digest(b"old")
    origin.put(f"fresh-{acme.slug}", b"new")
    assert client.fetch_blob(url).blob_digest == digest(b"old")
    assert client.fetch_blob(url, oldest=datetime.now(UTC)).blob_digest == digest(b"new")
    assert client.fetch_blob(url).blob_digest == digest(b"new")


def test_pushed_blobs_and_directories_are_fetched(server: ReapiServer, acme: Persona) -> None:
    client = Assets(server, acme.pat())
    data = os.urandom(2000)
    client.cas.upload(data)
    urn = f"urn:uuid:{acme.slug}"
    client.push.PushBlob(
        ra_pb2.PushBlobRequest(
            uris=[urn, "https://example.invalid/pushed.tgz"],
            qualifiers=[ra_pb2.Qualifier(name="checksum.sri", value=sri("sha384", data))],
            blob_digest=digest(data),
        ),
        metadata=client.metadata,
    )
    for uri in (urn, "https://example.invalid/pushed.tgz"):
        assert client.fetch_blob(uri, checksum=sri("sha384", data)).blob_digest == digest(data)
    assert Asset.objects.filter(tenant=acme.tenant, origin="pushed").count() == 2

    missing = os.urandom(10)
    refused(
        lambda: client.push.PushBlob(
            ra_pb2.PushBlobRequest(uris=[urn + "-2"], blob_digest=digest(missing)), metadata=client.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    err = refused(
        lambda: client.push.PushBlob(
            ra_pb2.PushBlobRequest(
                uris=[urn + "-3"],
                qualifiers=[ra_pb2.Qualifier(name="checksum.sri", value=sri("sha256", b"other"))],
                blob_digest=digest(data),
            ),
            metadata=client.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "does not match" in err.details()
    # An expired push is no longer served.
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    client.push.PushBlob(
        ra_pb2.PushBlobRequest(uris=[urn + "-old"], blob_digest=digest(data), expire_at=past),
        metadata=client.metadata,
    )
    refused(lambda: client.fetch_blob(urn + "-old"), grpc.StatusCode.PERMISSION_DENIED)  # urn: not http(s)

    file_node = re_pb2.FileNode(name="f", digest=digest(data))
    directory = re_pb2.Directory(files=[file_node]).SerializeToString()
    client.cas.upload(directory)
    client.push.PushDirectory(
        ra_pb2.PushDirectoryRequest(uris=[f"{urn}/dir"], root_directory_digest=digest(directory)),
        metadata=client.metadata,
    )
    got = client.fetch.FetchDirectory(
        ra_pb2.FetchDirectoryRequest(uris=[f"{urn}/dir"]), metadata=client.metadata
    )
    assert got.root_directory_digest == digest(directory)
    err = refused(
        lambda: client.fetch.FetchDirectory(
            ra_pb2.FetchDirectoryRequest(uris=["https://example.invalid/repo.git"]), metadata=client.metadata
        ),
        grpc.StatusCode.UNIMPLEMENTED,
    )
    assert "does not download directories" in err.details()
    refused(
        lambda: client.push.PushDirectory(
            ra_pb2.PushDirectoryRequest(uris=[f"{urn}/notdir"], root_directory_digest=digest(b"nope")),
            metadata=client.metadata,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_requests_without_uris_or_with_another_digest_function_are_invalid(
    server: ReapiServer, acme: Persona
) -> None:
    client = Assets(server, acme.pat())
    refused(lambda: client.fetch_with([], []), grpc.StatusCode.INVALID_ARGUMENT)
    refused(
        lambda: client.fetch.FetchBlob(
            ra_pb2.FetchBlobRequest(uris=["http://x/"], digest_function=re_pb2.DigestFunction.SHA1),
            metadata=client.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    refused(
        lambda: ra_grpc.FetchStub(client.channel).FetchBlob(ra_pb2.FetchBlobRequest(uris=["http://x/"])),
        grpc.StatusCode.UNAUTHENTICATED,
    )


def test_assets_live_in_the_storage_the_cas_uses(
    server: ReapiServer, internal_server: ReapiServer, acme: Persona
) -> None:
    """Pushed on the internal (CI) cluster: a workstation sees it only in pass-through mode,
    which gives the external cluster the internal storage, as for every CAS blob."""
    ci = Assets(internal_server, acme.pat())
    data = os.urandom(4000)
    ci.cas.upload(data)
    urn = f"urn:ci-built:{acme.slug}"
    ci.push.PushBlob(ra_pb2.PushBlobRequest(uris=[urn], blob_digest=digest(data)), metadata=ci.metadata)
    assert ci.fetch_blob(urn).blob_digest == digest(data)
    assert Asset.objects.get(tenant=acme.tenant).storage == "reapi-internal"

    workstation = Assets(server, acme.pat(scopes="cas:read,ac:read"))
    refused(lambda: workstation.fetch_blob(urn), grpc.StatusCode.PERMISSION_DENIED)
    tenancy.set_cache_mode(acme.tenant, "pass-through")
    workstation = Assets(server, acme.pat(scopes="cas:read,ac:read"))  # a credential read afresh
    assert workstation.fetch_blob(urn).blob_digest == digest(data)
    assert workstation.cas.read(digest(data)) == data


def test_a_purge_removes_what_a_token_pushed_but_not_what_the_server_fetched(
    server: ReapiServer, origin: Origin, acme: Persona
) -> None:
    issued = tokens.issue(acme.tenant, acme.admin, name="leaked")
    leaked = Assets(server, issued.secret)
    data = os.urandom(1000)
    leaked.cas.upload(data)
    leaked.push.PushBlob(
        ra_pb2.PushBlobRequest(uris=[f"https://example.invalid/{acme.slug}.tgz"], blob_digest=digest(data)),
        metadata=leaked.metadata,
    )
    fetched_url = origin.put(f"purge-{acme.slug}", b"from the origin")
    leaked.fetch_blob(fetched_url)
    assert Asset.objects.filter(tenant=acme.tenant, token_id=issued.token.id).count() == 2

    tokens.revoke(issued.token)
    provenance.purge_token(issued.token.id, settle_seconds=0)
    assert list(Asset.objects.filter(tenant=acme.tenant).values_list("uri", flat=True)) == [fetched_url]
    event = AuditEvent.objects.get(action="token.purge", token_prefix=issued.token.prefix)
    assert event.detail == {"entries": 0, "assets": 1}
