"""Remote captioner and embedder against a local fake server (http.server in a thread, no dependencies)."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgaudit.errors import (
    ConfigError,
    ModelError,
    RemoteBadResponse,
    RemoteError,
    RemoteRefused,
    RemoteTimeout,
)
from imgaudit.models.ports import ImageTextEncoder
from imgaudit.models.remote.client import HttpOptions
from imgaudit.models.remote.dashscope_embedding import RemoteEmbedder
from imgaudit.models.remote.openai_chat import DEFAULT_CAPTION_PROMPT, RemoteCaptioner
from imgaudit.models.remote.rate_limit import RateLimit
from imgaudit.models.remote.usage import Prices

KEY = "sk-test-0123456789abcdef"
DIM = 8
FAST = HttpOptions(
    connect_timeout=1.0,
    read_timeout=1.0,
    total_timeout=5.0,
    retries=2,
    backoff=0.01,
    max_retry_after=1.0,
    rate_limit=0,
    concurrency=4,
    trust_env=False,
)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str/bytes -> as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


def vector_for(content: dict[str, str]) -> list[float]:
    """A deterministic embedding per content, so tests can check which row came back where."""
    seed = int.from_bytes(json.dumps(content, sort_keys=True).encode()[-8:], "little")
    return np.random.default_rng(seed).normal(size=DIM).round(4).tolist()


def default_reply(req: Received) -> Reply:
    if req.path.endswith("/chat/completions"):
        return Reply(
            body={
                "choices": [
                    {"message": {"role": "assistant", "content": "  红色 连衣裙。 \n\n  A red   dress.  "}}
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20},
            }
        )
    contents = req.body["input"]["contents"]
    items = [{"index": i, "embedding": vector_for(c)} for i, c in enumerate(contents)]
    return Reply(body={"output": {"embeddings": items[::-1]}, "usage": {"input_tokens": 7 * len(contents)}})


class FakeServer:
    """Answers from ``script`` first, then ``default``; records every request and the peak in flight."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Reply] = []
        self.default: Callable[[Received], Reply] = default_reply
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                req = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                )
                with fake._lock:
                    fake.requests.append(req)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    reply = fake.script.pop(0) if fake.script else None
                try:
                    reply = reply or fake.default(req)
                    time.sleep(reply.delay)
                    data = reply.body
                    if isinstance(data, dict | list):
                        data = json.dumps(data, ensure_ascii=False)
                    data = data.encode() if isinstance(data, str) else (data or b"")
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the client hung up on a slow answer: expected in the timeout tests

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def captioner(server: FakeServer, **kwargs: Any) -> RemoteCaptioner:
    options = kwargs.pop("options", FAST)
    return RemoteCaptioner(
        base_url=server.url + "/v1/", model="vl-model", api_key=KEY, options=options, **kwargs
    )


def embedder(server: FakeServer, **kwargs: Any) -> RemoteEmbedder:
    options = kwargs.pop("options", FAST)
    kwargs.setdefault("api_key", KEY)
    return RemoteEmbedder(url=server.url + "/embed", model="mm-embed", dim=DIM, options=options, **kwargs)


def picture(w: int = 640, h: int = 480) -> np.ndarray:
    rng = np.random.default_rng(w * h)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


# --- happy paths and request shapes --------------------------------------------------------------------


def test_captioner_sends_the_documented_body_and_returns_a_trimmed_caption(server: FakeServer) -> None:
    cap = captioner(server, image_side=256)
    text = cap.caption(picture())
    assert text == "红色 连衣裙。\nA red dress."
    (req,) = server.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    url = req.body["messages"][0]["content"][1]["image_url"]["url"]
    assert req.body == {
        "model": "vl-model",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": DEFAULT_CAPTION_PROMPT},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        "max_tokens": 200,
        "temperature": 0.0,
    }
    sent = decode_data_uri(url)
    assert (
        sent.format == "JPEG" and max(sent.size) == 256 and sent.size == (256, 192)
    )  # downscaled, aspect kept


