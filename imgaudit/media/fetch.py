"""Download images over HTTP(S) without trusting the server.

Every hop of a redirect chain is resolved once, checked by the SSRF guard and pinned: the connection goes
to exactly the checked address (PinnedBackend), so DNS rebinding cannot redirect it. Bodies are read raw
(never content-decoded; an encoded reply is refused) and cut off at ``max_bytes`` counted on the wire, a
total deadline bounds servers that trickle bytes, the type is sniffed from the first bytes (never the URL
or Content-Type) and no body byte is quoted in an error. Only failures that can heal (5xx, 408, 429,
timeouts, connection errors) are retried, with exponential back-off; a rejected TLS certificate is not.
``fetch_many`` reports each result as it lands and can share a ByteBudget across the batch.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import os
import re
import ssl
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from imgaudit.config import FetchSettings
from imgaudit.errors import (
    EncodedBody,
    FetchError,
    FetchRefused,
    FetchTimeout,
    HTTPStatusError,
    MediaError,
    NotAnImage,
    OverBudget,
    SlowServer,
    TLSFailed,
    TooLarge,
)
from imgaudit.media.ssrf import Resolver, precheck, resolve_target, system_resolver

SNIFF_BYTES = 64
"""Bytes sniff_format looks at; enough for every signature it knows."""

MAX_RETRY_AFTER = 10.0
"""Longest wait honoured from a Retry-After header, so one server cannot stall a worker."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_DEFAULT_MAX_BYTES: int = FetchSettings.model_fields["max_bytes"].default
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,30}/[a-z0-9][a-z0-9!#$&^_.+-]{0,60}")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9._+-]{0,30}")
_MAX_SHOWN_URL = 300


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


class ByteBudget:
    """How many body bytes a whole batch may hold at once, shared by its downloads; thread-safe.

    Each download reserves its bytes chunk by chunk as they arrive (its Content-Length up front when one is
    declared); when a reservation would pass ``total`` the download stops and ends as OverBudget. A
    reservation made while nothing else is reserved (no other download, no unreleased result) always
    succeeds, each body still being capped at ``max_bytes``: the first reservation of an empty budget
    succeeds up to max_bytes, even for a body larger than the whole budget, so a batch always makes
    progress. A successful result keeps exactly ``len(result)`` bytes reserved until its owner calls
    ``release(len(result))``; failed downloads give their bytes back themselves.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a byte budget must be positive, not {total}")
        self.total = total
        self._in_flight = 0
        self._lock = threading.Lock()  # the pipeline releases from its decode threads

    @property
    def in_flight(self) -> int:
        """Bytes reserved and not yet released."""
        return self._in_flight

    def try_reserve(self, n: int, *, held: int = 0) -> bool:
        """Reserve ``n`` more bytes for a download already holding ``held``; False (nothing taken) if over."""
        if n < 0 or held < 0:
            raise ValueError(f"cannot reserve {n} bytes on top of {held}")
        with self._lock:
            others = self._in_flight - held
            if others > 0 and self._in_flight + n > self.total:
                return False
            self._in_flight += n
            return True

    def release(self, n: int) -> None:
        """Give back ``n`` bytes, e.g. a finished item's ``len(data)``; more than is reserved is a bug."""
        with self._lock:
            if not 0 <= n <= self._in_flight:
                raise ValueError(f"cannot release {n} bytes, {self._in_flight} are reserved")
            self._in_flight -= n


class _Reservation:
    """One download attempt's share of a ByteBudget."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    def grow_to(self, n: int, url: str) -> None:
        if n > self.held:
            if not self.budget.try_reserve(n - self.held, held=self.held):
                raise OverBudget(
                    f"byte budget {self.budget.total} spent ({self.budget.in_flight} in flight, "
                    f"{n} needed): {url}"
                )
            self.held = n

    def shrink_to(self, n: int) -> None:
        if n < self.held:
            self.budget.release(self.held - n)
            self.held = n


@dataclass(frozen=True, slots=True)
class _Pin:
    """The addresses one hop may connect to, for the host exactly as the connection pool names it."""

    host: str
    addresses: tuple[str, ...]


_PIN: ContextVar[_Pin | None] = ContextVar("imgaudit_fetch_pin", default=None)
"""Set by the fetcher around each hop; httpcore connects in the requesting task, so it sees its own pin."""


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the addresses the SSRF guard checked for the current hop, never resolving a name.

    The pool still names the origin by its host name, so TLS sends it as SNI and verifies the certificate
    against it, and the Host header is untouched; only the TCP connect goes to the pinned address. Without
    a pin for the host (a connection the fetcher did not check) it refuses instead of resolving.
    """

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.host != host or not pin.addresses:
            raise httpcore.ConnectError(f"refusing to connect to {host!r}: no address was checked for it")
        failure: Exception | None = None
        for address in pin.addresses:  # every one passed the guard; try them in the resolver's order
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for downloads")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request/response and error mapping) over a pool that uses PinnedBackend.

    httpx has no public knob for the network backend, so the pool it builds is replaced; the isinstance
    check makes an httpx that keeps its pool elsewhere fail loudly instead of silently not pinning.
    """

    def __init__(self, backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("this httpx version keeps its pool elsewhere; address pinning is impossible")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


class Fetcher:
    """Downloads image bytes with one shared connection pool; use as ``async with Fetcher(settings) as f``.

    ``resolver`` (default: the event loop's getaddrinfo) and ``network_backend`` (default: httpcore's AnyIO
    backend) are injectable so tests can script DNS and the network; whatever they are, every connection
    goes through PinnedBackend to an address the SSRF guard checked.
    """

    def __init__(
        self,
        settings: FetchSettings,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.settings = settings
        self._resolver: Resolver = resolver or system_resolver
        self._slots = asyncio.Semaphore(settings.concurrency)
        limits = httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        )
        backend = PinnedBackend(network_backend or httpcore.AnyIOBackend())
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.read_timeout,
                write=settings.read_timeout,
                pool=settings.total_timeout,
            ),
            headers={
                "User-Agent": settings.user_agent,
                "Accept": "image/avif,image/webp,image/png,image/jpeg,image/*;q=0.8",
                # Images are already compressed; an encoded reply is refused, never decoded (see _read_body).
                "Accept-Encoding": "identity",
            },
            follow_redirects=False,  # followed by hand so that every hop passes the SSRF guard
            trust_env=False,  # no proxy from the environment: the guard must see the real destination
            transport=_PinnedTransport(backend, limits),
            event_hooks={"response": [self._check_location]},
        )

    async def _check_location(self, response: httpx.Response) -> None:
        """A redirect's target passes the resolver-free checks before httpx parses it: httpx rejects some
        numeric spellings of internal addresses (``0177.0.0.2``) as a protocol error, which would be
        recorded as a retryable fetch failure instead of the refusal it is."""
        location = response.headers.get("location")
        if response.status_code in _REDIRECT_STATUSES and location:
            precheck(
                urljoin(str(response.request.url), location.strip()),
                allow_private=self.settings.allow_private,
                allowed_hosts=self.settings.allowed_hosts,
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

    async def fetch(
        self, url: str, *, budget: ByteBudget | None = None, failures: list[MediaError] | None = None
    ) -> bytes:
        """The image bytes at ``url`` (joined to ``cdn_base`` when relative); raises a MediaError subclass.

        Retryable failures are tried again up to ``retries`` times after ``backoff * 2**attempt`` seconds
        (or the server's Retry-After, capped at MAX_RETRY_AFTER, when longer); OverBudget is not, since only
        releasing bytes can cure it. A concurrency slot is held only while an attempt runs. With ``budget``
        the body's bytes stay reserved on success (see ByteBudget) and are given back on any failure.
        Each retried failure is appended to ``failures``, so a caller that gives up says why.
        """
        target = join_url(self.settings.cdn_base, url)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.retries + 1),
            retry=retry_if_exception(_heals),
            wait=self._retry_delay,
            # Recorded before the back-off sleep, so a batch that cuts this item while it waits says why.
            before_sleep=None if failures is None else functools.partial(_record_failure, failures),
            reraise=True,
        )
        return await retrying(self._reserved_attempt, target, budget)

    async def _reserved_attempt(self, target: str, budget: ByteBudget | None) -> bytes:
        """One attempt holding a concurrency slot; its budget reservation is given back on any failure
        (cancellation and bugs included), so the bytes never stay reserved."""
        reservation = _Reservation(budget) if budget is not None else None
        try:
            async with self._slots:
                return await self._attempt(target, reservation)
        except BaseException:
            if reservation is not None:
                reservation.shrink_to(0)
            raise

    async def fetch_many(
        self,
        urls: Sequence[str],
        on_result: Callable[[int, bytes | MediaError], None] | None = None,
        budget: ByteBudget | None = None,
        *,
        patience: float | None = None,
        patient: Collection[int] = (),
    ) -> list[bytes | MediaError]:
        """Fetch ``urls`` concurrently; results in input order, each failure as its exception object.

        At most ``concurrency`` downloads run at once however long the list is, and no failure escapes, so
        one bad URL never sinks the batch. ``on_result(index, result)`` is called on the event loop as soon
        as each download ends, so a caller can start decoding while slow servers still trickle; it must
        return quickly (hand real work to a thread), and an exception from it cancels the batch. ``budget``
        bounds the bytes held in flight: see ByteBudget; items refused by it come back as OverBudget.

        ``patience``: once all but a few stragglers (a tenth of the list, at least one) have ended, they get
        this many seconds more and are then cut off as SlowServer, so a slow server holds up only its own
        item, not the batch; indexes in ``patient`` (an item's last attempt) are never cut.
        """
        results: list[bytes | MediaError | None] = [None] * len(urls)
        failures: list[list[MediaError]] = [[] for _ in urls]

        async def one(index: int) -> None:
            result = await self._fetch_captured(urls[index], budget, failures[index])
            results[index] = result
            if on_result is not None:
                on_result(index, result)

        async with asyncio.TaskGroup() as group:
            tasks = {i: group.create_task(one(i)) for i in range(len(urls))}
            if patience is not None and len(urls) > 1:
                group.create_task(_cut_stragglers(tasks, patience, frozenset(patient)))
        out: list[bytes | MediaError] = []
        for i, r in enumerate(results):
            if r is None and tasks[i].cancelled():
                # Cut while waiting to retry: the failure it was retrying says more than "slow".
                r = (
                    failures[i][-1]
                    if failures[i]
                    else SlowServer(
                        f"still downloading {patience} s after the rest of its batch; tried again later"
                    )
                )
                if on_result is not None:
                    on_result(i, r)
            out.append(r if r is not None else FetchError("not attempted"))
        return out

    async def _fetch_captured(
        self, url: str, budget: ByteBudget | None, failures: list[MediaError] | None = None
    ) -> bytes | MediaError:
        try:
            return await self.fetch(url, budget=budget, failures=failures)
        except MediaError as exc:
            return exc
        except Exception as exc:  # a bug must not sink the batch; keep it visible as the cause
            error = FetchError(f"unexpected {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error

    def _retry_delay(self, state: RetryCallState) -> float:
        """``backoff * 2**attempt``, or the server's Retry-After (capped at MAX_RETRY_AFTER) when longer."""
        delay = self.settings.backoff * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
        return delay

    async def _attempt(self, url: str, reservation: _Reservation | None) -> bytes:
        """One try, bounded by total_timeout, with httpx errors mapped onto MediaError."""
        shown = _display(url)
        try:
            async with asyncio.timeout(self.settings.total_timeout):
                return await self._follow(url, reservation)
        except TimeoutError as exc:
            raise FetchTimeout(
                f"no complete answer within {self.settings.total_timeout:g} s: {shown}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise FetchTimeout(f"{type(exc).__name__} for {shown}") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.DecodingError) as exc:
            raise FetchRefused(f"{type(exc).__name__} for {shown}: {exc}") from exc
        except httpx.ConnectError as exc:
            cert = _cert_failure(exc)
            if cert is not None:
                detail = cert.verify_message or cert.reason or "verification failed"
                raise TLSFailed(f"TLS certificate rejected ({detail}): {shown}") from exc
            raise FetchError(f"ConnectError for {shown}: {exc}") from exc
        except httpx.ProtocolError as exc:  # h11's message quotes the server's bytes: keep them out
            raise FetchError(f"{type(exc).__name__} (malformed HTTP reply) for {shown}") from exc
        except httpx.HTTPError as exc:  # connection reset and other transport errors: may heal
            raise FetchError(f"{type(exc).__name__} for {shown}: {exc}") from exc

    async def _checked(self, url: str) -> tuple[httpx.URL, _Pin]:
        """Resolve and check one hop; the pin holds exactly the checked addresses.

        The guard sees the raw URL first (numeric hosts httpx would reject are refused as blocked_address),
        then httpx's normalised form, which is the host the pool connects to.
        """
        allow_private, allowed_hosts = self.settings.allow_private, self.settings.allowed_hosts
        precheck(url, allow_private=allow_private, allowed_hosts=allowed_hosts)
        request_url = httpx.URL(url)
        target = await resolve_target(
            str(request_url),
            allow_private=allow_private,
            allowed_hosts=allowed_hosts,
            resolver=self._resolver,
        )
        pin = _Pin(request_url.raw_host.decode("ascii"), tuple(str(ip) for ip in target.addresses))
        return request_url, pin

    async def _follow(self, url: str, reservation: _Reservation | None) -> bytes:
        """Follow redirects by hand: each hop is resolved, checked and pinned before connecting to it."""
        current = url
        for _ in range(self.settings.max_redirects + 1):
            request_url, pin = await self._checked(current)
            token = _PIN.set(pin)
            try:
                async with self._client.stream("GET", request_url) as response:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECT_STATUSES and location:
                        current = urljoin(str(request_url), location)  # a string, so the guard sees it first
                        continue
                    if not 200 <= response.status_code < 300:
                        raise HTTPStatusError(
                            response.status_code, parse_retry_after(response.headers.get("retry-after"))
                        )
                    return await self._read_body(response, _display(str(request_url)), reservation)
            finally:
                _PIN.reset(token)
        raise FetchRefused(f"more than {self.settings.max_redirects} redirects from {_display(url)}")

    async def _read_body(self, response: httpx.Response, url: str, reservation: _Reservation | None) -> bytes:
        """The raw body, never content-decoded, so max_bytes (and the budget) count bytes on the wire."""
        codings = [
            c.strip().lower() for v in response.headers.get_list("content-encoding") for c in v.split(",")
        ]
        refused = [c for c in codings if c not in ("", "identity")]
        if refused:  # before reading: a few KB of gzip-in-gzip would otherwise expand to gigabytes
            shown = ", ".join(_token(c) for c in refused[:3])
            raise EncodedBody(f"Content-Encoding {shown} refused (only identity is accepted): {url}")
        limit = self.settings.max_bytes
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit():
            if int(declared) > limit:
                raise TooLarge(f"Content-Length {int(declared)} exceeds max_bytes {limit}: {url}")
            if reservation is not None:
                reservation.grow_to(int(declared), url)
        content_type = _media_type(response.headers.get("content-type"))
        body = bytearray()
        sniffed = False
        async for chunk in response.aiter_raw():
            if len(body) + len(chunk) > limit:
                raise TooLarge(f"body exceeds max_bytes {limit}: {url}")
            body += chunk
            if reservation is not None:
                reservation.grow_to(len(body), url)
            if not sniffed and len(body) >= SNIFF_BYTES:
                _require_image(body, url, content_type)  # stop early instead of downloading a large non-image
                sniffed = True
        if not sniffed:
            _require_image(body, url, content_type)
        if reservation is not None:
            reservation.shrink_to(len(body))  # a success holds exactly len(result)
        return bytes(body)


def _heals(exc: BaseException) -> bool:
    """Worth another attempt: a retryable MediaError, except OverBudget (only released bytes cure it)."""
    return isinstance(exc, MediaError) and exc.retryable and not isinstance(exc, OverBudget)


def _record_failure(failures: list[MediaError], state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, MediaError):
        failures.append(exc)


def _require_image(body: bytearray, url: str, content_type: str) -> None:
    """Refuse non-images naming only facts we measured: no body byte reaches the message (or the store)."""
    if not body:
        raise NotAnImage(f"empty body (Content-Type {content_type}): {url}")
    if sniff_format(bytes(body[:SNIFF_BYTES])) is None:
        raise NotAnImage(
            f"not a supported image: no known signature in the first {min(len(body), SNIFF_BYTES)} bytes "
            f"(Content-Type {content_type}): {url}"
        )


def _media_type(value: str | None) -> str:
    """The Content-Type's type/subtype if well formed, else a placeholder: the header is the server's text."""
    if value is None:
        return "(none)"
    match = _MEDIA_TYPE.fullmatch(value.split(";", 1)[0].strip().lower())
    return match.group(0) if match else "(malformed)"


def _token(value: str) -> str:
    """A header token fit for a message: short and plain, else a placeholder."""
    return value if _TOKEN.fullmatch(value) else "(malformed)"


def _display(url: str) -> str:
    """A URL for a message, truncated: redirect targets come from the server."""
    return url if len(url) <= _MAX_SHOWN_URL else url[:_MAX_SHOWN_URL] + "..."


def _cert_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind a ConnectError, if that is what it was."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


async def _cut_stragglers(
    tasks: dict[int, asyncio.Task[None]], patience: float, patient: frozenset[int]
) -> None:
    """Wait until only stragglers are left, give them ``patience`` seconds, then cancel the impatient ones."""
    few = max(1, len(tasks) // 10)
    while True:
        running = [t for t in tasks.values() if not t.done()]
        if not running:
            return
        if len(running) <= few and len(running) < len(tasks):
            break
        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.wait(running, timeout=patience)
    for i, t in tasks.items():
        if not t.done() and i not in patient:
            t.cancel()
