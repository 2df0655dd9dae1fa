"""SSRF guard: refuse URLs whose host resolves to an internal address.

Images come from URLs supplied by third parties, so a download must never reach loopback, the private
network, link-local space or a cloud metadata endpoint. The check resolves the host the way the connection
will (``getaddrinfo``, which also normalises legacy literals such as ``http://2130706433/``) and refuses when
*any* resolved address is internal, so a name with one public and one private record cannot slip through.

Known limit: the connection resolves the name again, so a DNS-rebinding server could answer differently the
second time. Pinning the checked address into the connection would close that gap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from imgaudit.errors import BlockedAddress, FetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; not is_private in Python
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # reaches the embedded IPv4 address through a gateway
_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_LOOPBACK_NAMES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
# Characters of the legacy IPv4 forms inet_aton accepts: 2130706433, 0x7f.1, 0177.0.0.1, 127.1.
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted, or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: IPAddress | None = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return f"IPv6 wrapping {embedded}, {inner}" if inner else None
        if ip.teredo is not None:
            return "Teredo tunnel"
    if ip in _METADATA:
        return "cloud metadata endpoint"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared address space (carrier-grade NAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True, slots=True)
class _Allowlist:
    """``allowed_hosts`` split into exact names, ``.suffix`` names and networks."""

    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _Allowlist:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            entry = entry.rstrip(".")
            if entry.startswith(("*.", ".")):
                suffixes.append("." + entry.lstrip("*."))
            else:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def allows_ip(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.networks if c.version == net.version)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A URL whose verdict depends on what its host resolves to."""

    url: str
    host: str
    port: int | None
    allow: _Allowlist


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _refuse_any(url: str, host: str, addresses: Sequence[IPAddress], allow: _Allowlist) -> None:
    if not addresses:
        raise BlockedAddress(f"refusing {url}: {host!r} resolves to no address")
    for ip in addresses:
        reason = blocked_reason(ip)
        if reason and not allow.allows_ip(ip):
            shown = host if host == str(ip) else f"{host} -> {ip}"
            raise BlockedAddress(f"refusing {url}: {shown} is {reason} (SSRF guard)")


def _plan(url: str, *, allow_private: bool, allowed_hosts: Sequence[str]) -> _Pending | None:
    """Everything that needs no resolver; None when the URL is already known to be fine."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise BlockedAddress(f"refusing URL with whitespace or control characters: {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BlockedAddress(f"refusing malformed URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BlockedAddress(f"refusing {url}: scheme {scheme or '(none)'!r} is not http or https")
    if "\\" in parts.netloc:
        raise BlockedAddress(f"refusing {url}: backslash in the host part")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise BlockedAddress(f"refusing {url}: no host")
    if allow_private:
        return None
    allow = _Allowlist.parse(allowed_hosts)
    if allow.allows_name(host):
        return None
    literal = _literal_ip(host)
    if literal is not None:
        _refuse_any(url, host, [literal], allow)
        return None
    if host == "localhost" or host.endswith(".localhost"):
        # RFC 6761: these names always mean loopback, whatever the resolver says.
        _refuse_any(url, host, _LOOPBACK_NAMES, allow)
        return None
    return _Pending(url, host, port, allow)


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        # Drop an IPv6 zone ("fe80::1%eth0") so ip_address accepts it; link-local is refused anyway.
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    return found


def check_url(url: str, *, allow_private: bool, allowed_hosts: Sequence[str]) -> None:
    """Raise BlockedAddress unless ``url`` is http(s) and every address of its host is public.

    ``allow_private`` switches the address check off (tests, internal deployments); ``allowed_hosts`` exempts
    host names (exact, or ``.example.com`` / ``*.example.com`` for subdomains) and CIDRs. A host that does
    not resolve raises FetchError: the URL may work later, so it is not a refusal.
    """
    pending = _plan(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
    if pending is None:
        return
    try:
        infos = socket.getaddrinfo(pending.host, pending.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {pending.host!r}: {exc}") from exc
    _refuse_any(pending.url, pending.host, _addresses(infos), pending.allow)


async def check_url_async(url: str, *, allow_private: bool, allowed_hosts: Sequence[str]) -> None:
    """check_url without blocking the event loop during name resolution."""
    pending = _plan(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
    if pending is None:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(pending.host, pending.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {pending.host!r}: {exc}") from exc
    _refuse_any(pending.url, pending.host, _addresses(infos), pending.allow)
