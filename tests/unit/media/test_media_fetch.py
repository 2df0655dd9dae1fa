"""The downloader against a real HTTP server on 127.0.0.1 (never any other address)."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest
from local_server import MAX_BYTES, LocalServer, fetch_settings, serving, unique_key
from PIL import Image

from imgaudit.config import FetchSettings
from imgaudit.errors import (
    BlockedAddress,
    FetchError,
    FetchRefused,
    FetchTimeout,
    HTTPStatusError,
    NotAnImage,
    TooLarge,
)
from imgaudit.media.fetch import (
    Fetcher,
    join_url,
    parse_retry_after,
    read_local,
    sniff_format,
)


def _encode(fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, fmt, **params)
    return buffer.getvalue()


JPEG = _encode("JPEG")
PNG = _encode("PNG")
HTML = b"<!doctype html><html><body>" + b"not an image " * 20 + b"</body></html>"


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.paths: list[str] = []
        self.user_agents: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def hit(self, key: str) -> int:
        with self.lock:
            self.hits[key] += 1
            return self.hits[key]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, first: bytes, chunks: Iterator[bytes], pause: float = 0.0) -> None:
        """A close-delimited body (HTTP/1.0, no Content-Length), written piece by piece."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        try:
            self.wfile.write(first)
            self.wfile.flush()
            for chunk in chunks:
                time.sleep(pause)
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        key = query.get("key", "")
        with state.lock:
            state.paths.append(self.path)
            state.user_agents.append(self.headers.get("User-Agent", ""))
        route = parts.path
        if route == "/ok.jpg":
            self._send(200, JPEG, {"Content-Type": "text/plain"})  # the header is deliberately wrong
        elif route == "/ok.png":
            self._send(200, PNG)
        elif route == "/page.html":
            self._send(200, HTML, {"Content-Type": "image/jpeg"})
        elif route == "/empty":
            self._send(200)
        elif route == "/missing":
            state.hit(key)
            self._send(404, b"nope")
        elif route == "/flaky":
            failing = state.hit(key) <= int(query["fail"])
            self._send(500 if failing else 200, b"oops" if failing else JPEG)
        elif route == "/always500":
            state.hit(key)
            self._send(503, b"down")
        elif route == "/rate":
            if state.hit(key) == 1:
                self._send(429, b"slow down", {"Retry-After": query.get("after", "0")})
            else:
                self._send(200, JPEG)
        elif route == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(100 * 1024 * 1024))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(JPEG[:100])
        elif route == "/huge-stream":
            self._stream(JPEG[:100], (b"\0" * 8192 for _ in range(100)))
        elif route == "/html-stream":
            self._stream(HTML, (b"x" * 8192 for _ in range(100)))
        elif route == "/slow":
            self._stream(JPEG[:100], (b"\0" for _ in range(100)), pause=0.1)
        elif route == "/stall":
            self._stream(JPEG[:100], iter([b"\0"]), pause=3)
        elif route == "/redirect":
            self._send(302, b"", {"Location": query.get("to", "/ok.jpg")})
        elif route == "/loop":
            self._send(301, b"", {"Location": "/loop"})
        elif route == "/sleepy":
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            time.sleep(0.15)
            with state.lock:
                state.in_flight -= 1
            self._send(200, JPEG)
        else:
            self._send(404)


class _Server(LocalServer):
    def __init__(self) -> None:
        super().__init__(_Handler)
        self.state = _State()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    with serving(_Server()) as srv:
        yield srv


@pytest.fixture
def base(server: _Server) -> str:
    return server.base


def _settings(**overrides: Any) -> FetchSettings:
    return fetch_settings(**{"user_agent": "imgaudit-test/1.0", **overrides})


