"""SSRF guard: refuse URLs whose host resolves to an internal address, and say where the connection may go.

Images come from URLs supplied by third parties, so a download must never reach loopback, the private
network, link-local space or a cloud metadata endpoint. The host is resolved once (through a ``Resolver``,
by default the event loop's ``getaddrinfo``) and refused when *any* address is internal, so a name with one
public and one private record cannot slip through.

Hosts that look numeric (the last label is digits or ``0x``-hex: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
``127.000.000.001``) are parsed here with the WHATWG URL rules and decided without a resolver; one that does
not parse as IPv4 is refused outright, so no URL library or resolver further down can read it differently.

DNS rebinding: ``resolve_target`` returns the addresses it checked and the fetcher connects to exactly those
(``imgaudit.media.fetch.PinnedBackend``), with the original name kept for TLS SNI and the Host header, so
the name is never resolved a second time. Known limit: ``check_url``/``check_url_async`` only validate; a
caller that connects by itself after them resolves again and gets no such protection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from imgaudit.errors import BlockedAddress, FetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT; not is_private in Python
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # reaches the embedded IPv4 address through a gateway
_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_LOOPBACK_NAMES: tuple[IPAddress, ...] = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
# Dots IDNA (UTS 46) maps to ".", so "127。0。0。1" is the same host as 127.0.0.1.
_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_DIGITS = {8: frozenset("01234567"), 10: frozenset(string.digits), 16: frozenset(string.hexdigits)}


class Resolver(Protocol):
    """Turns a host name into its addresses; injectable so tests (or a deployment) can script DNS.

    Raise OSError (e.g. ``socket.gaierror``) when the name does not resolve.
    """

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress | str]: ...


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The default Resolver: the running event loop's ``getaddrinfo`` (a thread, so the loop never blocks)."""
    loop = asyncio.get_running_loop()
    return _addresses(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL may be fetched from: its host and the addresses the guard passed (or exempted)."""

    host: str
    port: int
    addresses: tuple[IPAddress, ...]


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
    port: int
    allow: _Allowlist
    exempt: bool  # allow_private, or the name is allow-listed: resolve (to pin) but do not check


def _ipv4_number(part: str) -> int | None:
    """One dotted part under the WHATWG rules: 0x-hex, leading-zero octal, else decimal."""
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    return int(part, radix) if set(part) <= _DIGITS[radix] else None


def _ends_in_number(host: str) -> bool:
    """WHATWG "ends in a number": such a host is an IPv4 address or invalid, never a DNS name."""
    last = host.removesuffix(".").rsplit(".", 1)[-1]
    return bool(last) and ((last.isascii() and last.isdigit()) or _ipv4_number(last) is not None)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The WHATWG IPv4 parser (what browsers do; ``inet_aton`` agrees on valid input), None if invalid."""
    parts = host.removesuffix(".").split(".")
    if len(parts) > 4 or not all(parts):
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        return None
    return ipaddress.IPv4Address(values[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(values[:-1])))


def _literal_ip(host: str) -> IPAddress | None:
    """The address a literal host names; None for a DNS name; ValueError for a malformed literal."""
    if ":" in host:
        return ipaddress.ip_address(host)  # only a bracketed IPv6 literal has a colon in urlsplit's hostname
    if _ends_in_number(host):
        ip = _parse_ipv4(host)
        if ip is None:
            raise ValueError(f"{host!r} looks numeric but is not an IPv4 address")
        return ip
    return None


def _refuse_any(url: str, host: str, addresses: Sequence[IPAddress], allow: _Allowlist) -> None:
    if not addresses:
        raise BlockedAddress(f"refusing {url}: {host!r} resolves to no address")
    for ip in addresses:
        reason = blocked_reason(ip)
        if reason and not allow.allows_ip(ip):
            shown = host if host == str(ip) else f"{host} -> {ip}"
            raise BlockedAddress(f"refusing {url}: {shown} is {reason} (SSRF guard)")


def _host_of(url: str, hostname: str) -> str:
    """The host as a URL parser following IDNA sees it: compatibility forms folded, trailing dots dropped."""
    if "%" in hostname:  # percent-encoded host or IPv6 zone: parsers disagree on them, so refuse
        raise BlockedAddress(f"refusing {url}: '%' in the host")
    if not hostname.isascii():
        hostname = unicodedata.normalize("NFKC", hostname).translate(_IDNA_DOTS).lower()
    return hostname.rstrip(".")


def _plan(url: str, *, allow_private: bool, allowed_hosts: Sequence[str]) -> Target | _Pending:
    """Everything that needs no resolver: a Target when the host is a literal, else what to resolve."""
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
    host = _host_of(url, parts.hostname or "")
    if not host:
        raise BlockedAddress(f"refusing {url}: no host")
    port = DEFAULT_PORTS[scheme] if port is None else port
    try:
        literal = _literal_ip(host)  # decided before any exemption: a malformed literal is never fetched
    except ValueError as exc:
        raise BlockedAddress(f"refusing {url}: {exc}") from exc
    allow = _Allowlist.parse(allowed_hosts)
    exempt = allow_private or allow.allows_name(host)
    if literal is not None:
        if not exempt:
            _refuse_any(url, host, [literal], allow)
        return Target(host, port, (literal,))
    if host == "localhost" or host.endswith(".localhost"):
        # RFC 6761: these names always mean loopback, whatever the resolver says.
        if not exempt:
            _refuse_any(url, host, _LOOPBACK_NAMES, allow)
        return Target(host, port, _LOOPBACK_NAMES)
    return _Pending(url, host, port, allow, exempt)


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[IPAddress]:
    return _unique(info[4][0] for info in infos if isinstance(info[4], tuple))


def _unique(found: Iterable[object]) -> list[IPAddress]:
    """Addresses in order, no repeats; an IPv6 zone ("fe80::1%eth0") is dropped (link-local is refused)."""
    out: list[IPAddress] = []
    for raw in found:
        ip = raw if isinstance(raw, ipaddress.IPv4Address | ipaddress.IPv6Address) else None
        if ip is None:
            ip = ipaddress.ip_address(str(raw).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def _finish(pending: _Pending, addresses: Sequence[IPAddress]) -> Target:
    if not addresses:
        raise BlockedAddress(f"refusing {pending.url}: {pending.host!r} resolves to no address")
    if not pending.exempt:
        _refuse_any(pending.url, pending.host, addresses, pending.allow)
    return Target(pending.host, pending.port, tuple(addresses))


def precheck(url: str, *, allow_private: bool, allowed_hosts: Sequence[str]) -> None:
    """The checks that need no resolver (scheme, shape, literal and numeric hosts); raises BlockedAddress.

    Run on the raw URL before any URL library parses it, so a numeric host it would reject is refused
    as ``blocked_address`` rather than failing as a malformed URL.
    """
    _plan(url, allow_private=allow_private, allowed_hosts=allowed_hosts)


def check_url(url: str, *, allow_private: bool, allowed_hosts: Sequence[str]) -> None:
    """Raise BlockedAddress unless ``url`` is http(s) and every address of its host is public.

    ``allow_private`` switches the address check off (tests, internal deployments); ``allowed_hosts`` exempts
    host names (exact, or ``.example.com`` / ``*.example.com`` for subdomains) and CIDRs. A host that does
    not resolve raises FetchError: the URL may work later, so it is not a refusal. Validation only: see the
    module docstring for why a fetch must use ``resolve_target``.
    """
    plan = _plan(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
    if isinstance(plan, Target) or plan.exempt:
        return
    try:
        infos = socket.getaddrinfo(plan.host, plan.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {plan.host!r}: {exc}") from exc
    _finish(plan, _addresses(infos))


async def check_url_async(
    url: str, *, allow_private: bool, allowed_hosts: Sequence[str], resolver: Resolver | None = None
) -> None:
    """check_url without blocking the event loop during name resolution."""
    plan = _plan(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
    if not isinstance(plan, Target) and not plan.exempt:
        _finish(plan, await _resolve(plan.host, plan.port, resolver or system_resolver))


async def resolve_target(
    url: str, *, allow_private: bool, allowed_hosts: Sequence[str], resolver: Resolver | None = None
) -> Target:
    """Resolve ``url``'s host once and check every address; the Target is what a connection must use.

    Exempt hosts (``allow_private``, allow-listed names) are resolved too, so that they can be pinned.
    Raises BlockedAddress like check_url, and FetchError when the name does not resolve.
    """
    plan = _plan(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
    if isinstance(plan, Target):
        return plan
    return _finish(plan, await _resolve(plan.host, plan.port, resolver or system_resolver))


async def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        return _unique(await resolver(host, port))
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host!r}: {exc}") from exc
