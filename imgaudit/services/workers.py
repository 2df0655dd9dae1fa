"""Worker processes on this host: where each stands, start one detached, stop one, read its log.

What ``imgaudit worker start|stop|force-stop|restart|status|logs`` call (``services/worker.py`` is what
a running worker does each step). Under systemd (``deploy/imgaudit-worker@.service``) only ``worker run``
is needed; this is for hosts without a service manager and for humans. Workers are found through their
run files (``imgaudit.services.runfiles``).

A pid file is only trusted if the process is alive and its command line mentions imgaudit: after a
reboot or a crash the number may belong to an unrelated process, which must never be signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from imgaudit.config import Settings
from imgaudit.errors import DaemonError
from imgaudit.services.runfiles import (
    check_worker_name,
    follow,
    log_path,
    name_lock,
    names_in,
    pid_path,
    read_pid,
    read_status,
    remove_pid,
    run_dir,
    status_path,
    tail_lines,
    write_pid,
    write_status,
)

UP_STATES = frozenset({"idle", "working", "waiting_for_database"})
START_LOG_LINES = 20  # of the log, in the error of a worker that died while starting
FORCE_STOP_WAIT = 10.0  # seconds for a SIGKILLed process to be gone


def is_worker_process(pid: int) -> bool:
    """Is ``pid`` a live (not zombie) process whose command line mentions imgaudit?

    The command line check is what keeps a recycled pid from being signalled. Where there is no /proc
    (not Linux) only liveness can be checked.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        stat = (proc / "stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # exited, not yet reaped: already stopped
            return False
        return b"imgaudit" in (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` is no longer a live imgaudit process; False if it still is at the deadline."""
    deadline = time.monotonic() + timeout
    while is_worker_process(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


@dataclass
class WorkerInfo:
    """Where one worker name stands, from its pid file, status file and /proc."""

    name: str
    running: bool
    status: str  # running | stopped | killed | dead | dead (stale pid file) | not running | elsewhere
    pid: int | None = None
    managed: bool = False  # has a pid file, i.e. was started by `worker start`
    host: str | None = None
    state: str | None = None  # the worker's own state (status file), or "starting"
    uptime_seconds: float | None = None
    processed: int | None = None
    duplicates: int | None = None
    failed: int | None = None
    rate_per_minute: float | None = None
    queue_depth: int | None = None
    updated_at: str | None = None
    updated_age_seconds: float | None = None
    log: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    log: Path
    ready: bool  # False: still starting when the wait ran out


@dataclass(frozen=True, slots=True)
class Stopped:
    was_running: bool
    pid: int | None
    stopped: bool  # False: still running when the wait ran out
    stale_pid_file: bool = False
    waited: float = 0.0  # the seconds allowed for the exit

    def as_dict(self) -> dict[str, object]:
        return {
            "was_running": self.was_running,
            "pid": self.pid,
            "stopped": self.stopped,
            "stale_pid_file": self.stale_pid_file,
        }


class WorkersService:
    """The workers of one data directory on this host. No operation prints: each returns what happened
    or raises ``DaemonError``; a bad worker name is a ``ConfigError``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def run_dir(self) -> Path:
        return run_dir(self.settings)

    def names(self) -> list[str]:
        """Every worker name with a pid file or a status file in ``data_dir/run``."""
        return names_in(self.run_dir)

    def status(self, name: str | None = None) -> list[WorkerInfo]:
        """Worker ``name``, or every known worker (stale pid files are removed on the way)."""
        names = [check_worker_name(name)] if name is not None else self.names()
        return [self.inspect(n) for n in names]

    def inspect(self, name: str, *, clean: bool = True) -> WorkerInfo:
        """Where worker ``name`` stands. With ``clean``, a stale pid file (dead process) is removed.

        A worker without a pid file (``worker run`` in a terminal or under systemd) counts as running when
        its status file names a live imgaudit process on this host that has not reported ``stopped``.
        """
        settings = self.settings
        pfile = pid_path(settings, name)
        pid_in_file = read_pid(pfile)
        status = read_status(status_path(settings, name))
        here = socket.gethostname()
        info = WorkerInfo(name=name, running=False, status="not running", log=str(log_path(settings, name)))

        if pid_in_file is not None:
            info.pid, info.managed = pid_in_file, True
            if is_worker_process(pid_in_file):
                info.running, info.status, info.host = True, "running", here
            else:
                info.status, info.managed = "dead (stale pid file)", False
                if clean:
                    remove_pid(pfile, pid_in_file)
        elif status is not None:
            spid = status.get("pid")
            shost = status.get("host") or here
            sstate = status.get("state")
            info.pid, info.host = spid if isinstance(spid, int) else None, shost
            if shost != here:
                info.status = "elsewhere"  # cannot check another host's processes
            elif sstate not in ("stopped", "killed") and info.pid and is_worker_process(info.pid):
                info.running, info.status = True, "running"
            else:
                info.status = sstate if sstate in ("stopped", "killed") else "dead"

        if status is not None and (status.get("pid") == info.pid or not info.running):
            info.state = status.get("state")
            for key in ("processed", "duplicates", "failed", "rate_per_minute", "queue_depth", "updated_at"):
                setattr(info, key, status.get(key))
            info.host = info.host or status.get("host")
            now = datetime.now(UTC)
            updated = _parse_time(status.get("updated_at"))
            if updated is not None:
                info.updated_age_seconds = round((now - updated).total_seconds(), 1)
            started = _parse_time(status.get("started_at"))
            if info.running and started is not None:
                info.uptime_seconds = round((now - started).total_seconds(), 1)
            if not info.running and info.state in UP_STATES:  # it died without saying so
                info.state = f"{info.state} (last reported)"
        elif info.running:
            info.state = "starting"  # alive, but has not written its status file yet
        return info

    def start(self, name: str, config: Path | None, wait: float) -> Started:
        """Spawn ``imgaudit worker run --daemon`` detached and wait until it reports for work.

        The child gets its own session (no controlling terminal, survives the shell), /dev/null as stdin,
        and the log file as stdout/stderr, so a crash before logging is set up is still recorded. It
        inherits the environment and the working directory; the data directory is passed as an absolute
        path so that pid file, status file and store agree whatever the child's settings say.
        """
        settings = self.settings
        pfile = pid_path(settings, name)
        with name_lock(settings, name):
            info = self.inspect(name)
            if info.running:
                raise DaemonError(f"worker {name} is already running (pid {info.pid})")
            log = log_path(settings, name)
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "imgaudit.cli", "worker", "run", "--name", name, "--daemon"]
            if config is not None:
                cmd += ["--config", str(config.resolve())]
            env = {**os.environ, "IMGAUDIT_DATA_DIR": str(settings.data_dir.resolve())}
            with open(log, "ab") as logf:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    env=env,
                )
            write_pid(pfile, proc.pid)

            deadline = time.monotonic() + wait
            spath = status_path(settings, name)
            while True:
                if proc.poll() is not None:
                    remove_pid(pfile, proc.pid)
                    raise DaemonError(
                        f"worker {name} exited with code {proc.returncode} while starting; "
                        f"last lines of {log}:\n" + "\n".join(self._last_log_lines(name, START_LOG_LINES))
                    )
                status = read_status(spath)
                if status is not None and status.get("pid") == proc.pid and status.get("state") in UP_STATES:
                    return Started(proc.pid, log, ready=True)
                if time.monotonic() >= deadline:
                    return Started(proc.pid, log, ready=False)
                time.sleep(0.1)

    def stop(self, name: str, timeout: float | None = None, *, force: bool = False) -> Stopped:
        """SIGTERM (the batch in hand is finished first) or, with ``force``, SIGKILL, then wait for exit:
        ``timeout`` seconds (default: ``worker.stop_timeout``, or ``FORCE_STOP_WAIT`` with ``force``).

        A killed worker's claimed items stay claimed until their lease (``lease_seconds``) expires, then go
        back to the queue; its status file is marked ``killed`` so nobody mistakes it for a live one.
        """
        settings = self.settings
        if timeout is None:
            timeout = FORCE_STOP_WAIT if force else settings.worker.stop_timeout
        pfile = pid_path(settings, name)
        with name_lock(settings, name):
            info = self.inspect(name)
            if not info.running or info.pid is None:
                stale = info.status == "dead (stale pid file)"
                return Stopped(False, info.pid, True, stale_pid_file=stale, waited=timeout)
            pid = info.pid
            try:
                if force:
                    # a worker from `start` leads its own session and process group: take any helpers with it
                    if info.managed and os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not wait_gone(pid, timeout):
                return Stopped(True, pid, False, waited=timeout)
            remove_pid(pfile, pid)
            if force:
                spath = status_path(settings, name)
                status = read_status(spath)
                if status is not None and status.get("pid") == pid:
                    now = datetime.now(UTC).isoformat()
                    write_status(spath, {**status, "state": "killed", "updated_at": now})
            return Stopped(True, pid, True, waited=timeout)

    def log(self, name: str, lines: int, *, follow: bool = False, interval: float = 0.5) -> Iterator[str]:
        """The last ``lines`` lines of the worker's log (each ending in a newline), then, with ``follow``,
        whatever is appended (rotation included) until the caller stops iterating. Raises ``DaemonError``
        at once when there is no log."""
        path = log_path(self.settings, name)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by _read
        except FileNotFoundError as exc:
            raise DaemonError(f"no log for worker {name} ({path})") from exc
        return _read(path, f, lines, keep_reading=follow, interval=interval)

    def _last_log_lines(self, name: str, n: int) -> list[str]:
        try:
            with open(log_path(self.settings, name), "rb") as f:
                return tail_lines(f, n)
        except FileNotFoundError:
            return []


def _read(path: Path, f: BinaryIO, lines: int, *, keep_reading: bool, interval: float) -> Iterator[str]:
    try:
        for line in tail_lines(f, lines):
            yield line + "\n"
        if keep_reading:
            yield from follow(path, f, interval=interval)
    finally:
        f.close()
