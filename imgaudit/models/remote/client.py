"""The HTTP client every remote provider shares: POSTs JSON to one URL, carefully.

Connect / read / total deadlines; retries (tenacity) with exponential back-off on 429 / 408 / 5xx /
timeouts / connection errors, the server's Retry-After honoured up to ``max_retry_after``; a client-side
rate limit (``RateLimit``); a bound on requests in flight; usage counters. Failures are ``RemoteError``
(a ``ModelError``) with a reason and the server's own message; the API key is sent only in the
Authorization header and never appears in errors, logs, reprs or counters.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from PIL import Image
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from imgaudit.errors import ConfigError, RemoteBadResponse, RemoteError, RemoteRefused, RemoteTimeout
from imgaudit.media.fetch import parse_retry_after
from imgaudit.models.remote.rate_limit import RateLimit
from imgaudit.models.remote.usage import Prices, UsageCounters

log = logging.getLogger("imgaudit.models.remote")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How a remote endpoint is called. Field names match the settings groups (``settings.remote.*``)."""

    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    total_timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    max_retry_after: float = 30.0
    rate_limit: float = 2.0  # requests per second, 0: unlimited
    burst: int = 1
    concurrency: int = 4
    max_response_bytes: int = 16 * 1024 * 1024
    trust_env: bool = True  # HTTP(S)_PROXY / NO_PROXY from the environment (cloud APIs often need one)


def options_from_settings(group: Any) -> tuple[HttpOptions, Prices]:
    """The HTTP options and prices of a ``settings.remote.*`` group (same field names)."""
    http = HttpOptions(**{f.name: getattr(group, f.name) for f in fields(HttpOptions)})
    prices = Prices(**{f.name: getattr(group, f.name) for f in fields(Prices)})
    return http, prices


def resolve_api_key(api_key: str | None, api_key_env: str, *, what: str) -> str:
    """The key from settings, else from the environment variable they name; "" when neither is set (local
    OpenAI-compatible servers often need no key). A named but empty variable is a ConfigError."""
    if api_key:
        return api_key.strip()
    if api_key_env:
        value = os.environ.get(api_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"{what}: the environment variable {api_key_env} (api_key_env) is unset or empty"
            )
        return value
    return ""