class _Recorder(httpcore.AsyncNetworkBackend):
    """Records every TCP connection the fetcher opens (host and port), then really connects."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connections: list[tuple[str, int]] = []

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        self.connections.append((host, port))
        return await self.inner.connect_tcp(host, port, timeout=timeout, **kwargs)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# --- pure helpers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "image_url", "expected"),
    [
        ("https://cdn.x/", "/a/b.jpg", "https://cdn.x/a/b.jpg"),
        ("https://cdn.x", "a/b.jpg", "https://cdn.x/a/b.jpg"),
        ("https://cdn.x/img/", "/a.jpg", "https://cdn.x/img/a.jpg"),
        ("https://cdn.x/", "https://other.y/a.jpg", "https://other.y/a.jpg"),
        ("", "http://other.y/a.jpg", "http://other.y/a.jpg"),
        ("http://cdn.x/", "//other.y/a.jpg", "http://other.y/a.jpg"),
        ("", "  https://other.y/a.jpg ", "https://other.y/a.jpg"),
    ],
)
def test_join_url(base_url: str, image_url: str, expected: str) -> None:
    assert join_url(base_url, image_url) == expected


def test_join_url_relative_without_base_is_a_permanent_fetch_error() -> None:
    with pytest.raises(FetchError, match="cdn_base") as info:
        join_url("", "/a/b.jpg")
    assert info.value.reason == "fetch_failed"
    assert not info.value.retryable


def test_sniff_format() -> None:
    images = {fmt: _encode(fmt.upper()) for fmt in ("jpeg", "png", "gif", "webp", "bmp", "tiff")}
    for fmt, data in images.items():
        assert sniff_format(data[:64]) == fmt
    assert sniff_format(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf") == "avif"
    assert sniff_format(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") == "heic"
    assert sniff_format(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2") is None  # an MP4
    assert sniff_format(b"BM is how this text starts") is None
    assert sniff_format(HTML) is None
    assert sniff_format(b"") is None
    assert sniff_format(b"\xff\xd8") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("soon", None), ("nan", None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    from email.utils import formatdate

    seconds = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert seconds is not None and 25 < seconds <= 31


def test_read_local(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(JPEG)
    assert read_local(path, max_bytes=MAX_BYTES) == JPEG
    assert read_local(str(path)) == JPEG

    big = tmp_path / "big.jpg"
    big.write_bytes(JPEG + b"\0" * MAX_BYTES)
    with pytest.raises(TooLarge):
        read_local(big, max_bytes=MAX_BYTES)
    with pytest.raises(FetchRefused, match="not a regular file"):
        read_local(tmp_path, max_bytes=MAX_BYTES)
    with pytest.raises(FetchRefused, match="no such file"):
        read_local(tmp_path / "missing.jpg", max_bytes=MAX_BYTES)


def test_read_local_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FetchRefused, match="not a regular file"):
        read_local(fifo, max_bytes=MAX_BYTES)


# --- downloads --------------------------------------------------------------------------------------------


async def test_fetch_jpeg_and_png_sniffed_not_trusting_headers(base: str, server: _Server) -> None:
    async with Fetcher(_settings()) as fetcher:
        assert await fetcher.fetch(f"{base}/ok.jpg") == JPEG
        assert await fetcher.fetch(f"{base}/ok.png") == PNG
    assert server.state.user_agents[-1] == "imgaudit-test/1.0"


async def test_relative_url_uses_cdn_base(base: str) -> None:
    async with Fetcher(_settings(cdn_base=base + "/")) as fetcher:
        assert await fetcher.fetch("/ok.jpg") == JPEG


async def test_html_is_not_an_image(base: str) -> None:
    async with Fetcher(_settings()) as fetcher:
        with pytest.raises(NotAnImage):
            await fetcher.fetch(f"{base}/page.html")
        with pytest.raises(NotAnImage):  # stops after the first bytes, long before max_bytes
            await fetcher.fetch(f"{base}/html-stream")
        with pytest.raises(NotAnImage, match="empty"):
            await fetcher.fetch(f"{base}/empty")


async def test_404_is_not_retried(base: str, server: _Server) -> None:
    key = unique_key()
    async with Fetcher(_settings(retries=3)) as fetcher:
        with pytest.raises(HTTPStatusError) as info:
            await fetcher.fetch(f"{base}/missing?key={key}")
    assert info.value.status == 404
    assert not info.value.retryable
    assert server.state.hits[key] == 1


async def test_500_then_ok_is_retried(base: str, server: _Server) -> None:
    key = unique_key()
    async with Fetcher(_settings(retries=2)) as fetcher:
        assert await fetcher.fetch(f"{base}/flaky?key={key}&fail=2") == JPEG
    assert server.state.hits[key] == 3


async def test_always_failing_gives_up_after_retries(base: str, server: _Server) -> None:
    key = unique_key()
    started = time.monotonic()
    async with Fetcher(_settings(retries=2, backoff=0.05)) as fetcher:
        with pytest.raises(HTTPStatusError) as info:
            await fetcher.fetch(f"{base}/always500?key={key}")
    assert info.value.status == 503 and info.value.retryable
    assert server.state.hits[key] == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff * 2**0 + backoff * 2**1


async def test_429_honours_retry_after(base: str, server: _Server) -> None:
    key = unique_key()
    started = time.monotonic()
    async with Fetcher(_settings(retries=1, backoff=0)) as fetcher:
        assert await fetcher.fetch(f"{base}/rate?key={key}&after=0.3") == JPEG
    assert time.monotonic() - started >= 0.3
    assert server.state.hits[key] == 2


async def test_connection_refused_is_a_retryable_fetch_error() -> None:
    import socket

    with socket.socket() as sock:  # a port that is certainly closed once this block ends
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Fetcher(_settings(retries=1)) as fetcher:
        with pytest.raises(FetchError) as info:
            await fetcher.fetch(f"http://127.0.0.1:{port}/ok.jpg")
    assert info.value.retryable


async def test_declared_too_large_is_refused_early(base: str) -> None:
    async with Fetcher(_settings()) as fetcher:
        with pytest.raises(TooLarge, match="Content-Length"):
            await fetcher.fetch(f"{base}/huge-declared")


async def test_streamed_too_large_is_cut_off(base: str) -> None:
    async with Fetcher(_settings()) as fetcher:
        with pytest.raises(TooLarge, match="exceeds max_bytes"):
            await fetcher.fetch(f"{base}/huge-stream")


async def test_slow_trickle_hits_the_total_deadline(base: str) -> None:
    started = time.monotonic()
    async with Fetcher(_settings(total_timeout=1, read_timeout=5, retries=0)) as fetcher:
        with pytest.raises(FetchTimeout) as info:
            await fetcher.fetch(f"{base}/slow")
    assert time.monotonic() - started < 2.5
    assert info.value.retryable


async def test_stalled_body_hits_the_read_timeout(base: str) -> None:
    started = time.monotonic()
    async with Fetcher(_settings(read_timeout=0.3, retries=0)) as fetcher:
        with pytest.raises(FetchTimeout):
            await fetcher.fetch(f"{base}/stall")
    assert time.monotonic() - started < 2


async def test_redirect_is_followed(base: str) -> None:
    async with Fetcher(_settings()) as fetcher:
        assert await fetcher.fetch(f"{base}/redirect") == JPEG
        assert await fetcher.fetch(f"{base}/redirect?to={base}/ok.png") == PNG


async def test_redirect_limit(base: str) -> None:
    async with Fetcher(_settings(max_redirects=3)) as fetcher:
        with pytest.raises(FetchRefused, match="more than 3 redirects"):
            await fetcher.fetch(f"{base}/loop")
    async with Fetcher(_settings(max_redirects=0)) as fetcher:
        with pytest.raises(FetchRefused):
            await fetcher.fetch(f"{base}/redirect")


async def test_ssrf_guard_runs_before_connecting(base: str, server: _Server) -> None:
    marker = unique_key()
    recorder = _Recorder()
    async with Fetcher(_settings(allow_private=False), network_backend=recorder) as fetcher:
        with pytest.raises(BlockedAddress, match="loopback"):
            await fetcher.fetch(f"{base}/ok.jpg?marker={marker}")
    assert recorder.connections == []
    assert not any(marker in path for path in server.state.paths)


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/x.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/ok.jpg",
        "http://167772161:{port}/ok.jpg",  # decimal 10.0.0.1
        "file:///etc/passwd",
    ],
)
async def test_redirect_to_internal_address_is_refused(base: str, server: _Server, target: str) -> None:
    port = server.server_address[1]
    recorder = _Recorder()
    settings = _settings(allow_private=False, allowed_hosts=["127.0.0.1"], retries=0)
    started = time.monotonic()
    async with Fetcher(settings, network_backend=recorder) as fetcher:
        assert await fetcher.fetch(f"{base}/ok.jpg") == JPEG  # the allow-listed first hop works
        with pytest.raises(BlockedAddress):
            await fetcher.fetch(f"{base}/redirect?to={target.format(port=port)}")
    assert time.monotonic() - started < 1  # refused, not a connect timeout
    assert set(recorder.connections) == {("127.0.0.1", port)}  # nothing but 127.0.0.1 was contacted


async def test_fetch_many_keeps_order_and_returns_errors(base: str) -> None:
    urls = [
        f"{base}/ok.jpg",
        f"{base}/missing?key={unique_key()}",
        f"{base}/page.html",
        f"{base}/ok.png",
        "/relative/without/base.jpg",
        f"{base}/huge-stream",
        "ftp://example.com/a.jpg",
        f"{base}/redirect",
    ]
    async with Fetcher(_settings(concurrency=3, retries=0)) as fetcher:
        results = await fetcher.fetch_many(urls)
    assert results[0] == JPEG
    assert isinstance(results[1], HTTPStatusError) and results[1].status == 404
    assert isinstance(results[2], NotAnImage)
    assert results[3] == PNG
    assert isinstance(results[4], FetchRefused)
    assert isinstance(results[5], TooLarge)
    assert isinstance(results[6], BlockedAddress)
    assert results[7] == JPEG
    async with Fetcher(_settings()) as fetcher:
        assert await fetcher.fetch_many([]) == []


async def test_fetch_many_bounds_concurrency(base: str, server: _Server) -> None:
    server.state.max_in_flight = 0
    started = time.monotonic()
    async with Fetcher(_settings(concurrency=2)) as fetcher:
        results = await fetcher.fetch_many([f"{base}/sleepy"] * 6)
    assert results == [JPEG] * 6
    assert server.state.max_in_flight == 2
    assert time.monotonic() - started >= 3 * 0.15
