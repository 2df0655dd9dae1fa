"""Hostile servers and hostile DNS against the downloader.

Every real connection goes to 127.0.0.1. Address pinning is shown with a scripted resolver and a fake
network backend that serves canned replies without touching the network; the "public" addresses they use
are documentation ranges (TEST-NET-3) made acceptable through ``allowed_hosts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest
from local_server import MAX_BYTES, LocalServer, fetch_settings, serving, unique_key
from PIL import Image

from imgaudit.errors import (
    BlockedAddress,
    EncodedBody,
    FetchError,
    MediaError,
    NotAnImage,
    OverBudget,
    TLSFailed,
)
from imgaudit.media.fetch import ByteBudget, Fetcher, PinnedBackend
from imgaudit.media.ssrf import IPAddress


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (20, 140, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEG = _jpeg()
SECRET = b"SECRET-7f3a-do-not-store"
HTML = b"<!doctype html><title>" + SECRET + b"</title>" + b"<p>hello</p>" * 20


BOMB_INNER = 128 << 20


@functools.cache
def _bomb() -> bytes:
    """gzip(gzip(zeros)): a few hundred bytes on the wire, BOMB_INNER bytes once fully decoded."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    block = bytes(1 << 20)
    inner = b"".join(packer.compress(block) for _ in range(BOMB_INNER >> 20)) + packer.flush()
    return gzip.compress(inner, 9)


# --- a local server ---------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.hits[query.get("key", "")] += 1
            self.server.hosts.append(self.headers.get("Host", ""))
        route = parts.path
        size = int(query.get("size", len(JPEG)))
        body = JPEG + b"\0" * max(0, size - len(JPEG))
        if route == "/bomb":
            self._send(200, _bomb(), [("Content-Type", "image/jpeg"), ("Content-Encoding", "gzip, gzip")])
        elif route == "/encoded":
            codings = query["ce"].split("|")  # several Content-Encoding header lines
            self._send(200, JPEG, [("Content-Encoding", c) for c in codings])
        elif route == "/img":
            self._send(200, body, [("Content-Type", "image/jpeg")])
        elif route == "/img-stream":  # HTTP/1.0 close-delimited: no Content-Length to reserve up front
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for start in range(0, len(body), 4096):
                    self.wfile.write(body[start : start + 4096])
                    self.wfile.flush()
        elif route == "/drip":
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(JPEG)
                for _ in range(int(float(query.get("secs", "1")) / 0.1)):
                    self.wfile.flush()
                    time.sleep(0.1)
                    self.wfile.write(b"\0")
        elif route == "/html":
            ctype = query.get("ct", "text/html; charset=utf-8; x=" + "A" * 500)
            self._send(200, HTML, [("Content-Type", ctype)])
        elif route == "/bad-header":  # h11 quotes a malformed header line in its error message
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n" + SECRET + b"\r\nContent-Length: 0\r\n\r\n")
            self.close_connection = True
        else:
            self._send(404, b"")


class _Server(LocalServer):
    def __init__(self) -> None:
        super().__init__(_Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    with serving(_Server()) as srv:
        yield srv


@pytest.fixture
def base(server: _Server) -> str:
    return server.base


# --- a scripted resolver and a fake network -----------------------------------------------------------------


class _ScriptedResolver:
    """Answers from a script: each name's answers are used in turn, the last one repeating."""

    def __init__(self, script: dict[str, list[list[str]]]) -> None:
        self.script = {host: list(answers) for host, answers in script.items()}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress | str]:
        self.calls.append((host, port))
        answers = self.script.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers.pop(0) if len(answers) > 1 else answers[0]


async def _no_resolver(host: str, port: int) -> Sequence[IPAddress | str]:
    raise AssertionError(f"the guard should have decided {host!r} without a resolver")


