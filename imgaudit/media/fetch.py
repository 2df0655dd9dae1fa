"""Download images over HTTP(S) without trusting the server.

Every hop of a redirect chain passes the SSRF guard before any connection is made, bodies are streamed and
cut off at ``max_bytes``, a total deadline bounds servers that trickle bytes, the type is sniffed from the
first bytes (never the URL or Content-Type), and only failures that can heal (5xx, 408, 429, timeouts,
connection errors) are retried, with exponential back-off.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import stat
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import httpx

from imgaudit.config import FetchSettings
from imgaudit.errors import FetchError, FetchTimeout, HTTPStatusError, MediaError, NotAnImage, TooLarge
from imgaudit.media.ssrf import check_url_async

SNIFF_BYTES = 64
"""Bytes sniff_format looks at; enough for every signature it knows."""

MAX_RETRY_AFTER = 10.0
"""Longest wait honoured from a Retry-After header, so one server cannot stall a worker."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_DEFAULT_MAX_BYTES: int = FetchSettings.model_fields["max_bytes"].default


class FetchRefused(FetchError):
    """The download cannot succeed by retrying (bad URL, too many redirects, not a regular file)."""

    retryable = False


def join_url(cdn_base: str, image_url: str) -> str:
    """Absolute URLs unchanged; relative ones appended to ``cdn_base`` with exactly one slash between.

    Plain concatenation (not RFC 3986 resolution) so a base path such as ``https://cdn/img/`` is kept for
    ``/a.jpg``. A protocol-relative ``//host/a.jpg`` takes the base's scheme, else https.
    """
    url = image_url.strip()
    if not url:
        raise FetchRefused("empty image URL")
    if url.startswith("//"):
        scheme = urlsplit(cdn_base).scheme or "https"
        return f"{scheme}:{url}"
    if urlsplit(url).scheme:
        return url  # absolute; a scheme other than http(s) is refused later by the SSRF guard
    if not cdn_base.strip():
        raise FetchRefused(f"relative image URL {url!r} and no fetch.cdn_base configured")
    return cdn_base.strip().rstrip("/") + "/" + url.lstrip("/")


