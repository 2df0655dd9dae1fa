"""Remote models, for teams that already pay for cloud models. Off by default; the user configures every
endpoint URL (nothing here knows a provider's host).

- ``RemoteCaptioner``: a short Chinese + English description of an image from an OpenAI-compatible vision
  chat endpoint (``POST {base_url}/chat/completions``, the image inlined as a ``data:image/jpeg`` URI).
- ``RemoteEmbedder``: image and text embeddings from a DashScope-style multimodal embedding endpoint
  (``POST {url}`` with ``{"model", "input": {"contents": [{"text"} | {"image"}]}}``), usable wherever a
  ``ClipEncoder`` is (``encode_images``, ``encode_texts``, ``dim``, ``model_id``).

Both share one careful HTTP client: connect / read / total deadlines, retries with exponential back-off on
429 / 408 / 5xx / timeouts / connection errors (Retry-After honoured up to a cap), a thread-safe token
bucket for requests per second, a bound on requests in flight, and counters of requests, failures,
retries, images, tokens and estimated cost. Failures are ``RemoteError`` (a ``ModelError``) with a reason
and the server's own message; the API key is sent only in the Authorization header and never appears in
errors, logs, reprs or counters.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
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

from imgaudit.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CAPTION_PROMPT = (
    "请用一句简短的中文描述这张商品图片（商品是什么、颜色、材质，以及图中可见的文字），"
    "然后换行，用一句简短的英文写同样的描述。只输出这两行。\n"
    "Describe this product image in one short Chinese sentence, then on a new line in one short English "
    "sentence: what the item is, its colour and material, and any visible text. Output only those two lines."
)


class RemoteError(ModelError):
    """The remote model service failed."""

    reason = "remote"
    retryable = True

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable


class RemoteTimeout(RemoteError):
    """The remote model service was too slow."""

    reason = "remote_timeout"


class RemoteRefused(RemoteError):
    """The remote model service refused the request (bad request, key, quota or model name)."""

    reason = "remote_refused"
    retryable = False


class RemoteBadResponse(RemoteError):
    """The remote model service answered with something that is not the expected JSON."""

    reason = "remote_bad_response"
    retryable = False


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


@dataclass(frozen=True, slots=True)
class Prices:
    """Per-unit prices for the estimated cost, in whatever currency the provider bills."""

    per_1k_input_tokens: float = 0.0
    per_1k_output_tokens: float = 0.0
    per_image: float = 0.0


class TokenBucket:
    """Client-side rate limit: ``rate`` requests per second on average, up to ``burst`` at once.

    Thread-safe. Each caller reserves its slot under the lock (the bucket may go negative) and sleeps
    outside it, so concurrent callers are spaced out in arrival order instead of all waking together.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds waited."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            self._sleep(wait)
        return wait


class UsageCounters:
    """What an endpoint has cost so far; thread-safe. ``as_dict`` is what reports and the CLI show.

    ``requests`` counts HTTP requests sent (retries included, as providers count them), ``retries`` the
    extra attempts, ``failures`` the calls that failed for good, ``images`` / ``texts`` the inputs of
    successful calls. Tokens come from the server's ``usage`` when it reports them.
    """

    _FIELDS = ("requests", "retries", "failures", "images", "texts", "input_tokens", "output_tokens")

    def __init__(self, prices: Prices | None = None) -> None:
        self.prices = prices or Prices()
        self._counts = dict.fromkeys(self._FIELDS, 0)
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] += int(value)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = dict(self._counts)
        p = self.prices
        cost = (
            out["input_tokens"] / 1000 * p.per_1k_input_tokens
            + out["output_tokens"] / 1000 * p.per_1k_output_tokens
            + out["images"] * p.per_image
        )
        out["estimated_cost"] = round(cost, 6)
        return out


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


