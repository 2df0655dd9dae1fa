"""``WorkersService`` without starting a worker: what it reads from the run files and /proc, and the log.

Starting and stopping real workers is end to end in test_worker_daemon.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imgaudit.config import Settings
from imgaudit.errors import ConfigError, DaemonError
from imgaudit.services import runfiles
from imgaudit.services.workers import WorkersService, is_worker_process


@pytest.fixture
def workers(settings: Settings) -> WorkersService:
    return WorkersService(settings)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def imgaudit_process() -> Iterator[int]:
    """A live process whose command line mentions imgaudit (what a worker's pid must be to be trusted)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "imgaudit"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _status(settings: Settings, name: str, **fields: object) -> None:
    now = datetime.now(UTC)
    row = {
        "name": name,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "state": "idle",
        "started_at": (now - timedelta(minutes=5)).isoformat(),
        "updated_at": now.isoformat(),
        "processed": 7,
        "duplicates": 1,
        "failed": 0,
        "rate_per_minute": 2.0,
        "queue_depth": 3,
    }
    runfiles.write_status(runfiles.status_path(settings, name), row | fields)


def test_nothing_known(workers: WorkersService, settings: Settings) -> None:
    assert workers.names() == [] and workers.status() == []
    (info,) = workers.status("w")
    assert (info.name, info.running, info.status, info.pid, info.state) == (
        "w",
        False,
        "not running",
        None,
        None,
    )
    assert info.log == str(settings.data_dir / "logs" / "worker-w.log")
    stopped = workers.stop("w")
    assert not stopped.was_running and stopped.stopped and stopped.waited == settings.worker.stop_timeout
    assert workers.stop("w", force=True).waited == 10.0


def test_names_are_checked(workers: WorkersService) -> None:
    for call in (
        lambda: workers.status("../x"),
        lambda: workers.stop("a/b"),
        lambda: workers.log("..", 5),
    ):
        with pytest.raises(ConfigError, match="invalid worker name"):
            call()


def test_stale_pid_file_is_reported_and_removed(workers: WorkersService, settings: Settings) -> None:
    pid_file = runfiles.pid_path(settings, "ghost")
    runfiles.write_pid(pid_file, _dead_pid())
    assert workers.names() == ["ghost"]
    info = workers.inspect("ghost", clean=False)
    assert info.status == "dead (stale pid file)" and not info.running and pid_file.exists()
    (info,) = workers.status()
    assert info.status == "dead (stale pid file)" and not pid_file.exists()
    runfiles.write_pid(pid_file, _dead_pid())
    stopped = workers.stop("ghost")
    assert not stopped.was_running and stopped.stale_pid_file and not pid_file.exists()
    assert stopped.as_dict() == {
        "was_running": False,
        "pid": stopped.pid,
        "stopped": True,
        "stale_pid_file": True,
    }


def test_a_running_worker_from_its_status_file(
    workers: WorkersService, settings: Settings, imgaudit_process: int
) -> None:
    """``worker run`` under systemd writes no pid file: its status file names the live process."""
    _status(settings, "sd", pid=imgaudit_process)
    info = workers.inspect("sd")
    assert info.running and info.status == "running" and not info.managed and info.pid == imgaudit_process
    assert (info.state, info.processed, info.queue_depth, info.rate_per_minute) == ("idle", 7, 3, 2.0)
    assert info.uptime_seconds is not None and 290 < info.uptime_seconds < 400
    assert info.updated_age_seconds is not None and info.updated_age_seconds < 60
    assert info.as_dict()["name"] == "sd"


def test_states_a_worker_left_behind(workers: WorkersService, settings: Settings) -> None:
    _status(settings, "gone", pid=_dead_pid(), state="working")
    _status(settings, "done", pid=_dead_pid(), state="stopped")
    _status(settings, "far", host="another-host")
    by_name = {i.name: i for i in workers.status()}
    assert list(by_name) == ["done", "far", "gone"]
    assert (by_name["gone"].status, by_name["gone"].state) == ("dead", "working (last reported)")
    assert (by_name["done"].status, by_name["done"].state) == ("stopped", "stopped")
    assert by_name["far"].status == "elsewhere" and by_name["far"].host == "another-host"
    assert not any(i.running for i in by_name.values())


def test_a_recycled_pid_is_not_a_worker() -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert not is_worker_process(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()
    assert not is_worker_process(0) and not is_worker_process(_dead_pid())


def test_log_tail_and_follow(workers: WorkersService, settings: Settings) -> None:
    with pytest.raises(DaemonError, match="no log for worker w"):
        workers.log("w", 5)
    path = runfiles.log_path(settings, "w")
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"line {i}\n" for i in range(10)))
    assert list(workers.log("w", 2)) == ["line 8\n", "line 9\n"]
    assert list(workers.log("w", 0)) == []
    following = workers.log("w", 1, follow=True, interval=0.01)
    assert next(following) == "line 9\n"
    with open(path, "a") as f:
        f.write("appended\n")
    assert next(following) == "appended\n"
    following.close()


def test_run_files_are_written_atomically(settings: Settings, tmp_path: Path) -> None:
    path = runfiles.status_path(settings, "w")
    runfiles.write_status(path, {"state": "idle", "at": datetime(2026, 1, 1, tzinfo=UTC)})
    assert runfiles.read_status(path) == {"state": "idle", "at": "2026-01-01 00:00:00+00:00"}
    assert [p.name for p in path.parent.iterdir()] == ["worker-w.json"]  # no temporary left behind
    path.write_text("[1, 2]")
    assert runfiles.read_status(path) is None  # not an object: as good as missing
    pid = runfiles.pid_path(settings, "w")
    runfiles.write_pid(pid, 42)
    assert runfiles.read_pid(pid) == 42
    runfiles.remove_pid(pid, 43)  # names another process now: kept
    assert pid.exists()
    runfiles.remove_pid(pid, 42)
    assert runfiles.read_pid(pid) is None
    pid.write_text("garbled")
    assert runfiles.read_pid(pid) == 0
    assert runfiles.names_in(tmp_path / "nowhere") == []