def sniff_format(head: bytes) -> str | None:
    """The image format named by the magic bytes at the start of ``head``, or None.

    Returns one of jpeg, png (APNG included), gif, webp, bmp, tiff, avif, heic.
    """
    h = bytes(head[:SNIFF_BYTES])
    if h.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if h.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return "webp"
    if h[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    # "BM" alone is too weak (text starts with it); also require a known DIB header size.
    if h[:2] == b"BM" and len(h) >= 18 and int.from_bytes(h[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if h[4:8] == b"ftyp" and len(h) >= 12:
        box_end = min(int.from_bytes(h[:4], "big"), len(h))
        brands = {h[8:12]} | {h[i : i + 4] for i in range(16, box_end - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIC_BRANDS:
            return "heic"
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN check


def read_local(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> bytes:
    """Read a local image file, refusing non-regular files (FIFOs, devices, directories) and big files.

    The checks use ``fstat`` on the opened descriptor (no race with a swapped path) and the read stops one
    byte past the limit, so a file that grows after the check is still refused.
    """
    limit = _DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)  # FIFOs must not block
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise FetchRefused(f"no such file: {os.fspath(path)}") from exc
    except OSError as exc:
        raise FetchRefused(f"cannot open {os.fspath(path)}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchRefused(f"not a regular file: {os.fspath(path)}")
        if info.st_size > limit:
            raise TooLarge(f"{os.fspath(path)} is {info.st_size} bytes, more than max_bytes {limit}")
        data = bytearray()
        while len(data) <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise TooLarge(f"{os.fspath(path)} grew past max_bytes {limit} while reading")
        return bytes(data)
    except OSError as exc:
        raise FetchError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


class Fetcher:
    """Downloads image bytes with one shared connection pool; use as ``async with Fetcher(settings) as f``."""

    def __init__(self, settings: FetchSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.total_timeout,
            ),
            limits=httpx.Limits(
                max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
            ),
            headers={
                "User-Agent": settings.user_agent,
                "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8",
                # Images are already compressed; refusing gzip also avoids compression bombs.
                "Accept-Encoding": "identity",
            },
            follow_redirects=False,  # followed by hand so that every hop passes the SSRF guard
            trust_env=False,  # no proxy from the environment: the guard must see the real destination
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The image bytes at ``url`` (joined to ``cdn_base`` when relative); raises a MediaError subclass.

        Retryable failures are tried again up to ``retries`` times after ``backoff * 2**attempt`` seconds
        (or the server's Retry-After, capped at MAX_RETRY_AFTER, when longer). A concurrency slot is held
        only while an attempt runs, not while waiting to retry.
        """
        target = join_url(self.settings.cdn_base, url)
        attempt = 0
        while True:
            try:
                async with self._slots:
                    return await self._attempt(target)
            except MediaError as exc:
                if not exc.retryable or attempt >= self.settings.retries:
                    raise
                delay = self._retry_delay(exc, attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def fetch_many(self, urls: Sequence[str]) -> list[bytes | MediaError]:
        """Fetch ``urls`` concurrently; results in input order, each failure as its exception object.

        At most ``concurrency`` workers exist however long the list is, and no failure escapes, so one bad
        URL never sinks the batch.
        """
        results: list[bytes | MediaError | None] = [None] * len(urls)
        pending = iter(range(len(urls)))

        async def worker() -> None:
            for index in pending:  # shared iterator: each index is taken by exactly one worker
                results[index] = await self._fetch_captured(urls[index])

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.settings.concurrency, len(urls))):
                group.create_task(worker())
        return [r if r is not None else FetchError("not attempted") for r in results]

    async def _fetch_captured(self, url: str) -> bytes | MediaError:
        try:
            return await self.fetch(url)
        except MediaError as exc:
            return exc
        except Exception as exc:  # a bug must not sink the batch; keep it visible as the cause
            error = FetchError(f"unexpected {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error

    def _retry_delay(self, exc: MediaError, attempt: int) -> float:
        delay = self.settings.backoff * 2**attempt
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
        return delay

    async def _attempt(self, url: str) -> bytes:
        """One try, bounded by total_timeout, with httpx errors mapped onto MediaError."""
        try:
            async with asyncio.timeout(self.settings.total_timeout):
                return await self._follow(url)
        except TimeoutError as exc:
            raise FetchTimeout(f"no complete answer within {self.settings.total_timeout:g} s: {url}") from exc
        except httpx.TimeoutException as exc:
            raise FetchTimeout(f"{type(exc).__name__} for {url}") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.DecodingError) as exc:
            raise FetchRefused(f"{type(exc).__name__} for {url}: {exc}") from exc
        except httpx.HTTPError as exc:  # connection refused/reset, protocol errors: may heal
            raise FetchError(f"{type(exc).__name__} for {url}: {exc}") from exc

    async def _follow(self, url: str) -> bytes:
        """Follow redirects by hand, running the SSRF guard on each target before connecting to it."""
        current = httpx.URL(url)
        for _ in range(self.settings.max_redirects + 1):
            await check_url_async(
                str(current),
                allow_private=self.settings.allow_private,
                allowed_hosts=self.settings.allowed_hosts,
            )
            async with self._client.stream("GET", current) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    current = current.join(location)
                    continue
                if not 200 <= response.status_code < 300:
                    error = HTTPStatusError(response.status_code)
                    error.retry_after = parse_retry_after(response.headers.get("retry-after"))  # type: ignore[attr-defined]
                    raise error
                return await self._read_body(response, str(current))
        raise FetchRefused(f"more than {self.settings.max_redirects} redirects from {url}")

    async def _read_body(self, response: httpx.Response, url: str) -> bytes:
        limit = self.settings.max_bytes
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"Content-Length {declared} exceeds max_bytes {limit}: {url}")
        body = bytearray()
        sniffed = False
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise TooLarge(f"body exceeds max_bytes {limit}: {url}")
            if not sniffed and len(body) >= SNIFF_BYTES:
                _require_image(body, url)  # stop early instead of downloading a large non-image
                sniffed = True
        if not sniffed:
            _require_image(body, url)
        return bytes(body)


def _require_image(body: bytearray, url: str) -> None:
    if not body:
        raise NotAnImage(f"empty body: {url}")
    if sniff_format(bytes(body[:SNIFF_BYTES])) is None:
        raise NotAnImage(f"not a supported image (starts {bytes(body[:16])!r}): {url}")
