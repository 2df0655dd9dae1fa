"""The local HTTP server the download tests share: a ThreadingHTTPServer on a free loopback port, served
from a daemon thread for one test module; each module brings its own handler (its routes)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from imgaudit.config import FetchSettings

MAX_BYTES = 64 * 1024

S = TypeVar("S", bound="LocalServer")


class LocalServer(ThreadingHTTPServer):
    """Subclass it to hold what a module's handler records (``self.server`` inside the handler)."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serving(server: S) -> Iterator[S]:
    """Serve ``server`` until the block ends; then stop it and close its socket."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def fetch_settings(**overrides: Any) -> FetchSettings:
    """Fetch settings for the local server: loopback allowed (the SSRF tests switch it off), fast
    back-off, short deadlines."""
    values: dict[str, Any] = {
        "allow_private": True,
        "backoff": 0.01,
        "retries": 2,
        "connect_timeout": 2,
        "read_timeout": 2,
        "total_timeout": 5,
        "max_bytes": MAX_BYTES,
    }
    values.update(overrides)
    return FetchSettings(**values)


def unique_key() -> str:
    """A query key no other test uses, so per-key hit counters start at zero."""
    return uuid.uuid4().hex