def _secret(value: Any) -> str | None:
    """Plain text of a pydantic SecretStr or a str (settings may hold either)."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


def _public_url(url: str) -> str:
    """The URL without credentials or query, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if seconds == seconds else None


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
            raise ConfigError(f"{name}: the endpoint URL must be http(s), got {_public_url(url)!r}")
        self.url = url.strip()
        self.name = name
        self.options = o = options or HttpOptions()
        self.usage = UsageCounters(prices)
        self._bucket = TokenBucket(o.rate_limit, o.burst)
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

    def __repr__(self) -> str:
        return f"RemoteEndpoint({self.name!r}, {_public_url(self.url)!r})"

    def close(self) -> None:
        self._client.close()

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON object answered to ``body``, retrying what can heal; raises RemoteError subclasses."""
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            self._bucket.acquire()
            try:
                with self._slots:
                    self.usage.add(requests=1)
                    return self._attempt(payload)
            except RemoteError as exc:
                if not exc.retryable or attempt >= self.options.retries:
                    self.usage.add(failures=1)
                    raise
                delay = self._retry_delay(exc, attempt)
                log.warning(
                    "%s: %s (attempt %d of %d), retrying in %.2f s",
                    self.name,
                    exc.message,
                    attempt + 1,
                    self.options.retries + 1,
                    delay,
                )
            attempt += 1
            self.usage.add(retries=1)
            time.sleep(delay)

    def _retry_delay(self, exc: RemoteError, attempt: int) -> float:
        delay = self.options.backoff * 2**attempt
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.options.max_retry_after))
        return delay

    def _attempt(self, payload: bytes) -> dict[str, Any]:
        where = f"{self.name} ({_public_url(self.url)})"
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


def record_usage(endpoint: RemoteEndpoint, data: dict[str, Any], **counts: int) -> None:
    """Add a successful call's inputs and the tokens the server reports in ``usage`` (OpenAI's
    prompt/completion_tokens or DashScope's input/output_tokens; image_tokens count as input)."""
    usage = data.get("usage")
    if isinstance(usage, dict):

        def number(*keys: str) -> int:
            for key in keys:
                value = usage.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return int(value)
            return 0

        counts["input_tokens"] = number("input_tokens", "prompt_tokens") + number("image_tokens")
        counts["output_tokens"] = number("output_tokens", "completion_tokens")
    endpoint.usage.add(**counts)


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


def _options_from(group: Any) -> tuple[HttpOptions, Prices]:
    http = HttpOptions(**{f.name: getattr(group, f.name) for f in fields(HttpOptions)})
    prices = Prices(**{f.name: getattr(group, f.name) for f in fields(Prices)})
    return http, prices


