"""``imgaudit worker start|stop|force-stop|restart|status|logs``: the worker as a well-behaved daemon.

This replaces the legacy shell script. Under systemd (``deploy/imgaudit-worker@.service``) only
``worker run`` is needed; these commands are for hosts without a service manager and for humans.

Files, all per worker name, in ``data_dir``: ``run/worker-<name>.pid`` (written by ``start``),
``run/worker-<name>.json`` (the status the worker itself writes), ``logs/worker-<name>.log``.

A pid file is only trusted if the process is alive and its command line mentions imgaudit: after a
reboot or a crash the number may belong to an unrelated process, which must never be signalled.
"""

from __future__ import annotations

import contextlib
import json
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
from typing import Annotated, Any

import typer

from imgaudit.cli.logs import check_worker_name, follow, log_path, tail_lines
from imgaudit.cli.output import clean
from imgaudit.config import Settings
from imgaudit.errors import ImgauditError

# Defined here rather than imported from main: main imports this module at its end, and this module
# must also import cleanly on its own (tests do).
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file.", exists=True, dir_okay=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines on stdout, for scripts.")]
NameOpt = Annotated[str, typer.Option("--name", help="Worker name (pid, status and log files are per name).")]

UP_STATES = frozenset({"idle", "working", "waiting_for_database"})
START_LOG_LINES = 20
EXIT_NOT_RUNNING = 3  # LSB: "program is not running"


class DaemonError(ImgauditError):
    """The worker could not be managed."""

    reason = "daemon"


# -- processes and files ---------------------------------------------------------------------------------

# The same layout as ``imgaudit.worker`` (a test checks they agree), not imported from there: that module
# pulls in the whole pipeline (numpy, OpenCV, SQLAlchemy...), which would add ~0.6 s to every command.


def run_dir(settings: Settings) -> Path:
    return settings.data_dir / "run"