def secret_text(value: Any) -> str | None:
    """Plain text of a pydantic SecretStr or a str (settings may hold either)."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


def public_url(url: str) -> str:
    """The URL without credentials or query, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def jpeg_data_uri(image: np.ndarray, max_side: int, quality: int) -> str:
    """An RGB uint8 image downscaled to ``max_side`` (never up) as a ``data:image/jpeg;base64`` URI:
    small requests are cheaper, faster and within providers' size limits."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB (H, W, 3) image, got shape {image.shape}")
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _server_message(response_body: bytes) -> str:
    """The error message a server put in its body (OpenAI's ``error.message``, DashScope's ``message``),
    else the start of the body."""
    text = response_body[:2000].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if data.get("message"):
            code = data.get("code")
            return (f"{code}: " if code else "") + str(data["message"])[:300]
    return text[:300]


def _heals(exc: BaseException) -> bool:
    return isinstance(exc, RemoteError) and exc.retryable


class RemoteEndpoint:
    """POSTs JSON to one URL with deadlines, retries, a rate limit and a concurrency bound. Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        api_key: str = "",
        options: HttpOptions | None = None,
        prices: Prices | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.strip():
            raise ConfigError(f"{name}: no endpoint URL configured")
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"{name}: the endpoint URL must be http(s), got {public_url(url)!r}")
        self.url = url.strip()
        self.name = name
        self.where = f"{name} ({public_url(self.url)})"
        self.options = o = options or HttpOptions()
        self.usage = UsageCounters(prices)
        self._rate = RateLimit(o.rate_limit, o.burst)
        self._slots = threading.BoundedSemaphore(o.concurrency)
        self._key = api_key
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                connect=o.connect_timeout, read=o.read_timeout, write=o.read_timeout, pool=o.total_timeout
            ),
            limits=httpx.Limits(max_connections=o.concurrency, max_keepalive_connections=o.concurrency),
            headers=headers,
            follow_redirects=False,  # an API does not redirect; following could send the key elsewhere
            trust_env=o.trust_env,
            transport=transport,
        )
        self._retrying = Retrying(
            stop=stop_after_attempt(o.retries + 1),
            retry=retry_if_exception(_heals),
            wait=self._retry_delay,
            before_sleep=self._before_retry,
            reraise=True,
        )

    def __repr__(self) -> str:
        return f"RemoteEndpoint({self.name!r}, {public_url(self.url)!r})"

    def close(self) -> None:
        self._client.close()
        self._rate.close()

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON object answered to ``body``, retrying what can heal; raises RemoteError subclasses."""
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            return self._retrying(self._send, payload)
        except RemoteError:
            self.usage.add(failures=1)
            raise

    def _send(self, payload: bytes) -> dict[str, Any]:
        self._rate.acquire()
        with self._slots:
            self.usage.add(requests=1)
            return self._attempt(payload)

    def _retry_delay(self, state: RetryCallState) -> float:
        """``backoff * 2**attempt``, or the server's Retry-After (capped at max_retry_after) when longer."""
        delay = self.options.backoff * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RemoteError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.options.max_retry_after))
        return delay

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s: %s (attempt %d of %d), retrying in %.2f s",
            self.name,
            exc.message if isinstance(exc, RemoteError) else exc,
            state.attempt_number,
            self.options.retries + 1,
            delay,
        )
        self.usage.add(retries=1)

    def _attempt(self, payload: bytes) -> dict[str, Any]:
        where = self.where
        deadline = time.monotonic() + self.options.total_timeout
        try:
            with self._client.stream("POST", self.url, content=payload) as response:
                body = self._read(response, deadline, where)
        except httpx.TimeoutException as exc:
            raise RemoteTimeout(f"{where}: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # connection refused / reset, protocol errors: may heal
            raise RemoteError(f"{where}: {type(exc).__name__}: {self._scrub(str(exc))}") from exc
        status = response.status_code
        if not 200 <= status < 300:
            message = f"{where}: HTTP {status}: {self._scrub(_server_message(body))}"
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if status >= 500 or status in (408, 429):
                raise RemoteError(message, status=status, retry_after=retry_after)
            raise RemoteRefused(message, status=status)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise RemoteBadResponse(
                f"{where}: the answer is not JSON: {self._scrub(repr(body[:120]))}", status=status
            ) from exc
        if not isinstance(data, dict):
            raise RemoteBadResponse(f"{where}: the answer is JSON but not an object", status=status)
        return data

    def _scrub(self, text: str) -> str:
        """Servers sometimes echo the key in auth errors; it never goes further than this."""
        return text.replace(self._key, "***") if self._key else text

    def _read(self, response: httpx.Response, deadline: float, where: str) -> bytes:
        """The body, cut off at max_response_bytes and at the total deadline (checked between chunks)."""
        limit = self.options.max_response_bytes
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise RemoteBadResponse(
                    f"{where}: answer larger than {limit} bytes", status=response.status_code
                )
            if time.monotonic() > deadline:
                raise RemoteTimeout(f"{where}: no complete answer within {self.options.total_timeout:g} s")
        return bytes(body)

    def map(self, fn: Callable[[T], Any], items: Sequence[T]) -> Iterator[Any]:
        """``fn`` over ``items`` on up to ``concurrency`` threads, results in order."""
        if len(items) <= 1 or self.options.concurrency == 1:
            return iter([fn(item) for item in items])
        pool = ThreadPoolExecutor(max_workers=min(self.options.concurrency, len(items)))
        try:
            return iter(list(pool.map(fn, items)))
        finally:  # after a failure, calls not yet started are dropped: no paying for a lost batch
            pool.shutdown(wait=True, cancel_futures=True)
