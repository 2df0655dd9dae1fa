"""A batch holds a bounded number of image bytes, and decodes each image as soon as its bytes are in."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgaudit.bootstrap import dedup_service
from imgaudit.config import Settings
from imgaudit.pipeline import batch as batch_module
from imgaudit.services.dedup import DedupService
from imgaudit.sources.files import FolderSource
from imgaudit.testing.fakes import jpeg_bytes, textured_image
from imgaudit.types import ImageRef


def _noise_png(path: Path, seed: int, side: int = 600) -> int:
    """Incompressible pixels: a PNG of about 3 * side**2 bytes."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path.stat().st_size


def test_items_past_the_byte_budget_wait_for_the_next_batch_without_losing_an_attempt(
    settings: Settings, tmp_path: Path, fake_encoder
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    sizes = [_noise_png(folder / f"n{i}.png", i) for i in range(6)]
    settings.decode.batch_max_bytes = int(max(sizes) * 2.5)  # two files fit, the third does not
    batches: list[int] = []
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        summary = svc.process_queue(
            batch_size=6, progress=lambda n, report: batches.append(len(report.deferred))
        )
        counts = svc.store.counts()
        attempts = {svc.store.get(i).attempts for i in range(1, 7)}
    assert summary.processed == 6 and summary.failed == 0
    assert counts["status"] == {"done": 6}
    assert batches[0] == 4, batches  # 6 claimed, 2 admitted
    assert len(batches) >= 3
    assert attempts == {1}, "a deferral must not count as an attempt"


def test_one_file_larger_than_the_whole_budget_still_gets_through(
    settings: Settings, tmp_path: Path, fake_encoder
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    size = _noise_png(folder / "big.png", 1, side=700)
    settings.decode.batch_max_bytes = size // 2
    with dedup_service(settings, fake_encoder) as svc:
        svc.enqueue(FolderSource(folder).refs(), "folder")
        svc.process_queue(batch_size=4)
        assert svc.store.counts()["status"] == {"done": 1}


# The slow body drips for this long: far longer than anything else in these tests takes even on a loaded
# machine, so "did not wait for it" can be told from "waited for it" with a wide margin.
SLOW_SECONDS = 8.0


class _Slow(http.server.BaseHTTPRequestHandler):
    """``/slow...?seconds=S`` drips the body in eight parts over S seconds; any other path is instant."""

    protocol_version = "HTTP/1.1"
    body = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            if url.path.startswith("/slow"):
                seconds = float(urllib.parse.parse_qs(url.query).get("seconds", ["2"])[0])
                part = -(-len(self.body) // 8)
                for i in range(0, len(self.body), part):
                    time.sleep(seconds / 8)  # the last part arrives after the whole drip
                    self.wfile.write(self.body[i : i + part])
                    self.wfile.flush()
            else:
                self.wfile.write(self.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client cut the straggler off (or the test ended): what the tests expect


@pytest.fixture
def slow_server() -> Iterator[str]:
    _Slow.body = jpeg_bytes(textured_image(3, (320, 240)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _warm_decoders(svc: DedupService) -> None:
    """Start the decode worker processes (started lazily, about 0.5 s each, more under load) before
    anything is timed: one decode per pipeline decode thread, at the same time."""
    data = jpeg_bytes(textured_image(4, (64, 48)))
    with ThreadPoolExecutor(batch_module.DECODE_THREADS) as pool:
        list(pool.map(lambda _: svc.pipeline.decoder.decode(data), range(batch_module.DECODE_THREADS)))


def test_decoding_starts_as_each_download_finishes(
    settings: Settings, fake_encoder, slow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.fetch.allowed_hosts = ["127.0.0.1/32"]
    decoded_at: list[float] = []
    real = batch_module.Pipeline._decode_one

    def record(self, data, budget=None):
        result = real(self, data, budget)
        decoded_at.append(time.monotonic())
        return result

    refs = [ImageRef(f"{slow_server}/slow.jpg?seconds={SLOW_SECONDS:g}", "url")] + [
        ImageRef(f"{slow_server}/fast{i}.jpg", "url") for i in range(4)
    ]
    with dedup_service(settings, fake_encoder) as svc:
        _warm_decoders(svc)
        monkeypatch.setattr(batch_module.Pipeline, "_decode_one", record)
        start = time.monotonic()
        items = svc.pipeline.load_decoded(refs, defaultdict(float))
        took = time.monotonic() - start
    assert all(a.error is None for a in items), [a.error for a in items]
    assert len(decoded_at) == 5
    assert took >= 0.8 * SLOW_SECONDS, f"the slow body came in {took:.1f} s: the test proves nothing"
    fast = sorted(decoded_at)[:4]
    assert max(fast) - start < SLOW_SECONDS / 2, (
        f"the fast images were decoded {max(fast) - start:.1f} s in, the slow one arrived at {took:.1f} s: "
        "they waited for it"
    )


@pytest.mark.parametrize(
    ("last_attempt", "seconds"),
    [pytest.param(False, SLOW_SECONDS, id="False"), pytest.param(True, 3.0, id="True")],
)
def test_a_slow_server_holds_up_only_its_own_item(
    settings: Settings, fake_encoder, slow_server: str, last_attempt: bool, seconds: float
) -> None:
    """Stragglers are cut off a little after the rest of the batch (and retried), except on their last
    attempt, when they get the whole total_timeout."""
    settings.fetch.allowed_hosts = ["127.0.0.1/32"]
    settings.fetch.straggler_seconds = 0.3
    settings.max_attempts = 1 if last_attempt else 3
    settings.moderation.enabled = False  # not what is timed here (and its models load on first use)
    refs = [ImageRef(f"{slow_server}/slow.jpg?seconds={seconds:g}", "url")] + [
        ImageRef(f"{slow_server}/fast{i}.jpg", "url") for i in range(5)
    ]
    with dedup_service(settings, fake_encoder) as svc:
        _warm_decoders(svc)
        svc.enqueue(refs, "urls")
        start = time.monotonic()
        svc.process_queue(batch_size=8)
        took = time.monotonic() - start
        slow = svc.store.find_by_uri(refs[0].uri)
        counts = svc.store.counts()
    if last_attempt:
        assert (slow.status, slow.error_reason) == ("done", None)
        assert took >= 0.8 * seconds, f"the batch took {took:.1f} s: the slow body was not slow"
    else:
        assert took < seconds / 2, f"the batch waited {took:.1f} s for a server dripping for {seconds:g} s"
        assert (slow.status, slow.error_reason) == ("failed_retryable", "slow_server")
        assert counts["status"]["done"] == 5
