"""The files of one worker name in ``data_dir``: which names are allowed, where the files are, and how
they are read and written. The worker writes them; ``WorkersService`` reads them to manage it.

- ``run/worker-<name>.pid``: written by ``worker start`` (a worker it manages);
- ``run/worker-<name>.json``: the status the worker itself rewrites every ``worker.status_every``;
- ``run/worker-<name>.lock``: serialises start and stop of one name;
- ``logs/worker-<name>.log``: the worker's log (rotated), read with ``tail_lines`` and ``follow``.

Nothing heavy is imported here: ``imgaudit worker status`` and the like must stay quick.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from imgaudit.config import Settings
from imgaudit.errors import ConfigError
from imgaudit.fsio import atomic_write_text

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def check_worker_name(name: str) -> str:
    """Worker names become file names (pid, status, log): refuse anything that could escape the folder."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"invalid worker name {name!r}: use letters, digits, '_', '-', '.', '@' (at most 64 characters)"
        )
    return name


def run_dir(settings: Settings) -> Path:
    return settings.data_dir / "run"


def status_path(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"worker-{check_worker_name(name)}.json"


def pid_path(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"worker-{check_worker_name(name)}.pid"


def log_path(settings: Settings, name: str) -> Path:
    """Where the worker called ``name`` writes its log."""
    return settings.data_dir / "logs" / f"worker-{check_worker_name(name)}.log"


def names_in(directory: Path) -> list[str]:
    """Every valid worker name with a pid file or a status file in ``directory``, sorted."""
    names: set[str] = set()
    for pattern in ("worker-*.pid", "worker-*.json"):
        for path in directory.glob(pattern):
            name = path.name[len("worker-") :].rsplit(".", 1)[0]
            with contextlib.suppress(ConfigError):
                names.add(check_worker_name(name))
    return sorted(names)


# -- status and pid files ------------------------------------------------------------------------------


def write_status(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, default=str))


def read_status(path: Path) -> dict[str, Any] | None:
    """The status file's object; None when it is missing or garbled."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_pid(path: Path, pid: int) -> None:
    atomic_write_text(path, f"{pid}\n")


def read_pid(path: Path) -> int | None:
    """The pid in a pid file; None when missing. A garbled file counts as pid 0 (never alive)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return 0


def remove_pid(path: Path, pid: int | None = None) -> None:
    """Remove the pid file, unless it meanwhile names another process (a concurrent start)."""
    if pid is not None and read_pid(path) not in (pid, None, 0):
        return
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def name_lock(settings: Settings, name: str) -> Iterator[None]:
    """Serialise start/stop of one worker name, so two concurrent ``start`` cannot both spawn."""
    import fcntl  # POSIX only, like the daemon management it serves

    path = run_dir(settings) / f"worker-{check_worker_name(name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- the log ---------------------------------------------------------------------------------------------


def tail_lines(f: BinaryIO, n: int, block: int = 8192) -> list[str]:
    """The last ``n`` lines of an open binary file, read backwards in blocks (logs can be large);
    leaves the file positioned at its end."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if n <= 0:
        return []
    data = b""
    pos = end
    while pos > 0 and data.count(b"\n") <= n:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    f.seek(end)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]


def follow(
    path: Path,
    f: BinaryIO,
    *,
    interval: float = 0.5,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Text appended to the log from ``f``'s position on, like ``tail -F``.

    Survives rotation (the path now names a new file: the old one is drained, then the new one is read
    from its start) and truncation (read again from the start). Yields whatever arrived, not
    necessarily whole lines; stops when ``should_stop()`` says so between polls. Closes the file it
    ends with.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    inode = os.fstat(f.fileno()).st_ino
    try:
        while True:
            chunk = f.read()
            if chunk:
                yield decoder.decode(chunk)
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:  # between the rename and the new file: wait for it
                st = None
            if st is not None and st.st_ino != inode:
                rest = f.read()  # written to the old file just before it was renamed
                if rest:
                    yield decoder.decode(rest)
                f.close()
                f = open(path, "rb")  # noqa: SIM115 - closed on the next rotation or in finally
                inode = os.fstat(f.fileno()).st_ino
                continue
            if st is not None and st.st_size < f.tell():  # truncated in place
                f.seek(0)
                continue
            if should_stop():
                return
            sleep(interval)
    finally:
        f.close()
