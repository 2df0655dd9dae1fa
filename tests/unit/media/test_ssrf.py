"""The SSRF guard: internal targets are refused, public ones pass; no real DNS lookups are made."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from imgaudit.errors import BlockedAddress, FetchError
from imgaudit.media.ssrf import IPAddress, Target, blocked_reason, check_url, check_url_async, resolve_target

Resolver = Callable[..., list[tuple[object, ...]]]


def _fake_dns(table: dict[str, list[str]]) -> Resolver:
    """A getaddrinfo answering from ``table``; unknown names fail like NXDOMAIN."""

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos: list[tuple[object, ...]] = []
        for address in table[host]:
            if ipaddress.ip_address(address).version == 6:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, 80, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 80)))
        return infos

    return getaddrinfo


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test resolves through this table, so nothing leaves the machine."""
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        _fake_dns(
            {
                "images.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
                "split.example.com": ["93.184.216.34", "10.1.2.3"],
                "internal.example.com": ["192.168.1.20"],
                "corp.example.evil": ["192.168.5.5"],
                "cgnat.example.com": ["100.64.3.4"],
                "mapped.example.com": ["::ffff:10.0.0.1"],
                "metadata.example.com": ["169.254.169.254"],
                "v6meta.example.com": ["fd00:ec2::254"],
            }
        ),
    )


BLOCKED = [
    "http://127.0.0.1/a.jpg",
    "http://127.1/a.jpg",
    "http://localhost/a.jpg",
    "http://img.localhost:8080/a.jpg",
    "http://10.0.0.5/a.jpg",
    "http://172.16.0.1/a.jpg",
    "http://172.31.255.255/a.jpg",
    "http://192.168.0.10/a.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::1]/a.jpg",
    "http://[::ffff:127.0.0.1]/a.jpg",
    "http://[::ffff:7f00:1]/a.jpg",
    "http://[fe80::1]/a.jpg",
    "http://[fc00::1]/a.jpg",
    "http://0.0.0.0/a.jpg",
    "http://[::]/a.jpg",
    "http://100.64.0.1/a.jpg",
    "http://224.0.0.1/a.jpg",
    "http://240.0.0.1/a.jpg",
    "http://2130706433/a.jpg",  # decimal 127.0.0.1
    "http://0x7f000001/a.jpg",  # hex
    "http://0177.0.0.1/a.jpg",  # octal
    "http://017700000001/a.jpg",  # octal, one number
    "http://[64:ff9b::a00:1]/a.jpg",  # NAT64 of 10.0.0.1
    "http://[2002:7f00:1::]/a.jpg",  # 6to4 of 127.0.0.1
    "https://user:pw@127.0.0.1:8443/a.jpg",
    "http://LOCALHOST./a.jpg",
    "http://internal.example.com/a.jpg",
    "http://split.example.com/a.jpg",  # one private record is enough
    "http://cgnat.example.com/a.jpg",
    "http://mapped.example.com/a.jpg",
    "http://metadata.example.com/a.jpg",
    "http://v6meta.example.com/a.jpg",
    # Numeric hosts are decided by the guard's WHATWG parser, never by a resolver:
    "http://127.000.000.001/a.jpg",  # leading zeros (octal)
    "http://0x7F.000.0x0.01/a.jpg",  # mixed hex, octal, decimal
    "http://0177.1./a.jpg",  # trailing dot
    "http://0251.0376.0251.0376/",  # 169.254.169.254 in octal
    "http://127\u30020\u30020\u30021/a.jpg",  # ideographic full stops (IDNA maps them to ".")
    "http://\uff11\uff12\uff17.0.0.1/a.jpg",  # full-width digits
    "http://%31%32%37.0.0.1/a.jpg",  # percent-encoded host
    "http://08.0.0.1/a.jpg",  # numeric but not valid octal: no address, refused
    "http://1.2.3.4.5/a.jpg",
    "http://4294967296/a.jpg",
    "http://999.1.1.1/a.jpg",
    "http://0x7g.1/a.jpg",  # last label numeric, so not a DNS name
]


@pytest.mark.parametrize("url", BLOCKED)
def test_internal_targets_are_refused(url: str) -> None:
    with pytest.raises(BlockedAddress, match="refusing"):
        check_url(url, allow_private=False, allowed_hosts=[])


@pytest.mark.parametrize("url", BLOCKED)
async def test_async_variant_agrees(url: str) -> None:
    with pytest.raises(BlockedAddress):
        await check_url_async(url, allow_private=False, allowed_hosts=[])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://images.example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://images.example.com/",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "/relative/a.jpg",
        "http:///a.jpg",
        "http://images.example.com\\@127.0.0.1/a.jpg",
        "http://images.example.com/a b.jpg",
        "http://images.example.com:99999/a.jpg",
    ],
)
def test_bad_schemes_and_malformed_urls_are_refused(url: str) -> None:
    # Even allow_private does not open other schemes.
    with pytest.raises(BlockedAddress):
        check_url(url, allow_private=True, allowed_hosts=[])


def test_public_hosts_pass() -> None:
    check_url("https://images.example.com/a.jpg", allow_private=False, allowed_hosts=[])
    check_url("http://93.184.216.34:8080/a.jpg", allow_private=False, allowed_hosts=[])
    check_url("http://[2606:2800:220:1:248:1893:25c8:1946]/a.jpg", allow_private=False, allowed_hosts=[])


async def test_public_hosts_pass_async() -> None:
    await check_url_async("https://images.example.com/a.jpg", allow_private=False, allowed_hosts=[])


@pytest.mark.parametrize("url", ["http://127.0.0.1/a.jpg", "http://internal.example.com/", "http://[::1]/"])
def test_allow_private_switches_the_address_check_off(url: str) -> None:
    check_url(url, allow_private=True, allowed_hosts=[])