class RemoteCaptioner:
    """A short Chinese + English description per image from an OpenAI-compatible vision chat endpoint."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        api_key_env: str = "",
        prompt: str = DEFAULT_CAPTION_PROMPT,
        max_tokens: int = 200,
        temperature: float = 0.0,
        max_chars: int = 400,
        image_side: int = 768,
        jpeg_quality: int = 85,
        detail: str = "",
        options: HttpOptions | None = None,
        prices: Prices | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not model.strip():
            raise ConfigError("remote captioner: no model configured")
        key = resolve_api_key(api_key, api_key_env, what="remote captioner")
        self.endpoint = RemoteEndpoint(
            base_url.strip().rstrip("/") + "/chat/completions",
            name="remote captioner",
            api_key=key,
            options=options,
            prices=prices,
            transport=transport,
        )
        self.model = model.strip()
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_chars = max_chars
        self.image_side = image_side
        self.jpeg_quality = jpeg_quality
        self.detail = detail

    @classmethod
    def from_settings(cls, group: Any, **kwargs: Any) -> RemoteCaptioner:
        """From a ``RemoteCaptionerSettings`` group (``settings.remote.captioner``)."""
        options, prices = _options_from(group)
        return cls(
            base_url=group.base_url,
            model=group.model,
            api_key=_secret(group.api_key),
            api_key_env=group.api_key_env,
            prompt=group.prompt or DEFAULT_CAPTION_PROMPT,
            max_tokens=group.max_tokens,
            temperature=group.temperature,
            max_chars=group.max_chars,
            image_side=group.image_side,
            jpeg_quality=group.jpeg_quality,
            detail=group.detail,
            options=options,
            prices=prices,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"RemoteCaptioner(model={self.model!r}, endpoint={self.endpoint!r})"

    @property
    def usage(self) -> dict[str, float]:
        return self.endpoint.usage.as_dict()

    def close(self) -> None:
        self.endpoint.close()

    def request_body(self, image: np.ndarray) -> dict[str, Any]:
        image_url: dict[str, str] = {"url": jpeg_data_uri(image, self.image_side, self.jpeg_quality)}
        if self.detail:
            image_url["detail"] = self.detail
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.prompt},
                        {"type": "image_url", "image_url": image_url},
                    ],
                }
            ],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def caption(self, image: np.ndarray) -> str:
        """The description, whitespace-trimmed and at most ``max_chars`` characters."""
        data = self.endpoint.post(self.request_body(image))
        text = self._parse(data)
        record_usage(self.endpoint, data, images=1)
        return text

    def caption_many(self, images: Sequence[np.ndarray]) -> list[str | RemoteError]:
        """One description per image, concurrently; a failure stays in its slot as the exception, so one
        bad image never sinks the batch."""

        def one(image: np.ndarray) -> str | RemoteError:
            try:
                return self.caption(image)
            except RemoteError as exc:
                return exc

        return list(self.endpoint.map(one, images))

    def _parse(self, data: dict[str, Any]) -> str:
        where = f"{self.endpoint.name} ({_public_url(self.endpoint.url)})"
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise RemoteBadResponse(f"{where}: no choices[0].message.content in the answer") from exc
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            content = ""
        lines = [" ".join(line.split()) for line in content.strip().splitlines()]
        text = "\n".join(line for line in lines if line)
        if not text:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            raise RemoteBadResponse(f"{where}: empty description (finish_reason {reason!r})")
        return text[: self.max_chars].rstrip()


class RemoteEmbedder:
    """Image and text embeddings from a DashScope-style multimodal embedding endpoint, with the
    ``ClipEncoder`` interface. One content per request by default: some models accept only one input per
    call (or fuse several into one vector); raise ``batch_size`` where the provider embeds each separately.
    """

    def __init__(
        self,
        *,
        url: str,
        model: str,
        dim: int = 1024,
        api_key: str | None = None,
        api_key_env: str = "",
        batch_size: int = 1,
        image_side: int = 512,
        jpeg_quality: int = 90,
        parameters: dict[str, Any] | None = None,
        options: HttpOptions | None = None,
        prices: Prices | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not model.strip():
            raise ConfigError("remote embedder: no model configured")
        if dim < 1:
            raise ConfigError("remote embedder: dim must be positive")
        key = resolve_api_key(api_key, api_key_env, what="remote embedder")
        self.endpoint = RemoteEndpoint(
            url, name="remote embedder", api_key=key, options=options, prices=prices, transport=transport
        )
        self.model = model.strip()
        self._dim = int(dim)
        self.batch_size = max(1, int(batch_size))
        self.image_side = image_side
        self.jpeg_quality = jpeg_quality
        self.parameters = dict(parameters or {})

    @classmethod
    def from_settings(cls, group: Any, **kwargs: Any) -> RemoteEmbedder:
        """From a ``RemoteEmbedderSettings`` group (``settings.remote.embedder``)."""
        options, prices = _options_from(group)
        return cls(
            url=group.url,
            model=group.model,
            dim=group.dim,
            api_key=_secret(group.api_key),
            api_key_env=group.api_key_env,
            batch_size=group.batch_size,
            image_side=group.image_side,
            jpeg_quality=group.jpeg_quality,
            parameters=group.parameters,
            options=options,
            prices=prices,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"RemoteEmbedder(model={self.model!r}, dim={self._dim}, endpoint={self.endpoint!r})"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        """Names the embedding space (model, size, endpoint, parameters; never the key)."""
        spec = json.dumps(
            [_public_url(self.endpoint.url), self.model, self._dim, self.parameters], sort_keys=True
        )
        digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
        return f"remote/{self.model[:60]}/{self._dim}/{digest}"

    @property
    def usage(self) -> dict[str, float]:
        return self.endpoint.usage.as_dict()

    def close(self) -> None:
        self.endpoint.close()

    def request_body(self, contents: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": {"contents": contents}}
        if self.parameters:
            body["parameters"] = self.parameters
        return body

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(images), dim)`` float32, L2-normalised."""
        contents = [{"image": jpeg_data_uri(im, self.image_side, self.jpeg_quality)} for im in images]
        return self._encode(contents, "images")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32, L2-normalised."""
        return self._encode([{"text": t} for t in texts], "texts")

    def _encode(self, contents: list[dict[str, str]], kind: str) -> np.ndarray:
        if not contents:
            return np.zeros((0, self._dim), np.float32)
        chunks = [contents[i : i + self.batch_size] for i in range(0, len(contents), self.batch_size)]

        def one(chunk: list[dict[str, str]]) -> np.ndarray:
            data = self.endpoint.post(self.request_body(chunk))
            vectors = self._parse(data, len(chunk))
            record_usage(self.endpoint, data, **{kind: len(chunk)})
            return vectors

        out = np.concatenate(list(self.endpoint.map(one, chunks))).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _parse(self, data: dict[str, Any], expected: int) -> np.ndarray:
        where = f"{self.endpoint.name} ({_public_url(self.endpoint.url)})"
        try:
            items = data["output"]["embeddings"]
            if not isinstance(items, list):
                raise TypeError
            pairs = [(int(item.get("index", i)), item["embedding"]) for i, item in enumerate(items)]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RemoteBadResponse(f"{where}: no output.embeddings[].embedding in the answer") from exc
        if sorted(i for i, _ in pairs) != list(range(expected)):
            raise RemoteBadResponse(
                f"{where}: asked for {expected} embeddings, got indexes {sorted(i for i, _ in pairs)}"
                + ("; this model may accept one input per request (batch_size = 1)" if expected > 1 else "")
            )
        try:
            vectors = np.asarray([v for _, v in sorted(pairs, key=lambda p: p[0])], np.float32)
        except (TypeError, ValueError) as exc:
            raise RemoteBadResponse(f"{where}: an embedding is not a list of numbers") from exc
        if vectors.ndim != 2 or vectors.shape[1] != self._dim:
            got = vectors.shape[1] if vectors.ndim == 2 else "ragged"
            raise RemoteBadResponse(f"{where}: embeddings have {got} dimensions, expected dim = {self._dim}")
        if not np.isfinite(vectors).all():
            raise RemoteBadResponse(f"{where}: an embedding has non-finite values")
        return vectors
