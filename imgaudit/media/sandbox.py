"""Decoding in worker processes: a deadline and a memory limit per decode, and native crashes contained.

Pillow decodes in C and a thread cannot be interrupted, so a file that takes minutes (a scan bomb the byte
checks miss, a pathological codec path) or crashes the decoder would hold or kill the whole worker. Here
each decode runs in a reused worker process: past ``decode.timeout_seconds`` the worker is killed and the
image fails with ``decode_timeout``; a worker that dies mid-decode (SIGSEGV, abort) fails that image with
``decode_crashed``; in both cases a fresh worker is started on the next request. Each worker limits its
own address space (RLIMIT_AS, ``decode.max_memory_mb``), so an allocation past it is a MemoryError, which
``decode`` reports as a decompression bomb.

Workers are fresh interpreters (``python -c``), not ``multiprocessing`` children: the CLI's
``python -m imgaudit.cli`` runs the app at import time, and spawn/forkserver children re-import the parent's
``__main__``; fork would copy the loaded models. A worker imports only ``imgaudit.media.decode`` (Pillow,
numpy), starts lazily on first use (~0.3 s) and serves requests until the pool closes.

Protocol on the worker's stdin/stdout: each message is a JSON header (8-byte length prefix) followed by
one raw blob (8-byte length prefix): the image bytes going in, the RGB pixels coming out, so neither is
serialised (pickling a 1600 px decode would copy 7 MB twice more). The header is JSON, never pickle: the
worker handles hostile bytes, so nothing it sends back may be able to run code in the parent, and its
reply is checked (shape against the pixel bytes) before use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from imgaudit import errors
from imgaudit.errors import (
    CorruptImage,
    DecodeCrashed,
    DecodeTimeout,
    DecodeUnavailable,
    DecompressionBomb,
    MediaError,
)
from imgaudit.media.decode import decode
from imgaudit.types import Decoded

if TYPE_CHECKING:
    from imgaudit.config import DecodeSettings

_LEN = struct.Struct("<Q")
_CHUNK = 1 << 20
_PIPE_BYTES = 1 << 20
_MAX_HEADER = 1 << 16  # a reply header is a few dozen bytes
_MAX_REPLY_BYTES = 1 << 30  # RGB pixels of the largest decode anyone asks for (max_side is at most a few k)
_BOOT = "import imgaudit.media.sandbox as s; s._serve()"
_START_TIMEOUT = 30.0  # seconds for a worker to import and answer its first ping (cold disk caches)
# Environment for workers: one thread per math library (decoding uses none), so a worker's address space
# is not mostly other threads' stacks and buffers.
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Dead(Exception):
    """The worker's pipe closed: it exited or was killed. ``before`` when it never took the request."""

    def __init__(self, before: bool) -> None:
        super().__init__()
        self.before = before


class _Late(Exception):
    """The deadline passed before the worker answered."""


def _error_class(name: str) -> type[MediaError]:
    """The MediaError subclass a worker named; anything unknown becomes CorruptImage."""
    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, MediaError) else CorruptImage


class _Worker:
    """One worker process and its two pipes. Used by one thread at a time."""

    def __init__(self, max_memory_mb: int) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env.update(_WORKER_ENV)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["IMGAUDIT_DECODE_WORKER_MEMORY_MB"] = str(max_memory_mb)
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the parent, which closes the pool
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for pipe in (self.proc.stdin, self.proc.stdout):  # 1 MiB pipes: a 1600 px decode is 7 MB
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self._in = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        self._poll = select.poll()
        self._poll.register(self._out, select.POLLIN | select.POLLHUP | select.POLLERR)

    def call(
        self, header: tuple[Any, ...], blob: bytes, deadline: float
    ) -> tuple[tuple[Any, ...], bytearray]:
        """Send one request and wait until ``deadline`` (monotonic) for the answer."""
        head = json.dumps(header).encode()
        try:
            self._in.write(_LEN.pack(len(head)) + head + _LEN.pack(len(blob)))
            self._in.write(blob)
            self._in.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError: it had died before this request
            raise _Dead(before=True) from exc
        reply = _parse_reply(self._read(self._length(_MAX_HEADER, deadline), deadline))
        data = self._read(self._length(_MAX_REPLY_BYTES, deadline), deadline)
        return reply, data

    def _length(self, limit: int, deadline: float) -> int:
        n = int(_LEN.unpack(self._read(_LEN.size, deadline))[0])
        if n > limit:  # the worker is not to be believed: it may have been subverted by the image
            raise DecodeCrashed(f"the decode worker announced {n} bytes")
        return n

    def _read(self, n: int, deadline: float) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(max(1, int(left * 1000))):
                if time.monotonic() >= deadline:
                    raise _Late
                continue
            chunk = os.read(self._out, min(n - got, _CHUNK))
            if not chunk:
                raise _Dead(before=False)
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        return buf

    def death(self) -> str:
        """How the worker ended, once its pipe closed: 'signal SIGSEGV', 'exit 1', ..."""
        try:
            code = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return "stopped answering"
        if code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit {code}"

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close() if stream else None

    def stop(self) -> None:
        """Ask the worker to exit (EOF on its stdin), then make sure it did."""
        with contextlib.suppress(OSError):
            self._in.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2.0)
        self.kill()


