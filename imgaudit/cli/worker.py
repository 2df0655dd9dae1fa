"""``imgaudit worker run|start|stop|force-stop|restart|status|logs``: the worker, and the worker as a
well-behaved daemon (``imgaudit.services.workers`` does the managing; this module only says what happened).

``worker run`` imports the worker and ``imgaudit.bootstrap`` inside the command: they load the whole
pipeline (numpy, ONNX Runtime, SQLAlchemy), which the management commands never need and must not wait
for.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from imgaudit.cli.common import App, ConfigOpt, JsonOpt, command_settings, emit, plain
from imgaudit.cli.logs import configure_logging
from imgaudit.cli.output import clean, console, out
from imgaudit.config import Settings
from imgaudit.services.runfiles import check_worker_name
from imgaudit.services.workers import WorkerInfo, WorkersService

EXIT_NOT_RUNNING = 3  # LSB: "program is not running"

worker_app = App(help="The always-on worker and its management.", no_args_is_help=True)

NameOpt = Annotated[str, typer.Option("--name", help="Worker name (pid, status and log files are per name).")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", help="Seconds to wait for the worker to exit (default: worker.stop_timeout).", min=0
    ),
]

WaitOpt = Annotated[
    float, typer.Option("--wait", help="Seconds to wait for the worker to report ready.", min=0)
]


@worker_app.command("run")
def worker_run(
    name: Annotated[
        str, typer.Option(help="Worker name (pid, status and log files are per name).")
    ] = "default",
    once: Annotated[bool, typer.Option(help="Stop when the queue is empty instead of waiting.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    daemon: Annotated[
        bool, typer.Option("--daemon", hidden=True, help="Started by `worker start`: log to the file only.")
    ] = False,
) -> None:
    """Run a worker in the foreground until SIGTERM/SIGINT (or, with --once, until the queue is empty)."""
    from imgaudit.bootstrap import worker_service
    from imgaudit.worker import Worker

    with command_settings(config) as settings:
        # Detached (`worker start`), stdout/stderr already are the log file: stderr logging would double
        # every line, and the summary below would be a stray line in a JSON Lines log.
        configure_logging(settings, check_worker_name(name), to_stderr=not daemon, capture_std=daemon)
        with worker_service(settings) as svc:
            worker = Worker(settings, svc, name)
            worker.install_signal_handlers()
            stats = worker.run(once=once)
        if daemon:
            return
        if as_json:
            emit({"event": "worker_stopped", **worker.status()})
        else:
            plain(
                f"worker {name} stopped: {stats.processed} processed, {stats.duplicates} duplicates, "
                f"{stats.failed} failed"
            )


def _say(as_json: bool, row: dict[str, object], text: str, *, problem: bool = False) -> None:
    """The row on stdout with --json, else the sentence (on stderr when it reports a problem)."""
    if as_json:
        emit(row)
    else:
        (console if problem else out).print(clean(text), markup=False)


def _start(settings: Settings, name: str, config: Path | None, wait: float, as_json: bool) -> None:
    started = WorkersService(settings).start(name, config, wait)
    row = {
        "event": "worker_start",
        "name": name,
        "pid": started.pid,
        "ready": started.ready,
        "log": str(started.log),
    }
    if not started.ready:
        _say(
            as_json,
            row,
            f"worker {name} started (pid {started.pid}) but not ready after {wait:g}s",
            problem=True,
        )
        console.print(
            clean(
                f"worker {name} is still starting; see `imgaudit worker status --name {name}` "
                f"and `imgaudit worker logs --name {name}`"
            ),
            markup=False,
        )
        raise typer.Exit(1)
    _say(as_json, row, f"worker {name} started (pid {started.pid}), log: {started.log}")


def _stop(settings: Settings, name: str, timeout: float | None, force: bool, as_json: bool) -> None:
    result = WorkersService(settings).stop(name, timeout, force=force)
    row = {"event": "worker_force_stop" if force else "worker_stop", "name": name, **result.as_dict()}
    if not result.was_running:
        extra = " (removed a stale pid file)" if result.stale_pid_file else ""
        _say(as_json, row, f"worker {name} is not running{extra}")
        return
    if not result.stopped:
        _say(
            as_json,
            row,
            f"worker {name} (pid {result.pid}) did not stop within {result.waited:g}s",
            problem=True,
        )
        console.print(
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


@worker_app.command("start")
def start(
    name: NameOpt = "default", wait: WaitOpt = 15.0, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Start a worker in the background (refused if one with this name already runs)."""
    with command_settings(config) as settings:
        _start(settings, check_worker_name(name), config, wait, as_json)


@worker_app.command("stop")
def stop(
    name: NameOpt = "default", timeout: TimeoutOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """Ask a worker to stop (SIGTERM): it finishes the batch in hand, saves the index, exits."""
    with command_settings(config) as settings:
        _stop(settings, check_worker_name(name), timeout, False, as_json)


@worker_app.command("force-stop")
def force_stop(name: NameOpt = "default", config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Kill a worker now (SIGKILL). Its claimed items go back to the queue when their lease expires."""
    with command_settings(config) as settings:
        _stop(settings, check_worker_name(name), None, True, as_json)


@worker_app.command("restart")
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
    with command_settings(config) as settings:
        name = check_worker_name(name)
        _stop(settings, name, timeout, False, as_json)  # each step says what happened as it happens
        _start(settings, name, config, wait, as_json)


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


def _row(i: WorkerInfo) -> list[str]:
    return [
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


STATUS_HEADER = ["NAME", "STATUS", "PID", "UPTIME", "STATE", "PROCESSED", "RATE/MIN", "QUEUE", "UPDATED"]


@worker_app.command("status")
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
    with command_settings(config) as settings:
        workers = WorkersService(settings)
        infos = workers.status(name)
        if as_json:
            for info in infos:
                emit({"event": "worker_status", **info.as_dict()})
        elif not infos:
            console.print(clean(f"no workers found in {workers.run_dir}"), markup=False)
        else:
            sys.stdout.write(_columns([STATUS_HEADER, *([clean(v) for v in _row(i)] for i in infos)]))
        if name is not None and not infos[0].running:
            raise typer.Exit(EXIT_NOT_RUNNING)


@worker_app.command("logs")
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
    with command_settings(config) as settings:
        text = WorkersService(settings).log(name, lines, follow=follow_)
        try:
            # Log lines quote URLs, file names and error messages: shown inert, like every other output.
            for chunk in text:
                sys.stdout.write(clean(chunk, multiline=True))
                sys.stdout.flush()
        except KeyboardInterrupt:
            return
        except BrokenPipeError:  # `imgaudit worker logs -f | head`: the reader left, so do we
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