def status_path(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"worker-{check_worker_name(name)}.json"


def write_status(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".mark.tmp")  # not the worker's own temporary name
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def pid_path(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"worker-{check_worker_name(name)}.pid"


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


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


def remove_pid(path: Path, pid: int | None = None) -> None:
    """Remove the pid file, unless it meanwhile names another process (a concurrent start)."""
    if pid is not None and read_pid(path) not in (pid, None, 0):
        return
    path.unlink(missing_ok=True)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def name_lock(settings: Settings, name: str) -> Iterator[None]:
    """Serialise start/stop of one worker name, so two concurrent ``start`` cannot both spawn."""
    import fcntl

    path = run_dir(settings) / f"worker-{check_worker_name(name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


@dataclass
class WorkerInfo:
    """What ``worker status`` reports for one name, from its pid file, status file and /proc."""

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


def inspect(settings: Settings, name: str, *, clean: bool = True) -> WorkerInfo:
    """Where worker ``name`` stands. With ``clean``, a stale pid file (dead process) is removed.

    A worker without a pid file (``worker run`` in a terminal or under systemd) counts as running when
    its status file names a live imgaudit process on this host that has not reported ``stopped``.
    """
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


def known_workers(settings: Settings) -> list[str]:
    """Every worker name with a pid file or a status file in ``data_dir/run``."""
    names: set[str] = set()
    directory = run_dir(settings)
    for pattern in ("worker-*.pid", "worker-*.json"):
        for path in directory.glob(pattern):
            name = path.name[len("worker-") :].rsplit(".", 1)[0]
            with contextlib.suppress(ImgauditError):
                names.add(check_worker_name(name))
    return sorted(names)


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` is no longer a live imgaudit process; False if it still is at the deadline."""
    deadline = time.monotonic() + timeout
    while is_worker_process(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _last_log_lines(settings: Settings, name: str, n: int) -> list[str]:
    try:
        with open(log_path(settings, name), "rb") as f:
            return tail_lines(f, n)
    except FileNotFoundError:
        return []


# -- the operations (no printing: they return what happened or raise DaemonError) ------------------------


@dataclass
class Started:
    pid: int
    log: Path
    ready: bool  # False: still starting when the wait ran out


def start_worker(settings: Settings, name: str, config: Path | None, wait: float) -> Started:
    """Spawn ``imgaudit worker run --daemon`` detached and wait until it reports for work.

    The child gets its own session (no controlling terminal, survives the shell), /dev/null as stdin,
    and the log file as stdout/stderr, so a crash before logging is set up is still recorded. It
    inherits the environment and the working directory; the data directory is passed as an absolute
    path so that pid file, status file and store agree whatever the child's settings say.
    """
    pfile = pid_path(settings, name)
    with name_lock(settings, name):
        info = inspect(settings, name)
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
                lines = _last_log_lines(settings, name, START_LOG_LINES)
                raise DaemonError(
                    f"worker {name} exited with code {proc.returncode} while starting; "
                    f"last lines of {log}:\n" + "\n".join(lines)
                )
            status = read_status(spath)
            if status is not None and status.get("pid") == proc.pid and status.get("state") in UP_STATES:
                return Started(proc.pid, log, ready=True)
            if time.monotonic() >= deadline:
                return Started(proc.pid, log, ready=False)
            time.sleep(0.1)


@dataclass
class Stopped:
    was_running: bool
    pid: int | None
    stopped: bool  # False: still running when the wait ran out
    stale_pid_file: bool = False


def stop_worker(settings: Settings, name: str, timeout: float, *, force: bool = False) -> Stopped:
    """SIGTERM (the batch in hand is finished first) or, with ``force``, SIGKILL, then wait for exit.

    A killed worker's claimed items stay claimed until their lease (``lease_seconds``) expires, then go
    back to the queue; its status file is marked ``killed`` so nobody mistakes it for a live one.
    """
    pfile = pid_path(settings, name)
    with name_lock(settings, name):
        info = inspect(settings, name)
        if not info.running or info.pid is None:
            return Stopped(False, info.pid, True, stale_pid_file=info.status == "dead (stale pid file)")
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
            return Stopped(True, pid, False)
        remove_pid(pfile, pid)
        if force:
            spath = status_path(settings, name)
            status = read_status(spath)
            if status is not None and status.get("pid") == pid:
                now = datetime.now(UTC).isoformat()
                write_status(spath, {**status, "state": "killed", "updated_at": now})
        return Stopped(True, pid, True)


# -- the commands ----------------------------------------------------------------------------------------


def _cli() -> Any:
    """The main CLI module, for its shared helpers (imported late: it imports this module)."""
    from imgaudit.cli import main

    return main


def _say(as_json: bool, row: dict[str, Any], text: str, *, problem: bool = False) -> None:
    """The row on stdout with --json, else the sentence (on stderr when it reports a problem)."""
    cli = _cli()
    if as_json:
        cli._emit(row)
    else:
        (cli.console if problem else cli.out).print(clean(text), markup=False)


def _do_start(settings: Settings, name: str, config: Path | None, wait: float, as_json: bool) -> None:
    started = start_worker(settings, name, config, wait)
    row = {"event": "worker_start", "name": name, "pid": started.pid, "ready": started.ready}
    row["log"] = str(started.log)
    if not started.ready:
        _say(
            as_json,
            row,
            f"worker {name} started (pid {started.pid}) but not ready after {wait:g}s",
            problem=True,
        )
        _cli().console.print(
            clean(
                f"worker {name} is still starting; see `imgaudit worker status --name {name}` "
                f"and `imgaudit worker logs --name {name}`"
            ),
            markup=False,
        )
        raise typer.Exit(1)
    _say(as_json, row, f"worker {name} started (pid {started.pid}), log: {started.log}")


def _do_stop(settings: Settings, name: str, timeout: float, force: bool, as_json: bool) -> None:
    result = stop_worker(settings, name, timeout, force=force)
    row = {"event": "worker_force_stop" if force else "worker_stop", "name": name, **asdict(result)}
    if not result.was_running:
        extra = " (removed a stale pid file)" if result.stale_pid_file else ""
        _say(as_json, row, f"worker {name} is not running{extra}")
        return
    if not result.stopped:
        _say(as_json, row, f"worker {name} (pid {result.pid}) did not stop within {timeout:g}s", problem=True)
        _cli().console.print(
            "it finishes the batch in hand before exiting: wait and try again, or "
            f"`imgaudit worker force-stop --name {name}`"
            if not force
            else "the process did not die after SIGKILL (stuck in the kernel?)",
            markup=False,
        )
        raise typer.Exit(1)
    if force:
        text = (
            f"worker {name} killed (pid {result.pid}); its claimed items return to the queue when their "
            f"lease expires ({settings.lease_seconds}s)"
        )
    else:
        text = f"worker {name} stopped (pid {result.pid})"
    _say(as_json, row, text)


def start(
    name: NameOpt = "default",
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the worker to report ready.", min=0)
    ] = 15.0,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a worker in the background (refused if one with this name already runs)."""
    cli = _cli()
    with cli._errors():
        settings = cli._settings(config)
        _do_start(settings, check_worker_name(name), config, wait, as_json)


TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", help="Seconds to wait for the worker to exit (default: worker.stop_timeout).", min=0
    ),
]


def stop(
    name: NameOpt = "default", timeout: TimeoutOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Ask a worker to stop (SIGTERM): it finishes the batch in hand, saves the index, exits."""
    cli = _cli()
    with cli._errors():
        settings = cli._settings(config)
        wait = settings.worker.stop_timeout if timeout is None else timeout
        _do_stop(settings, check_worker_name(name), wait, False, as_json)


def force_stop(name: NameOpt = "default", config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Kill a worker now (SIGKILL). Its claimed items go back to the queue when their lease expires."""
    cli = _cli()
    with cli._errors():
        settings = cli._settings(config)
        _do_stop(settings, check_worker_name(name), 10.0, True, as_json)


def restart(
    name: NameOpt = "default",
    timeout: TimeoutOpt = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the new worker to report ready.", min=0)
    ] = 15.0,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop the worker (gracefully) if it runs, then start it again."""
    cli = _cli()
    with cli._errors():
        settings = cli._settings(config)
        name = check_worker_name(name)
        _do_stop(settings, name, settings.worker.stop_timeout if timeout is None else timeout, False, as_json)
        _do_start(settings, name, config, wait, as_json)


def _columns(rows: list[list[str]]) -> str:
    """Plain aligned columns, like ``ps``: never truncated or wrapped, whatever the terminal width."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def status(
    name: Annotated[
        str | None, typer.Option("--name", help="Only this worker; exit code 0 if it runs, 3 if not.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every worker found in data_dir/run (or one): running?, pid, uptime, state, throughput, queue.

    A pid file left by a dead process is reported as such and removed.
    """
    cli = _cli()
    with cli._errors():
        settings = cli._settings(config)
        names = [check_worker_name(name)] if name is not None else known_workers(settings)
        infos = [inspect(settings, n) for n in names]
        if as_json:
            for info in infos:
                cli._emit({"event": "worker_status", **asdict(info)})
        elif not infos:
            cli.console.print(clean(f"no workers found in {run_dir(settings)}"), markup=False)
        else:
            rows = [
                [
                    i.name,
                    i.status,
                    str(i.pid) if i.pid else "-",
                    _age(i.uptime_seconds),
                    i.state or "-",
                    "-" if i.processed is None else str(i.processed),
                    "-" if i.rate_per_minute is None else f"{i.rate_per_minute:g}",
                    "-" if i.queue_depth is None else str(i.queue_depth),
                    "-" if i.updated_age_seconds is None else f"{_age(i.updated_age_seconds)} ago",
                ]
                for i in infos
            ]
            header = ["NAME", "STATUS", "PID", "UPTIME", "STATE", "PROCESSED", "RATE/MIN", "QUEUE", "UPDATED"]
            sys.stdout.write(_columns([header, *([clean(v) for v in r] for r in rows)]))
        if name is not None and not infos[0].running:
            raise typer.Exit(EXIT_NOT_RUNNING)


def logs(
    name: NameOpt = "default",
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="How many of the last lines to print.", min=0)
    ] = 50,
    config: ConfigOpt = None,
) -> None:
    """Print the end of a worker's log; with -f, follow it (rotation included) until Ctrl-C."""
    cli = _cli()
    with cli._errors():
        settings = cli._settings(config)
        path = log_path(settings, check_worker_name(name))
        try:
            f = open(path, "rb")  # noqa: SIM115 - follow() closes it
        except FileNotFoundError as exc:
            raise DaemonError(f"no log for worker {name} ({path})") from exc
        try:
            # Log lines quote URLs, file names and error messages: shown inert, like every other output.
            for line in tail_lines(f, lines):
                sys.stdout.write(clean(line, multiline=True) + "\n")
            sys.stdout.flush()
            if not follow_:
                f.close()
                return
            for text in follow(path, f, interval=0.5):
                sys.stdout.write(clean(text, multiline=True))
                sys.stdout.flush()
        except KeyboardInterrupt:
            return
        except BrokenPipeError:  # `imgaudit worker logs -f | head`: the reader left, so do we
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        finally:
            f.close()


def register(worker_app: typer.Typer) -> None:
    """Add the management commands to the ``worker`` group (next to ``worker run``)."""
    worker_app.command("start")(start)
    worker_app.command("stop")(stop)
    worker_app.command("force-stop")(force_stop)
    worker_app.command("restart")(restart)
    worker_app.command("status")(status)
    worker_app.command("logs")(logs)