class DecodePool:
    """``decode`` with a deadline, a memory limit and crash containment; safe to call from many threads.

    With ``settings.isolation == "thread"`` it calls ``decode`` directly (no deadline, no limit), for
    tests and for comparing costs. Close it (or use it as a context manager) to stop the workers.
    """

    def __init__(self, settings: DecodeSettings, *, workers: int | None = None) -> None:
        self.settings = settings
        self.isolated = settings.isolation == "process"
        self.size = workers or settings.workers or (os.cpu_count() or 1)
        self._idle: list[_Worker] = []
        self._live = 0  # workers started and not yet discarded, idle or busy
        self._closed = False
        self._cond = threading.Condition()

    def decode(self, data: bytes, *, max_pixels: int | None = None, max_side: int | None = None) -> Decoded:
        """Decode like ``imgaudit.media.decode.decode`` (same meaning of the limits, settings by default).

        Raises MediaError subclasses only: those of ``decode``, plus DecodeTimeout, DecodeCrashed and
        DecodeUnavailable (retryable: no worker could be started, or the pool is closed).
        """
        limits = (
            self.settings.max_pixels if max_pixels is None else max_pixels,
            self.settings.max_side if max_side is None else max_side,
            self.settings.max_jpeg_scans,
        )
        if not self.isolated:
            return decode(data, max_pixels=limits[0], max_side=limits[1], max_jpeg_scans=limits[2])
        reply, pixels = self._call(("decode", *limits), bytes(data), self.settings.timeout_seconds)
        if reply[0] == "error":
            raise _error_class(reply[1])(reply[2])
        try:
            _, shape, width, height, fmt, sha256 = reply
            h, w, c = (int(x) for x in shape)
            if c != 3 or h * w * c != len(pixels):
                raise ValueError(f"shape {shape} for {len(pixels)} bytes")
            array = np.frombuffer(pixels, dtype=np.uint8).reshape(h, w, c)
            return Decoded(
                pixels=array, width=int(width), height=int(height), format=str(fmt), sha256=str(sha256)
            )
        except (TypeError, ValueError) as exc:
            raise DecodeCrashed(f"the decode worker sent a malformed answer: {exc}") from exc

    def _call(
        self, header: tuple[Any, ...], blob: bytes, timeout: float
    ) -> tuple[tuple[Any, ...], bytearray]:
        """Run one request on a worker; a worker that was already dead before it took the request is
        replaced and the request sent once more (that death was not this image's doing)."""
        for attempt in (1, 2):
            worker = self._acquire()
            deadline = time.monotonic() + timeout
            try:
                reply = worker.call(header, blob, deadline)
            except _Late:
                self._discard(worker)
                raise DecodeTimeout(
                    f"decoding took longer than {timeout:g} s; the decoder was killed"
                ) from None
            except _Dead as dead:
                how = worker.death()
                self._discard(worker)
                if dead.before and attempt == 1:
                    continue
                raise DecodeCrashed(f"the decoder process died while decoding ({how})") from None
            except BaseException:
                self._discard(worker)
                raise
            self._release(worker)
            return reply
        raise DecodeUnavailable("decoder processes keep dying before taking a request")

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise DecodeUnavailable("the decode pool is closed")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.proc.poll() is None:
                        return worker
                    self._live -= 1  # died while idle (killed from outside): start another
                    worker.kill()
                if self._live < self.size:
                    self._live += 1
                    break
                self._cond.wait()
        return self._start()

    def _start(self) -> _Worker:
        """A new worker that has answered a ping; its slot in ``_live`` is already counted."""
        started: _Worker | None = None
        try:
            started = _Worker(self.settings.max_memory_mb)
            started.call(("ping",), b"", time.monotonic() + _START_TIMEOUT)
        except (OSError, _Dead, _Late) as exc:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            if started is not None:
                started.kill()
            raise DecodeUnavailable(f"could not start a decoder process: {type(exc).__name__}") from exc
        return started

    def _replace(self) -> None:
        """Start a worker in the background after one was killed, so the next image does not wait ~0.5 s
        for an interpreter to start."""
        with self._cond:
            if self._closed or self._live >= self.size:
                return
            self._live += 1
        threading.Thread(target=self._start_idle, name="decode-worker-start", daemon=True).start()

    def _start_idle(self) -> None:
        try:
            worker = self._start()
        except DecodeUnavailable:
            return  # the next request will try again, and report it
        with self._cond:
            closed = self._closed
            if not closed:
                self._idle.append(worker)
                self._cond.notify()
            else:
                self._live -= 1
        if closed:
            worker.stop()

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
            self._live -= 1
        worker.stop()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._live -= 1
            self._cond.notify()
        self._replace()

    def close(self) -> None:
        """Stop the idle workers now and busy ones as they finish; later calls raise DecodeUnavailable."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.stop()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- the worker side --------------------------------------------------------------------------------------


def _limit_memory() -> None:
    mb = int(os.environ.get("IMGAUDIT_DECODE_WORKER_MEMORY_MB", "0") or 0)
    if mb > 0:
        import resource

        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _read_exact(stream: Any, n: int) -> bytearray | None:
    buf = bytearray(n)
    return buf if stream.readinto(buf) == n else None


def _serve() -> None:
    """The worker's loop: one request at a time until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    _limit_memory()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        raw = _read_exact(inp, _LEN.size)
        head = _read_exact(inp, _LEN.unpack(raw)[0]) if raw is not None else None
        raw = _read_exact(inp, _LEN.size) if head is not None else None
        blob = _read_exact(inp, _LEN.unpack(raw)[0]) if raw is not None else None
        if head is None or blob is None:
            return  # the parent closed the pipe (or died): exit
        header = tuple(json.loads(head))
        reply, pixels = _handle(header, blob)
        answer = json.dumps(reply).encode()
        out.write(_LEN.pack(len(answer)) + answer + _LEN.pack(len(pixels)))
        out.write(pixels)
        out.flush()
        # An idle worker must not hold the last image (~3x its bytes).
        del head, blob, header, reply, answer, pixels


