"""The SSRF guard: internal targets are refused, public ones pass; no real DNS lookups are made."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from imgaudit.errors import BlockedAddress, FetchError
from imgaudit.media.ssrf import blocked_reason, check_url, check_url_async

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