def _reply(status: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _FakeStream(httpcore.AsyncNetworkStream):
    def __init__(self, backend: _FakeNetwork, reply: bytes) -> None:
        self._backend = backend
        self._reply = reply
        self.request = bytearray()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        chunk, self._reply = self._reply[:max_bytes], self._reply[max_bytes:]
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.request += buffer

    async def aclose(self) -> None:
        pass

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        self._backend.sni.append(server_hostname)
        return self  # no real TLS: only the name it would be started with matters here

    def get_extra_info(self, info: str) -> Any:
        return None


class _FakeNetwork(httpcore.AsyncNetworkBackend):
    """Records every connection attempt and serves a canned reply per address; others are unreachable."""

    def __init__(self, replies: dict[str, bytes]) -> None:
        self.replies = replies
        self.connections: list[tuple[str, int]] = []
        self.streams: list[_FakeStream] = []
        self.sni: list[str | None] = []

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        self.connections.append((host, port))
        if host not in self.replies:
            raise httpcore.ConnectError(f"fake network: {host} unreachable")
        stream = _FakeStream(self, self.replies[host])
        self.streams.append(stream)
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def host_headers(self) -> list[str]:
        out = []
        for stream in self.streams:
            for line in bytes(stream.request).split(b"\r\n"):
                if line.lower().startswith(b"host:"):
                    out.append(line.split(b":", 1)[1].strip().decode())
        return out


OK_REPLY = _reply("200 OK", JPEG, [("Content-Type", "image/jpeg")])
TEST_NET = ["203.0.113.0/24"]  # documentation addresses, allowed so that they stand in for public ones


# --- 1. content-encoding bombs ----------------------------------------------------------------------------


async def test_gzip_of_gzip_bomb_is_refused_before_reading_and_memory_stays_flat(
    base: str, server: _Server
) -> None:
    assert len(_bomb()) < 4096  # a few KB on the wire ...
    key = unique_key()
    tracemalloc.start()
    try:
        async with Fetcher(fetch_settings()) as fetcher:
            with pytest.raises(EncodedBody) as info:
                await fetcher.fetch(f"{base}/bomb?key={key}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes: the body was decoded"  # ... 128 MiB decoded
    assert info.value.reason == "encoded_body" and not info.value.retryable
    assert "gzip" in info.value.message
    assert server.hits[key] == 1  # refused, not retried


@pytest.mark.parametrize(
    "codings", ["gzip", "GZIP", "x-gzip", "br", "deflate", "identity,%20gzip", "identity|br"]
)
async def test_any_content_encoding_is_refused(base: str, server: _Server, codings: str) -> None:
    key = unique_key()
    async with Fetcher(fetch_settings()) as fetcher:
        with pytest.raises(EncodedBody):
            await fetcher.fetch(f"{base}/encoded?key={key}&ce={codings}")
    assert server.hits[key] == 1


async def test_identity_encoding_is_accepted(base: str) -> None:
    async with Fetcher(fetch_settings()) as fetcher:
        assert await fetcher.fetch(f"{base}/encoded?ce=identity") == JPEG


# --- 2. DNS rebinding and address pinning -------------------------------------------------------------------


async def test_rebinding_name_is_fetched_from_the_checked_address() -> None:
    resolver = _ScriptedResolver({"rebind.test": [["203.0.113.7"], ["127.0.0.1"]]})
    network = _FakeNetwork({"203.0.113.7": OK_REPLY, "127.0.0.1": _reply("200 OK", b"internal secret")})
    settings = fetch_settings(allow_private=False, allowed_hosts=TEST_NET, retries=0)
    async with Fetcher(settings, resolver=resolver, network_backend=network) as fetcher:
        assert await fetcher.fetch("http://rebind.test/a.jpg") == JPEG
        assert network.connections == [("203.0.113.7", 80)]
        assert resolver.calls == [("rebind.test", 80)]  # once: the connection did not resolve again
        assert network.host_headers() == ["rebind.test"]

        with pytest.raises(BlockedAddress, match="loopback"):  # the second answer is checked, not used
            await fetcher.fetch("http://rebind.test/a.jpg")
    assert network.connections == [("203.0.113.7", 80)]
    assert resolver.calls == [("rebind.test", 80)] * 2


async def test_https_keeps_the_host_name_for_sni_and_host_header() -> None:
    resolver = _ScriptedResolver({"cdn.test": [["203.0.113.9"]]})
    network = _FakeNetwork({"203.0.113.9": OK_REPLY})
    settings = fetch_settings(allow_private=False, allowed_hosts=TEST_NET)
    async with Fetcher(settings, resolver=resolver, network_backend=network) as fetcher:
        assert await fetcher.fetch("https://cdn.test/a.jpg") == JPEG
    assert network.connections == [("203.0.113.9", 443)]
    assert network.sni == ["cdn.test"]
    assert network.host_headers() == ["cdn.test"]


async def test_every_redirect_hop_is_resolved_once_checked_and_pinned() -> None:
    resolver = _ScriptedResolver(
        {"a.test": [["203.0.113.1"]], "b.test": [["203.0.113.2"]], "c.test": [["10.0.0.8"]]}
    )
    network = _FakeNetwork(
        {
            "203.0.113.1": _reply("302 Found", headers=[("Location", "http://b.test:8080/x.jpg")]),
            "203.0.113.2": OK_REPLY,
            "10.0.0.8": OK_REPLY,
        }
    )
    settings = fetch_settings(allow_private=False, allowed_hosts=TEST_NET, retries=0)
    async with Fetcher(settings, resolver=resolver, network_backend=network) as fetcher:
        assert await fetcher.fetch("http://a.test/start") == JPEG
        assert resolver.calls == [("a.test", 80), ("b.test", 8080)]
        assert network.connections == [("203.0.113.1", 80), ("203.0.113.2", 8080)]
        assert network.host_headers() == ["a.test", "b.test:8080"]

        network.replies["203.0.113.1"] = _reply("302 Found", headers=[("Location", "http://c.test/x.jpg")])
        with pytest.raises(BlockedAddress, match="private"):
            await fetcher.fetch("http://a.test/start")
        assert ("10.0.0.8", 80) not in network.connections

        network.replies["203.0.113.1"] = _reply("302 Found", headers=[("Location", "http://0x7f.1/x.jpg")])
        with pytest.raises(BlockedAddress, match="loopback"):
            await fetcher.fetch("http://a.test/start")
    assert resolver.calls[-1] == ("a.test", 80)  # the numeric hop needed no resolver
    assert {host for host, _ in network.connections} == {"203.0.113.1", "203.0.113.2"}


async def test_one_internal_record_blocks_the_name_before_any_connection() -> None:
    resolver = _ScriptedResolver({"split.test": [["203.0.113.5", "127.0.0.1"]]})
    network = _FakeNetwork({"203.0.113.5": OK_REPLY})
    settings = fetch_settings(allow_private=False, allowed_hosts=TEST_NET)
    async with Fetcher(settings, resolver=resolver, network_backend=network) as fetcher:
        with pytest.raises(BlockedAddress):
            await fetcher.fetch("http://split.test/a.jpg")
    assert network.connections == []


async def test_unreachable_checked_address_falls_back_to_the_next_checked_one() -> None:
    resolver = _ScriptedResolver({"two.test": [["203.0.113.50", "203.0.113.51"]]})
    network = _FakeNetwork({"203.0.113.51": OK_REPLY})
    settings = fetch_settings(allow_private=False, allowed_hosts=TEST_NET, retries=0)
    async with Fetcher(settings, resolver=resolver, network_backend=network) as fetcher:
        assert await fetcher.fetch("http://two.test/a.jpg") == JPEG
    assert network.connections == [("203.0.113.50", 80), ("203.0.113.51", 80)]


async def test_pinned_backend_refuses_a_connection_nobody_checked() -> None:
    network = _FakeNetwork({"127.0.0.1": OK_REPLY})
    with pytest.raises(httpcore.ConnectError, match="no address was checked"):
        await PinnedBackend(network).connect_tcp("127.0.0.1", 80)
    assert network.connections == []


@pytest.mark.parametrize(
    "settings",
    [
        {"allow_private": True},
        {"allow_private": False, "allowed_hosts": ["images.test"]},
        {"allow_private": False, "allowed_hosts": ["127.0.0.1/32"]},
    ],
)
async def test_real_pinned_fetch_sends_the_original_host_name(
    server: _Server, settings: dict[str, Any]
) -> None:
    resolver = _ScriptedResolver({"images.test": [["127.0.0.1"]]})
    key = unique_key()
    async with Fetcher(fetch_settings(**settings), resolver=resolver) as fetcher:
        assert await fetcher.fetch(f"http://images.test:{server.port}/img?key={key}") == JPEG
    assert resolver.calls == [("images.test", server.port)]
    assert server.hits[key] == 1
    assert server.hosts[-1] == f"images.test:{server.port}"


async def test_real_fetch_of_a_name_resolving_to_loopback_is_refused(server: _Server) -> None:
    resolver = _ScriptedResolver({"images.test": [["127.0.0.1"]]})
    key = unique_key()
    async with Fetcher(fetch_settings(allow_private=False), resolver=resolver) as fetcher:
        with pytest.raises(BlockedAddress):
            await fetcher.fetch(f"http://images.test:{server.port}/img?key={key}")
    assert server.hits[key] == 0


# --- 3. non-image replies keep the server's bytes out of the error ------------------------------------------


async def test_not_an_image_message_holds_no_body_bytes(base: str) -> None:
    async with Fetcher(fetch_settings()) as fetcher:
        with pytest.raises(NotAnImage) as info:
            await fetcher.fetch(f"{base}/html")
        results = await fetcher.fetch_many([f"{base}/html?ct=%3Cscript%3Ealert(1)%3C/script%3E"])
    message = info.value.message
    assert SECRET.decode() not in message and "doctype" not in message.lower()
    assert "text/html" in message and "AAAA" not in message and len(message) < 300
    assert isinstance(results[0], NotAnImage)
    assert "<script>" not in results[0].message and "(malformed)" in results[0].message


async def test_protocol_error_message_holds_no_reply_bytes(base: str) -> None:
    async with Fetcher(fetch_settings(retries=0)) as fetcher:
        with pytest.raises(FetchError) as info:
            await fetcher.fetch(f"{base}/bad-header")
    assert SECRET.decode() not in info.value.message


# --- 4. TLS certificate failures are not retried ----------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        command += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
        command += ["-addext", "subjectAltName=IP:127.0.0.1"]
        done = subprocess.run(command, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            pytest.skip(f"openssl could not make a certificate: {done.stderr.decode(errors='replace')}")
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.publicunique_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


class _TLSServer:
    """Counts TCP connections and offers a self-signed certificate on each."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.settimeout(2)
            with contextlib.suppress(OSError), self.context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(_reply("200 OK", JPEG))  # never reached: the client rejects the certificate
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TLSServer]:
    srv = _TLSServer(*_self_signed(tmp_path_factory.mktemp("tls")))
    yield srv
    srv.close()


async def test_rejected_certificate_is_a_permanent_failure_tried_once(tls_server: _TLSServer) -> None:
    before = tls_server.accepted
    async with Fetcher(fetch_settings(retries=3, backoff=0.01)) as fetcher:
        with pytest.raises(TLSFailed) as info:
            await fetcher.fetch(f"https://127.0.0.1:{tls_server.port}/a.jpg")
    assert info.value.reason == "tls_failed" and not info.value.retryable
    assert "certificate" in info.value.message
    await asyncio.sleep(0.1)
    assert tls_server.accepted - before == 1


async def test_refused_connection_is_still_retried() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again at once: connecting is refused
    async with Fetcher(fetch_settings(retries=1, backoff=0.01)) as fetcher:
        with pytest.raises(FetchError) as info:
            await fetcher.fetch(f"http://127.0.0.1:{port}/a.jpg")
    assert not isinstance(info.value, TLSFailed) and info.value.retryable


# --- 5. odd spellings of internal addresses -----------------------------------------------------------------

ODD_SPELLINGS = [
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://2130706433/",
    "http://127.1/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0x7f.0.0.1/",
    "http://0x7F.000.0x0.01/",  # mixed hex, octal, decimal
    "http://0177.1./",  # trailing dot
    "http://2130706433./",
    "http://127.000.000.001/",  # leading zeros
    "http://127.0.0.01/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://0/",
    "http://0x0a.0x0.0x0.0x1/",  # 10.0.0.1
    "http://0251.0376.0251.0376/",  # 169.254.169.254 in octal
    "http://127\u30020\u30020\u30021/",  # ideographic full stops
    "http://\uff11\uff12\uff17.0.0.1/",  # full-width digits
    "http://%31%32%37.0.0.1/",  # percent-encoded
    "http://08.0.0.1/",  # not valid octal: numeric but no address
    "http://1.2.3.4.5/",
    "http://4294967296/",
    "http://999.1.1.1/",
]


@pytest.mark.parametrize("url", ODD_SPELLINGS)
async def test_odd_ipv4_spellings_are_blocked_not_fetch_failed(url: str) -> None:
    network = _FakeNetwork({})
    settings = fetch_settings(allow_private=False, retries=0)
    async with Fetcher(settings, resolver=_no_resolver, network_backend=network) as fetcher:
        results = await fetcher.fetch_many([url, url + "a.jpg"])
    for result in results:
        assert isinstance(result, BlockedAddress), result
        assert result.reason == "blocked_address"
    assert network.connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://0177.0.0.1/",
        "http://127.000.000.001/",
        "http://127.0.0.01/",
        "http://\uff11\uff12\uff17.0.0.1/",
    ],
)
async def test_spellings_httpx_rejects_are_still_blocked_by_the_guard(url: str) -> None:
    # Plain settings, no injected resolver: the guard must see these before httpx's URL parser rejects them.
    async with Fetcher(fetch_settings(allow_private=False, retries=0)) as fetcher:
        with pytest.raises(MediaError) as info:
            await fetcher.fetch(url)
    assert info.value.reason == "blocked_address", info.value


# --- 6. streaming results and the byte budget -------------------------------------------------------------


async def test_results_stream_as_they_finish_and_a_slow_server_holds_up_only_its_item(base: str) -> None:
    urls = [f"{base}/drip?secs=1.5"] + [f"{base}/img?n={i}" for i in range(5)]
    arrived: dict[int, float] = {}
    started = time.monotonic()

    def on_result(index: int, result: bytes | MediaError) -> None:
        assert index not in arrived
        arrived[index] = time.monotonic() - started

    async with Fetcher(fetch_settings(concurrency=2, read_timeout=1)) as fetcher:
        results = await fetcher.fetch_many(urls, on_result=on_result)
    assert sorted(arrived) == list(range(len(urls)))
    assert results[0] == JPEG + b"\0" * 15 and results[1:] == [JPEG] * 5
    fast = max(arrived[i] for i in range(1, len(urls)))
    assert fast < 0.7 < 1.4 < arrived[0], arrived  # the fast ones went through the other worker meanwhile


async def test_budget_smaller_than_the_batch_refuses_only_the_later_items(base: str, server: _Server) -> None:
    keys = [unique_key() for _ in range(4)]
    urls = [f"{base}/img?size=20000&key={k}" for k in keys]
    budget = ByteBudget(50_000)
    seen: list[int] = []
    async with Fetcher(fetch_settings(concurrency=1)) as fetcher:
        results = await fetcher.fetch_many(urls, on_result=lambda i, _: seen.append(i), budget=budget)
    assert [len(r) if isinstance(r, bytes) else type(r) for r in results] == [
        20000,
        20000,
        OverBudget,
        OverBudget,
    ]
    over = results[2]
    assert isinstance(over, OverBudget) and over.reason == "over_budget" and over.retryable
    assert seen == [0, 1, 2, 3]
    assert [server.hits[k] for k in keys] == [1, 1, 1, 1]  # OverBudget is left to the caller, not retried
    assert budget.in_flight == 40_000  # the two results hold exactly their bytes
    budget.release(40_000)
    assert budget.in_flight == 0


async def test_budget_with_concurrent_downloads_still_lets_some_through(base: str) -> None:
    urls = [f"{base}/img?size=20000&i={i}" for i in range(4)]
    budget = ByteBudget(50_000)
    async with Fetcher(fetch_settings(concurrency=4)) as fetcher:
        results = await fetcher.fetch_many(urls, budget=budget)
    kinds = Counter("ok" if isinstance(r, bytes) else type(r).__name__ for r in results)
    assert kinds == {"ok": 2, "OverBudget": 2}
    assert budget.in_flight == 40_000


async def test_releasing_as_results_arrive_lets_the_whole_batch_through(base: str) -> None:
    budget = ByteBudget(30_000)

    def release(index: int, result: bytes | MediaError) -> None:
        if isinstance(result, bytes):
            budget.release(len(result))  # what the pipeline does once an item is decoded

    async with Fetcher(fetch_settings(concurrency=1)) as fetcher:
        results = await fetcher.fetch_many([f"{base}/img?size=20000"] * 4, on_result=release, budget=budget)
    assert all(isinstance(r, bytes) and len(r) == 20000 for r in results)
    assert budget.in_flight == 0


async def test_budget_stops_a_stream_without_content_length_and_gives_its_bytes_back(base: str) -> None:
    budget = ByteBudget(30_000)
    async with Fetcher(fetch_settings(concurrency=1)) as fetcher:
        results = await fetcher.fetch_many(
            [f"{base}/img?size=20000", f"{base}/img-stream?size=20000"], budget=budget
        )
    assert isinstance(results[0], bytes) and isinstance(results[1], OverBudget)
    assert budget.in_flight == 20_000


async def test_an_empty_budget_always_admits_one_body(base: str) -> None:
    budget = ByteBudget(10_000)  # smaller than the body
    async with Fetcher(fetch_settings()) as fetcher:
        data = await fetcher.fetch(f"{base}/img-stream?size=20000", budget=budget)
        assert len(data) == 20000 and budget.in_flight == 20000
        with pytest.raises(OverBudget):  # the budget is no longer empty
            await fetcher.fetch(f"{base}/img?size=20000", budget=budget)
    assert budget.in_flight == 20000


async def test_failed_downloads_give_their_bytes_back(base: str) -> None:
    budget = ByteBudget(1_000_000)
    async with Fetcher(fetch_settings(retries=1)) as fetcher:
        results = await fetcher.fetch_many(
            [f"{base}/html", f"{base}/img-stream?size={MAX_BYTES + 10}", f"{base}/missing"], budget=budget
        )
    assert all(isinstance(r, MediaError) for r in results)
    assert budget.in_flight == 0


def test_byte_budget_rules() -> None:
    budget = ByteBudget(100)
    assert budget.try_reserve(500)  # empty: the first reservation always fits
    assert budget.try_reserve(100, held=500)  # still the only holder
    assert not budget.try_reserve(1)  # someone else holds bytes and the total is passed
    budget.release(600)
    assert budget.try_reserve(60) and budget.try_reserve(40) and not budget.try_reserve(1)
    with pytest.raises(ValueError):
        budget.release(101)
    with pytest.raises(ValueError):
        ByteBudget(0)