def test_caption_is_bounded_and_content_parts_are_joined(server: FakeServer) -> None:
    server.script.append(
        Reply(body={"choices": [{"message": {"content": [{"type": "text", "text": "x" * 50}]}}]})
    )
    assert captioner(server, max_chars=12).caption(picture(64, 64)) == "x" * 12


def test_embedder_sends_the_documented_body_and_keeps_input_order(server: FakeServer) -> None:
    emb = embedder(server, batch_size=3)
    texts = ["红色连衣裙", "red dress", "手机"]
    out = emb.encode_texts(texts)
    (req,) = server.requests
    assert req.path == "/embed"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body == {"model": "mm-embed", "input": {"contents": [{"text": t} for t in texts]}}
    expected = np.array([vector_for({"text": t}) for t in texts], np.float32)  # the server answered reversed
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert out.shape == (3, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_embedder_images_one_per_request_by_default(server: FakeServer) -> None:
    emb = embedder(server, image_side=128)
    out = emb.encode_images([picture(300, 200), picture(200, 300)])
    assert out.shape == (2, DIM)
    assert len(server.requests) == 2
    for req in server.requests:
        (content,) = req.body["input"]["contents"]
        assert set(content) == {"image"}
        assert max(decode_data_uri(content["image"]).size) == 128
    assert emb.usage["images"] == 2 and emb.usage["texts"] == 0
    assert emb.encode_texts([]).shape == (0, DIM) and len(server.requests) == 2


def test_embedder_model_id_names_the_space_without_the_key(server: FakeServer) -> None:
    a, b = embedder(server), embedder(server, parameters={"dimension": DIM})
    encoder: ImageTextEncoder = a  # the ClipEncoder interface, for whatever builds on encoders
    assert callable(encoder.encode_images) and callable(encoder.encode_texts)
    assert a.model_id.startswith(f"remote/mm-embed/{DIM}/") and a.dim == DIM
    assert a.model_id != b.model_id and KEY not in a.model_id + repr(a)


# --- retries, timeouts, errors -------------------------------------------------------------------------


def test_429_with_retry_after_is_honoured_then_succeeds(server: FakeServer) -> None:
    server.script.append(Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0.3"}))
    emb = embedder(server)
    start = time.monotonic()
    assert emb.encode_texts(["a"]).shape == (1, DIM)
    assert time.monotonic() - start >= 0.3
    assert server.requests[1].at - server.requests[0].at >= 0.29
    assert (emb.usage["requests"], emb.usage["retries"], emb.usage["failures"]) == (2, 1, 0)


def test_retry_after_is_capped(server: FakeServer) -> None:
    server.script.append(Reply(503, "busy", headers={"Retry-After": "3600"}))
    options = HttpOptions(
        connect_timeout=1, read_timeout=1, total_timeout=5, retries=1, backoff=0.01, max_retry_after=0.05,
        rate_limit=0, trust_env=False,
    )  # fmt: skip
    start = time.monotonic()
    embedder(server, options=options).encode_texts(["a"])
    assert time.monotonic() - start < 1.0


def test_500_twice_then_success(server: FakeServer) -> None:
    server.script += [Reply(500, "oops"), Reply(502, "bad gateway")]
    cap = captioner(server)
    assert cap.caption(picture(64, 64)).startswith("红色")
    assert len(server.requests) == 3
    assert (cap.usage["requests"], cap.usage["retries"], cap.usage["failures"]) == (3, 2, 0)


def test_permanent_400_is_a_clear_error_and_not_retried(server: FakeServer) -> None:
    server.script.append(
        Reply(400, {"code": "InvalidParameter", "message": "The image format is not supported"})
    )
    emb = embedder(server)
    with pytest.raises(RemoteRefused) as info:
        emb.encode_images([picture(64, 64)])
    err = info.value
    assert isinstance(err, ModelError) and err.reason == "remote_refused" and not err.retryable
    assert err.status == 400
    assert "HTTP 400" in err.message and "InvalidParameter: The image format is not supported" in err.message
    assert len(server.requests) == 1
    assert (emb.usage["requests"], emb.usage["failures"], emb.usage["images"]) == (1, 1, 0)


def test_timeout_is_retryable_and_retried(server: FakeServer) -> None:
    server.default = lambda req: Reply(body={"choices": []}, delay=0.6)
    options = HttpOptions(
        connect_timeout=1, read_timeout=0.15, total_timeout=5, retries=1, backoff=0.01, rate_limit=0,
        trust_env=False,
    )  # fmt: skip
    cap = captioner(server, options=options)
    with pytest.raises(RemoteTimeout) as info:
        cap.caption(picture(64, 64))
    assert info.value.retryable and info.value.reason == "remote_timeout"
    assert len(server.requests) == 2
    assert (cap.usage["requests"], cap.usage["retries"], cap.usage["failures"]) == (2, 1, 1)


def test_connection_refused_is_retryable() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = HttpOptions(retries=1, backoff=0.01, rate_limit=0, trust_env=False)
    emb = RemoteEmbedder(url=f"http://127.0.0.1:{port}/embed", model="m", dim=DIM, options=options)
    with pytest.raises(RemoteError) as info:
        emb.encode_texts(["a"])
    assert info.value.retryable and type(info.value) is RemoteError and "ConnectError" in info.value.message
    assert (emb.usage["requests"], emb.usage["failures"]) == (2, 1)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(body="<html>gateway page</html>"), "not JSON"),
        (Reply(body=[1, 2]), "not an object"),
        (Reply(body={"output": {}}), "output.embeddings"),
        (Reply(body={"output": {"embeddings": [{"index": 0, "embedding": [1.0, 2.0]}]}}), "2 dimensions"),
        (
            Reply(body={"output": {"embeddings": [{"index": 0, "embedding": ["a"] * DIM}]}}),
            "not a list of numbers",
        ),
    ],
)
def test_malformed_answers_are_clear_errors(server: FakeServer, reply: Reply, expected: str) -> None:
    server.script.append(reply)
    with pytest.raises(RemoteBadResponse) as info:
        embedder(server).encode_texts(["a"])
    assert expected in info.value.message and info.value.reason == "remote_bad_response"
    assert len(server.requests) == 1  # a 200 with garbage does not heal by asking again