def test_allowed_hosts_cidr_and_names() -> None:
    allowed = ["10.0.0.0/8", "internal.example.com", ".corp.example", "::1"]
    check_url("http://10.20.30.40/a.jpg", allow_private=False, allowed_hosts=allowed)
    check_url("http://[::ffff:10.1.1.1]/a.jpg", allow_private=False, allowed_hosts=allowed)
    check_url("http://internal.example.com/a.jpg", allow_private=False, allowed_hosts=allowed)
    check_url("http://img.corp.example/a.jpg", allow_private=False, allowed_hosts=allowed)  # no lookup
    check_url("http://[::1]/a.jpg", allow_private=False, allowed_hosts=allowed)
    check_url("http://split.example.com/a.jpg", allow_private=False, allowed_hosts=allowed)  # 10.1.2.3
    with pytest.raises(BlockedAddress):
        check_url("http://192.168.1.1/a.jpg", allow_private=False, allowed_hosts=allowed)
    with pytest.raises(BlockedAddress):
        check_url("http://corp.example.evil/a.jpg", allow_private=False, allowed_hosts=allowed)
    with pytest.raises(BlockedAddress):  # localhost also means ::1... and 127.0.0.1, which is not allowed
        check_url("http://localhost/a.jpg", allow_private=False, allowed_hosts=allowed)


def test_allowed_host_name_does_not_cover_other_names_resolving_alike() -> None:
    with pytest.raises(BlockedAddress):
        check_url("http://internal.example.com/", allow_private=False, allowed_hosts=["other.example.com"])


def test_unresolvable_host_is_a_fetch_error_not_a_refusal() -> None:
    with pytest.raises(FetchError, match="cannot resolve") as info:
        check_url("http://nxdomain.example.com/a.jpg", allow_private=False, allowed_hosts=[])
    assert not isinstance(info.value, BlockedAddress)


def test_message_names_the_reason() -> None:
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254 is cloud metadata"):
        check_url("http://metadata.example.com/", allow_private=False, allowed_hosts=[])
    with pytest.raises(BlockedAddress, match="loopback"):
        check_url("http://2130706433/", allow_private=False, allowed_hosts=[])


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("127.0.0.1", True),
        ("::ffff:192.168.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("100.127.255.255", True),
        ("198.18.0.1", True),  # benchmarking range
        ("255.255.255.255", True),
        ("ff02::1", True),
    ],
)
def test_blocked_reason(address: str, blocked: bool) -> None:
    assert (blocked_reason(ipaddress.ip_address(address)) is not None) is blocked


class _CountingResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress | str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


NUMERIC_TEST_NET = [
    "http://0xcb007107/",
    "http://3405803783/",
    "http://0313.0.0161.7/",
    "http://203.0.28935./",
]


@pytest.mark.parametrize("url", NUMERIC_TEST_NET)
async def test_numeric_hosts_are_parsed_by_the_guard_without_resolving(url: str) -> None:
    # 203.0.113.7 (a documentation address) spelled four ways; any lookup would fail the test.
    resolver = _CountingResolver({})
    target = await resolve_target(url, allow_private=True, allowed_hosts=[], resolver=resolver)
    assert target.addresses == (ipaddress.ip_address("203.0.113.7"),) and resolver.calls == []
    check_url(url, allow_private=False, allowed_hosts=["203.0.113.0/24"])
    with pytest.raises(BlockedAddress, match=r"-> 203\.0\.113\.7 is"):
        check_url(url, allow_private=False, allowed_hosts=[])


async def test_resolve_target_returns_the_checked_addresses() -> None:
    resolver = _CountingResolver({"cdn.test": ["203.0.113.7", "2001:db8::7", "203.0.113.7"]})
    target = await resolve_target(
        "https://cdn.test/a.jpg",
        allow_private=False,
        allowed_hosts=["203.0.113.0/24", "2001:db8::/32"],
        resolver=resolver,
    )
    assert target == Target(
        "cdn.test", 443, (ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7"))
    )
    assert resolver.calls == [("cdn.test", 443)]


async def test_resolve_target_resolves_exempt_names_too_so_they_can_be_pinned() -> None:
    resolver = _CountingResolver({"images.test": ["127.0.0.1"]})
    for options in (
        {"allow_private": True, "allowed_hosts": []},
        {"allow_private": False, "allowed_hosts": ["images.test"]},
    ):
        target = await resolve_target("http://images.test:8080/a.jpg", resolver=resolver, **options)  # type: ignore[arg-type]
        assert target.addresses == (ipaddress.ip_address("127.0.0.1"),) and target.port == 8080
    assert resolver.calls == [("images.test", 8080)] * 2
    with pytest.raises(BlockedAddress):
        await resolve_target("http://images.test/", allow_private=False, allowed_hosts=[], resolver=resolver)
    with pytest.raises(FetchError, match="cannot resolve"):
        await resolve_target("http://nx.test/", allow_private=True, allowed_hosts=[], resolver=resolver)


async def test_resolve_target_decides_literals_and_localhost_without_a_resolver() -> None:
    resolver = _CountingResolver({})
    target = await resolve_target("http://0x7f.1/", allow_private=True, allowed_hosts=[], resolver=resolver)
    assert target.addresses == (ipaddress.ip_address("127.0.0.1"),) and target.port == 80
    target = await resolve_target(
        "http://localhost/", allow_private=True, allowed_hosts=[], resolver=resolver
    )
    assert set(target.addresses) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    with pytest.raises(BlockedAddress):  # malformed numeric hosts are refused even with allow_private
        await resolve_target("http://08.0.0.1/", allow_private=True, allowed_hosts=[], resolver=resolver)
    assert resolver.calls == []
