"""The egress policy (reapi/egress.py) and the pinned downloader (reapi/http_fetch.py) in
process: which addresses are internal, how prefixes match, and that a connection goes to the
address that was checked, never to what DNS says afterwards. Only 127.0.0.1 is connected to.
"""

import ipaddress
import socket
import time
from collections.abc import Iterator

import pytest

from reapi import egress, http_fetch
from reapi.errors import InvalidArgument, PermissionDenied
from tests.support.asset_origin import Origin


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:0a00:0001::1",  # 6to4 of 10.0.0.1
        "2002:7f00:0001::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_internal_addresses(address: str) -> None:
    assert egress.is_internal(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "151.101.1.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses(address: str) -> None:
    assert not egress.is_internal(ipaddress.ip_address(address))


def test_prefixes_match_scheme_host_port_and_path() -> None:
    policy = egress.Policy(
        egress.parse_prefixes(["https://mirror.example.com/bazel/", "http://127.0.0.1:8080/", "https://"])
    )
    assert policy.target("https://mirror.example.com/bazel/x.tgz").explicit
    assert policy.target("https://mirror.example.com:443/bazel/x.tgz").explicit
    assert policy.target("HTTPS://Mirror.Example.COM/bazel/x.tgz").explicit
    # Allowed by the scheme-wide entry only: internal addresses stay refused for these.
    for url in (
        "https://mirror.example.com/other/x.tgz",
        "https://mirror.example.com.evil.test/bazel/x.tgz",
        "https://mirror.example.com:8443/bazel/x.tgz",
        "https://127.0.0.1:8080/",
    ):
        assert not policy.target(url).explicit, url
    assert policy.target("http://127.0.0.1:8080/anything").explicit
    for url in (
        "http://127.0.0.1:8081/",
        "http://127.0.0.1/",
        "http://localhost:8080/",
        "http://mirror.example.com/bazel/x.tgz",
        "http://127.0.0.1:8080@10.0.0.1/",  # the host is 10.0.0.1
        "ftp://mirror.example.com/bazel/x.tgz",
        "gopher://127.0.0.1:8080/",
    ):
        with pytest.raises(PermissionDenied):
            policy.target(url)


def test_dot_segments_cannot_leave_an_allowed_path() -> None:
    policy = egress.Policy(egress.parse_prefixes(["https://mirror.example.com/bazel/"]))
    for url in (
        "https://mirror.example.com/bazel/../admin",
        "https://mirror.example.com/bazel/%2e%2e/admin",
        "https://mirror.example.com/bazel/%2E%2E%2Fadmin",
        "https://mirror.example.com/bazel/./x",
    ):
        with pytest.raises(PermissionDenied):
            policy.target(url)
    with pytest.raises(InvalidArgument):
        policy.target("https://mirror.example.com/bazel\\..\\admin")


def test_malformed_prefixes_are_refused_at_start_up() -> None:
    for bad in (
        "ftp://x/",
        "mirror.example.com",
        "https://user:pw@x/",
        "https://x:notaport/",
        "https:///path",
    ):
        with pytest.raises(ValueError):
            egress.parse_prefixes([bad])


def test_internal_hosts_are_refused_unless_named() -> None:
    anywhere = egress.Policy([])
    for url, shown in [
        ("http://localhost/", "localhost resolves to 127.0.0.1"),
        ("http://127.0.0.1/", "127.0.0.1 is an internal address"),
        ("http://[::1]:80/", "::1 is an internal address"),
        ("http://2130706433/", "127.0.0.1"),
        ("http://0x7f.1/", "127.0.0.1"),
        ("http://10.0.0.1/", "10.0.0.1"),
    ]:
        with pytest.raises(PermissionDenied) as info:
            anywhere.addresses(anywhere.target(url))
        assert shown in info.value.message
    named = egress.Policy(egress.parse_prefixes(["http://localhost/"]))
    assert "127.0.0.1" in named.addresses(named.target("http://localhost/x"))


def test_user_and_password_are_never_shown() -> None:
    policy = egress.Policy(egress.parse_prefixes(["https://mirror.example.com/"]))
    with pytest.raises(PermissionDenied) as info:
        policy.target("https://alice:s3cret@other.example.com/x")
    assert "s3cret" not in info.value.message
    assert "https://other.example.com/x" in info.value.message


class _Rebinding(egress.Policy):
    """A policy that checked `pinned.invalid` and found 127.0.0.1 (named, so allowed). Were
    the connection to ask DNS again it would fail: the name resolves to nothing."""

    def addresses(self, target: egress.Target) -> list[str]:
        assert target.host == "pinned.invalid"
        return ["127.0.0.1"]


def test_the_connection_goes_to_the_checked_address(origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    origin.put("pinned", b"pinned content")
    real = socket.getaddrinfo

    def no_dns(host: str, *args: object, **kwargs: object) -> object:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise AssertionError(f"DNS asked for {host} after the check") from None
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    policy = _Rebinding(egress.parse_prefixes([f"http://pinned.invalid:{origin.port}/"]))
    got: list[bytes] = []
    size = http_fetch.download(
        f"http://pinned.invalid:{origin.port}/files/pinned",
        {},
        lambda _url: {},
        policy,
        time.monotonic() + 10,
        1 << 20,
        got.append,
    )
    assert b"".join(got) == b"pinned content" and size == len(b"pinned content")
    # The origin saw the name, not the address: virtual hosts and TLS work as for any client.
    assert origin.headers_of("/files/pinned")[-1]["host"] == f"pinned.invalid:{origin.port}"