def test_captioner_malformed_answer(server: FakeServer) -> None:
    server.script += [Reply(body={"id": "x"}), Reply(body={"choices": [{"message": {"content": " "}}]})]
    cap = captioner(server)
    with pytest.raises(RemoteBadResponse, match=r"choices\[0\]\.message\.content"):
        cap.caption(picture(64, 64))
    with pytest.raises(RemoteBadResponse, match="empty description"):
        cap.caption(picture(64, 64))


def test_fused_answer_to_a_batch_says_to_lower_batch_size(server: FakeServer) -> None:
    server.script.append(Reply(body={"output": {"embeddings": [{"index": 0, "embedding": [0.5] * DIM}]}}))
    with pytest.raises(RemoteBadResponse, match="batch_size = 1"):
        embedder(server, batch_size=2).encode_texts(["a", "b"])


def test_caption_many_keeps_failures_in_their_slots(server: FakeServer) -> None:
    ok = default_reply(Received("/chat/completions", {}, None, 0.0))
    server.script += [ok, Reply(400, {"error": {"message": "image too small"}}), ok]
    options = HttpOptions(retries=0, rate_limit=0, concurrency=1, trust_env=False)
    results = captioner(server, options=options).caption_many([picture(64, 64)] * 3)
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert isinstance(results[1], RemoteRefused) and "image too small" in results[1].message


# --- rate limit, concurrency, cost ---------------------------------------------------------------------


def test_rate_limit_spaces_requests(server: FakeServer) -> None:
    options = HttpOptions(rate_limit=10, burst=1, concurrency=4, retries=0, trust_env=False)
    embedder(server, options=options).encode_texts([f"t{i}" for i in range(5)])
    times = sorted(r.at for r in server.requests)
    gaps = np.diff(times)
    assert len(times) == 5
    assert gaps.min() >= 0.07, gaps  # 0.1 s apart, less scheduling jitter
    assert times[-1] - times[0] >= 0.35