def _parse_reply(raw: bytes | bytearray) -> tuple[Any, ...]:
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise DecodeCrashed("the decode worker sent a malformed answer") from exc
    if not isinstance(reply, list) or not reply or reply[0] not in ("ok", "error"):
        raise DecodeCrashed("the decode worker sent a malformed answer")
    return tuple(reply)


def _handle(header: tuple[Any, ...], blob: bytes | bytearray) -> tuple[tuple[Any, ...], bytes | memoryview]:
    op = header[0]
    if op == "ping":
        return ("ok",), b""
    if op == "sleep":  # for tests of the deadline
        time.sleep(float(header[1]))
        return ("ok",), b""
    if op == "crash":  # for tests of crash containment: a native crash, as a decoder bug would cause
        os.kill(os.getpid(), signal.SIGSEGV)
    if op != "decode":
        return ("error", "CorruptImage", f"unknown request {op!r}"), b""
    _, max_pixels, max_side, max_jpeg_scans = header
    try:
        d = decode(blob, max_pixels=max_pixels, max_side=max_side, max_jpeg_scans=max_jpeg_scans)
    except MediaError as exc:
        return ("error", type(exc).__name__, exc.message), b""
    except MemoryError:
        return (
            "error",
            DecompressionBomb.__name__,
            "out of memory while decoding (decode.max_memory_mb)",
        ), b""
    except Exception as exc:  # decode promises MediaError only; never let the worker die of a bug
        return ("error", CorruptImage.__name__, f"{type(exc).__name__}: {exc}"), b""
    pixels = np.ascontiguousarray(d.pixels)
    return ("ok", pixels.shape, d.width, d.height, d.format, d.sha256), pixels.data.cast("B")
