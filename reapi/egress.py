"""Where the server may download from on a client's behalf: the Remote Asset API's egress policy.

An internet-facing server that fetches URLs for its clients must never become their way into
the network behind it (SSRF). Every URL the server is about to request, the client's and every
redirect's, passes `Policy.target` and `Policy.addresses`:

- The scheme is http or https, and the URL matches an allowed prefix
  (`REAPI_ASSET_ALLOWED_URLS`, comma-separated; empty: any http or https URL).
- Its host is resolved here, once, and every address it resolves to must be public: loopback,
  private (RFC 1918), carrier-grade NAT, link-local (169.254.0.0/16, where clouds serve their
  metadata), unique-local (fc00::/7), multicast, unspecified and reserved addresses are
  refused, also when hidden in an IPv4-mapped, 6to4 or Teredo IPv6 address. One bad address
  refuses the host: a name that resolves to a public and a private address is refused.
- Such addresses are reached only through a prefix that names the host explicitly
  (`http://127.0.0.1:8080/`, `https://artifacts.corp.example/`): an operator who lists an
  internal mirror by name means it. A scheme-wide prefix (`https://`) names no host.
- The connection goes to the address that was checked (reapi.http_fetch pins it), so a DNS
  answer that changes between the check and the connection cannot move it elsewhere.

A refusal is PERMISSION_DENIED naming the URL. No Django here: portal/settings.py parses
the prefixes with `parse_prefixes` so a malformed one stops start-up.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from reapi.errors import InvalidArgument, PermissionDenied, Unavailable

SCHEMES = {"http": 80, "https": 443}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Not in ipaddress's idea of "not global" on every Python: ranges that must never be reached.
_EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the host itself on Linux
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "fc00::/7",  # unique-local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed by some)
        "ff00::/8",  # multicast
    )
)


@dataclass(frozen=True, slots=True)
class Prefix:
    """One allowed URL prefix: scheme, host ("" for any), port and path prefix."""

    scheme: str
    host: str
    port: int | None
    path: str
    text: str

    def matches(self, url: "Target") -> bool:
        if url.scheme != self.scheme:
            return False
        if not self.host:
            return True
        return url.host == self.host and url.port == self.port and url.path.startswith(self.path)


@dataclass(frozen=True, slots=True)
class Target:
    """A URL checked against the prefixes, not yet resolved."""

    url: str
    scheme: str
    host: str  # lowercase, IPv6 without brackets
    port: int
    path: str  # path and query, at least "/"
    explicit: bool  # an allowed prefix names this host: internal addresses are allowed


def _split(url: str) -> SplitResult:
    if any(c in url for c in "\r\n\t\0 \\"):
        raise InvalidArgument(f"URL {_shown(url)!r} contains whitespace, a backslash or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port out of range or not a number)
    except ValueError as exc:
        raise InvalidArgument(f"URL {_shown(url)!r} is malformed: {exc}") from None
    # An origin (and urllib3 before it) would resolve `..` and step out of an allowed prefix's
    # path: refused, spelled plainly or percent-encoded.
    if any(seg in (".", "..") for seg in unquote(parts.path).split("/")):
        raise PermissionDenied(f"{_shown(url)} is refused: its path has '.' or '..' segments")
    return parts


def _host_of(parts: SplitResult, url: str) -> str:
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidArgument(f"URL {_shown(url)!r} has no host")
    return host


def parse_prefixes(items: list[str]) -> list[Prefix]:
    """The allowed prefixes of REAPI_ASSET_ALLOWED_URLS; ValueError naming a malformed one."""
    prefixes = []
    for text in items:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES or not text.lower().startswith(f"{scheme}://"):
            raise ValueError(f"{text!r} is not an http:// or https:// URL prefix")
        if parts.username or parts.password or parts.fragment:
            raise ValueError(f"{text!r}: a prefix carries no user, password or fragment")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{text!r} has a malformed port") from None
        host = (parts.hostname or "").lower()
        if not host:
            if parts.netloc or parts.path or parts.query:
                raise ValueError(f"{text!r}: a scheme-wide prefix is only {scheme}://")
            prefixes.append(Prefix(scheme, "", None, "", text))
            continue
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        prefixes.append(Prefix(scheme, host, port or SCHEMES[scheme], path, text))
    return prefixes


def is_internal(ip: IPAddress) -> bool:
    """Whether `ip` is an address of the network behind the server, or of the server itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return is_internal(embedded)
        if ip.teredo is not None:
            return any(is_internal(v4) for v4 in ip.teredo)
        if ip in ipaddress.ip_network("64:ff9b::/96"):  # NAT64: the IPv4 address in the last 32 bits
            return is_internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if not ip.is_global or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return True
    return any(ip.version == net.version and ip in net for net in _EXTRA_BLOCKED)


class Policy:
    def __init__(self, prefixes: list[Prefix]) -> None:
        self.prefixes = prefixes

    def target(self, url: str) -> Target:
        """`url` as a Target, or PERMISSION_DENIED when no prefix allows it."""
        parts = _split(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise PermissionDenied(f"{_shown(url)} is refused: only http and https URLs are fetched")
        host = _host_of(parts, url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        found = Target(url, scheme, host, parts.port or SCHEMES[scheme], path, explicit=False)
        if not self.prefixes:
            return found
        matching = [p for p in self.prefixes if p.matches(found)]
        if not matching:
            raise PermissionDenied(f"{_shown(url)} is refused: it is outside REAPI_ASSET_ALLOWED_URLS")
        explicit = any(p.host for p in matching)
        return Target(found.url, scheme, host, found.port, path, explicit)

    def addresses(self, target: Target) -> list[str]:
        """The addresses to connect to for `target`, each one checked: PERMISSION_DENIED when
        any is internal and no prefix names the host, UNAVAILABLE when the name does not
        resolve."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(target.host)
        except ValueError:
            literal = None
        if literal is not None:
            found = [literal]
        else:
            try:
                infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise Unavailable(
                    f"{_shown(target.url)}: the name {target.host} does not resolve ({exc})"
                ) from None
            found = []
            for _family, _type, _proto, _name, sockaddr in infos:
                ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
                if ip not in found:
                    found.append(ip)
        if not target.explicit:
            internal = [ip for ip in found if is_internal(ip)]
            if internal:
                via = "" if literal is not None else f" ({target.host} resolves to {internal[0]})"
                raise PermissionDenied(
                    f"{_shown(target.url)} is refused: {internal[0]} is an internal address{via}; "
                    "only an entry of REAPI_ASSET_ALLOWED_URLS naming the host reaches it"
                )
        if not found:
            raise Unavailable(f"{_shown(target.url)}: the name {target.host} has no address")
        return [str(ip) for ip in found]


def _shown(url: str) -> str:
    """The URL for messages and logs: without user and password, and not too long."""
    return redact(url)[:300]


def redact(url: str) -> str:
    """`url` without its user and password (never shown, logged or stored)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=netloc).geturl()