def _acquire_times(limit: RateLimit, n: int) -> list[float]:
    start = time.monotonic()
    times = []
    for _ in range(n):
        limit.acquire()
        times.append(time.monotonic() - start)
    return times


def test_rate_limit_spends_the_burst_then_spaces_calls_at_the_rate() -> None:
    limit = RateLimit(10, burst=2)
    first = _acquire_times(limit, 4)
    assert first[1] < 0.05  # the burst goes at once
    assert first[2] == pytest.approx(0.1, abs=0.04) and first[3] == pytest.approx(0.2, abs=0.04)
    time.sleep(0.5)  # long idle: refilled, but only up to the burst
    again = _acquire_times(limit, 3)
    assert again[1] < 0.05 and again[2] == pytest.approx(0.1, abs=0.04)
    start = time.monotonic()
    unlimited = RateLimit(0)
    for _ in range(100):
        unlimited.acquire()
    assert time.monotonic() - start < 0.05


def test_rate_limit_is_thread_safe() -> None:
    limit = RateLimit(50, burst=1)
    start = time.monotonic()
    threads = [threading.Thread(target=limit.acquire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 7 / 50 - 0.01


def test_concurrency_is_bounded(server: FakeServer) -> None:
    server.default = lambda req: Reply(**{**default_reply(req).__dict__, "delay": 0.1})
    options = HttpOptions(rate_limit=0, concurrency=2, retries=0, trust_env=False)
    embedder(server, options=options).encode_texts([f"t{i}" for i in range(6)])
    assert len(server.requests) == 6 and server.max_in_flight == 2


def test_cost_counters_add_up(server: FakeServer) -> None:
    prices = Prices(per_1k_input_tokens=0.5, per_1k_output_tokens=2.0, per_image=0.01)
    server.script.append(Reply(500, "once"))
    cap = captioner(server, prices=prices)
    for _ in range(3):
        cap.caption(picture(64, 64))
    usage = cap.usage
    assert usage == {
        "requests": 4,
        "retries": 1,
        "failures": 0,
        "images": 3,
        "texts": 0,
        "input_tokens": 300,
        "output_tokens": 60,
        "estimated_cost": pytest.approx(0.3 * 0.5 + 0.06 * 2.0 + 3 * 0.01),
    }
    emb = embedder(server, batch_size=2)
    emb.encode_texts(["a", "b", "c"])
    assert (emb.usage["requests"], emb.usage["texts"], emb.usage["input_tokens"]) == (2, 3, 21)


# --- the key -------------------------------------------------------------------------------------------


def test_key_from_the_named_environment_variable_never_leaks(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEST_REMOTE_KEY", KEY)
    server.script += [
        Reply(500, f"upstream saw key {KEY}"),
        Reply(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}),
    ]
    caplog.set_level(logging.DEBUG)
    emb = embedder(server, api_key=None, api_key_env="TEST_REMOTE_KEY")
    with pytest.raises(RemoteRefused) as info:
        emb.encode_texts(["a"])
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert "Incorrect API key provided: ***" in info.value.message
    leaks = [
        info.value.message,
        str(info.value),
        repr(emb),
        repr(emb.endpoint),
        json.dumps(emb.usage),
        caplog.text,
    ]
    assert not [text for text in leaks if KEY in text]
    assert "retrying" in caplog.text  # the retry was logged, without the key


def test_missing_key_configuration(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_REMOTE_KEY", raising=False)
    with pytest.raises(ConfigError, match="TEST_REMOTE_KEY"):
        embedder(server, api_key=None, api_key_env="TEST_REMOTE_KEY")
    keyless = embedder(server, api_key=None)  # a local server without auth
    keyless.encode_texts(["a"])
    assert "authorization" not in server.requests[0].headers
    with pytest.raises(ConfigError, match="URL"):
        RemoteEmbedder(url="", model="m")
    with pytest.raises(ConfigError, match="http"):
        RemoteCaptioner(base_url="ftp://example.invalid", model="m")
