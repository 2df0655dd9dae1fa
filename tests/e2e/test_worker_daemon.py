"""``imgaudit worker start|stop|force-stop|restart|status|logs`` and the worker's logging.

The lifecycle tests run the real CLI in subprocesses with the real model, the way an operator would:
the daemon is a real detached process, found again through its pid and status files. Every test that
starts a worker kills whatever is left in its data directory afterwards, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbs import db_env

from imgaudit.cli.logs import configure_logging
from imgaudit.config import Settings, load_settings
from imgaudit.services import runfiles
from imgaudit.services.runfiles import follow, read_pid, tail_lines
from imgaudit.services.workers import is_worker_process
from imgaudit.store.sql import SqlStore
from imgaudit.testing.fakes import jpeg_bytes, textured_image

CLI = [sys.executable, "-m", "imgaudit.cli"]

# Seeds that the real descriptor keeps apart (see test_cli.py): the copy is the only duplicate.
ORIGINAL_SEEDS = (278, 371, 246)


# -- helpers ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


@dataclass
class Bench:
    """One data directory, the environment that points the CLI at it, and the CLI itself."""

    root: Path
    data: Path
    env: dict[str, str]

    def run(self, *args: str | Path, expect: int | None = 0, timeout: float = 120, **env: str) -> Run:
        proc = subprocess.run(
            [*CLI, *map(str, args)],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if expect is not None:
            assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def status(self, name: str = "default") -> dict[str, Any]:
        run = self.run("worker", "status", "--name", name, "--json", expect=None)
        (row,) = run.rows
        assert run.rc == (0 if row["running"] else 3), run
        return row

    @property
    def run_dir(self) -> Path:
        return self.data / "run"

    def pid_file(self, name: str = "default") -> Path:
        return self.run_dir / f"worker-{name}.pid"

    def log_file(self, name: str = "default") -> Path:
        return self.data / "logs" / f"worker-{name}.log"

    def settings(self) -> Settings:
        return load_settings(data_dir=self.data, database_url=self.env.get("IMGAUDIT_DATABASE_URL", ""))


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kill_leftovers(run_dir: Path) -> None:
    """SIGKILL every imgaudit process named by a pid or status file (never anything else)."""
    pids: set[int] = set()
    for path in run_dir.glob("worker-*.pid"):
        pid = read_pid(path)
        if pid:
            pids.add(pid)
    for path in run_dir.glob("worker-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pids.add(int(json.loads(path.read_text())["pid"]))
    for pid in pids:
        if is_worker_process(pid):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGAUDIT_")}
    env.update(db_env(data))
    env.update(
        IMGAUDIT_DATA_DIR=str(data),
        IMGAUDIT_WORKER__STATUS_EVERY="0.2",  # status file fresh enough to poll
        IMGAUDIT_WORKER__IDLE_SLEEP="0.2",
    )
    b = Bench(tmp_path, data, env)
    try:
        yield b
    finally:
        kill_leftovers(b.run_dir)


def make_folder(folder: Path) -> int:
    """Three originals, a byte copy of one, a text file named .jpg: 5 items, 1 duplicate, 1 failure."""
    folder.mkdir(parents=True)
    for i, seed in enumerate(ORIGINAL_SEEDS):
        (folder / f"o{i}.jpg").write_bytes(jpeg_bytes(textured_image(seed, (640, 480)), quality=90))
    (folder / "o0_copy.jpg").write_bytes((folder / "o0.jpg").read_bytes())
    (folder / "broken.jpg").write_text("not an image\n")
    return len(ORIGINAL_SEEDS) + 2


# -- the daemon lifecycle --------------------------------------------------------------------------------


@pytest.mark.model
def test_start_process_logs_stop(bench: Bench) -> None:
    bench.env["IMGAUDIT_LOG__JSON_LINES"] = "true"
    started = bench.run("worker", "start", "--json").rows[0]
    pid = started["pid"]
    assert started["event"] == "worker_start" and started["ready"] is True
    assert read_pid(bench.pid_file()) == pid and is_worker_process(pid)

    row = bench.status()
    assert row["running"] is True and row["status"] == "running" and row["pid"] == pid
    assert row["state"] in ("idle", "working") and row["uptime_seconds"] >= 0

    # a second start is refused and leaves the first alone
    second = bench.run("worker", "start", expect=1)
    assert "already running" in second.stderr and str(pid) in second.stderr
    assert read_pid(bench.pid_file()) == pid and is_worker_process(pid)

    n = make_folder(bench.root / "imgs")
    bench.run("enqueue", bench.root / "imgs")
    row = wait_for(
        "the worker to process the folder", lambda: (r := bench.status())["processed"] == n and r, 60
    )
    assert row["failed"] == 1 and row["duplicates"] == 1 and row["queue_depth"] == 0

    (stats,) = bench.run("stats", "--json").rows
    assert stats["status"] == {"done": n - 1, "failed_permanent": 1}
    assert stats["decision"] == {"unique": n - 2, "duplicate": 1}

    # the log: JSON Lines, with the worker's structured fields
    tail = bench.run("worker", "logs", "-n", "5").stdout.splitlines()
    assert 0 < len(tail) <= 5
    records = [json.loads(line) for line in bench.log_file().read_text().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in records)
    batches = [r for r in records if r.get("event") == "batch"]
    assert batches and all(isinstance(r["timings"], dict) for r in batches)
    assert sum(int(r["msg"].split()[1]) for r in batches) == n - 1  # "batch: 4 done, 1 failed ..."
    assert any(r["level"] == "WARNING" and "failed" in r["msg"] for r in records)
    assert json.loads(tail[-1]) == records[-1]

    stopped = bench.run("worker", "stop", "--json").rows[0]
    assert stopped["was_running"] is True and stopped["stopped"] is True and stopped["pid"] == pid
    assert not is_worker_process(pid) and not bench.pid_file().exists()
    row = bench.status()  # exit code 3, checked by status()
    assert row["running"] is False and row["status"] == "stopped" and row["processed"] == n
    assert any(
        "stopped after" in r["msg"] for r in map(json.loads, bench.log_file().read_text().splitlines())
    )

    # stopping again: nothing to do, not an error
    again = bench.run("worker", "stop")
    assert "not running" in again.stdout


@pytest.mark.model
def test_restart_and_force_stop(bench: Bench) -> None:
    first = bench.run("worker", "start", "--name", "w1", "--json").rows[0]["pid"]
    rows = bench.run("worker", "restart", "--name", "w1", "--json").rows
    assert [r["event"] for r in rows] == ["worker_stop", "worker_start"]
    second = rows[1]["pid"]
    assert second != first and not is_worker_process(first) and is_worker_process(second)
    assert bench.status("w1")["pid"] == second

    # a worker that does not exit in time (frozen here with SIGSTOP): stop gives up, says what to do
    os.kill(second, signal.SIGSTOP)
    late = bench.run("worker", "stop", "--name", "w1", "--timeout", "0.5", expect=1)
    assert "did not stop within 0.5s" in late.stderr and "force-stop" in late.stderr
    assert is_worker_process(second) and read_pid(bench.pid_file("w1")) == second

    killed = bench.run("worker", "force-stop", "--name", "w1", "--json").rows[0]
    assert killed["event"] == "worker_force_stop" and killed["stopped"] is True
    assert not is_worker_process(second) and not bench.pid_file("w1").exists()
    row = bench.status("w1")
    assert row["running"] is False and row["status"] == "killed"

    # status without --name lists every worker found, and exits 0 even when none runs
    listed = bench.run("worker", "status", "--json").rows
    assert [(r["name"], r["running"]) for r in listed] == [("w1", False)]
    text = bench.run("worker", "status").stdout
    assert text.splitlines()[0].split()[:2] == ["NAME", "STATUS"] and "w1" in text and "killed" in text


@pytest.mark.model
def test_sigterm_during_a_batch_finishes_it(bench: Bench) -> None:
    folder = bench.root / "many"
    folder.mkdir()
    n = 40
    for i in range(n):
        (folder / f"i{i:02d}.jpg").write_bytes(jpeg_bytes(textured_image(1000 + i, (320, 240)), quality=85))
    bench.run("enqueue", folder)
    store = SqlStore(bench.settings().store_url)
    status_file = bench.run_dir / "worker-default.json"

    def in_batch() -> bool:
        # The status file is rewritten between batches, not when one starts: items in 'processing'
        # are the direct evidence that a batch is in hand.
        try:
            state = json.loads(status_file.read_text()).get("state")
        except (OSError, ValueError):
            state = None
        return state == "working" or store.counts()["status"].get("processing", 0) > 0

    with open(bench.root / "worker.out", "wb") as out:
        proc = subprocess.Popen(
            [*CLI, "worker", "run"],
            cwd=bench.root,
            env={**bench.env, "IMGAUDIT_WORKER__BATCH_SIZE": "40"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for("a batch to be claimed", in_batch, 60, interval=0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, (bench.root / "worker.out").read_text()
        status = store.counts()["status"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store.close()
    assert status.get("processing", 0) == 0, status
    finished = status.get("done", 0) + status.get("failed_permanent", 0)
    assert finished == n or status.get("queued", 0) == n, status
    output = (bench.root / "worker.out").read_text()
    assert "finishing the batch in hand" in output and "worker default stopped" in output


# -- pid files ---------------------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not is_worker_process(proc.pid)
    return proc.pid


def test_stale_pid_file_is_reported_and_cleaned(bench: Bench) -> None:
    bench.run_dir.mkdir(parents=True)
    bench.pid_file("ghost").write_text(f"{dead_pid()}\n")
    (row,) = bench.run("worker", "status", "--json").rows
    assert row["name"] == "ghost" and row["running"] is False and row["status"] == "dead (stale pid file)"
    assert not bench.pid_file("ghost").exists()
    assert bench.status("ghost")["status"] == "not running"  # exit code 3

    bench.pid_file("ghost").write_text(f"{dead_pid()}\n")
    run = bench.run("worker", "stop", "--name", "ghost")
    assert "not running" in run.stdout and "stale pid file" in run.stdout
    assert not bench.pid_file("ghost").exists()


def test_a_recycled_pid_is_never_signalled(bench: Bench) -> None:
    """A pid file naming a live process that is not imgaudit (the pid was reused) is stale, and neither
    stop nor force-stop touches that process."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        bench.run_dir.mkdir(parents=True)
        for verb in ("stop", "force-stop"):
            bench.pid_file().write_text(f"{bystander.pid}\n")
            assert "not running" in bench.run("worker", verb).stdout
            assert bystander.poll() is None
            assert not bench.pid_file().exists()
        bench.pid_file().write_text(f"{bystander.pid}\n")
        assert bench.status()["status"] == "dead (stale pid file)"
    finally:
        bystander.kill()
        bystander.wait()


def test_start_failure_shows_the_log(bench: Bench) -> None:
    """A worker refused by its settings while starting: start says why with the end of its log, exits 1,
    leaves no pid file."""
    run = bench.run("worker", "start", expect=1, IMGAUDIT_INDEX__BACKEND="bogus")
    assert "exited with code 1 while starting" in run.stderr
    assert "error: unknown index backend 'bogus'" in run.stderr  # the last line of the log
    assert not bench.pid_file().exists()
    assert "unknown index backend 'bogus'" in bench.log_file().read_text()


def test_start_crash_shows_the_traceback(bench: Bench) -> None:
    """A worker that crashes while starting (an error nobody foresaw): the log keeps the traceback and
    start shows its end."""
    blocker = bench.root / "not-a-directory"
    blocker.write_text("")
    run = bench.run("worker", "start", expect=1, IMGAUDIT_CACHE_DIR=str(blocker / "cache"))
    assert "exited with code 1 while starting" in run.stderr
    assert not bench.pid_file().exists()
    log = bench.log_file().read_text()
    assert "worker crashed" in log and "Traceback" in log


def test_file_layout_matches_the_worker(settings: Settings) -> None:
    """The worker writes its status file where the management commands read it: one layout, defined once."""
    from imgaudit import worker

    assert worker.status_path is runfiles.status_path and worker.write_status is runfiles.write_status
    assert runfiles.status_path(settings, "w-1") == settings.data_dir / "run" / "worker-w-1.json"


def test_worker_names_are_checked(bench: Bench) -> None:
    for verb in ("start", "status", "logs"):
        run = bench.run("worker", verb, "--name", "../escape", expect=1)
        assert "invalid worker name" in run.stderr
    assert not (bench.root / "escape.pid").exists() and not (bench.data / "escape.pid").exists()


# -- logs ------------------------------------------------------------------------------------------------


def test_logs_follow_survives_rotation(bench: Bench) -> None:
    log = bench.log_file("x")
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"old {i}\n" for i in range(10)))
    with open(bench.root / "follow.out", "wb") as out:
        proc = subprocess.Popen(
            [*CLI, "worker", "logs", "--name", "x", "-f", "-n", "2"],
            cwd=bench.root,
            env=bench.env,
            stdout=out,
            stderr=subprocess.PIPE,
        )
    try:
        output = bench.root / "follow.out"
        wait_for("the tail", lambda: output.read_text() == "old 8\nold 9\n", 20, interval=0.1)
        with open(log, "a") as f:
            f.write("appended\n")
        wait_for("the appended line", lambda: output.read_text().endswith("appended\n"), 10, interval=0.1)
        log.rename(log.with_name(log.name + ".1"))  # what RotatingFileHandler does
        log.write_text("after rotation\n")
        wait_for("the new file", lambda: output.read_text().endswith("after rotation\n"), 10, interval=0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert output.read_text() == "old 8\nold 9\nappended\nafter rotation\n"


def test_logs_without_a_log_file(bench: Bench) -> None:
    run = bench.run("worker", "logs", "--name", "nobody", expect=1)
    assert "no log for worker nobody" in run.stderr


def test_tail_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"".join(b"line %d %s\n" % (i, b"x" * (i % 50)) for i in range(3000)))
    with open(path, "rb") as f:
        assert tail_lines(f, 3, block=64) == [f"line {i} {'x' * (i % 50)}" for i in (2997, 2998, 2999)]
        assert f.tell() == path.stat().st_size
        assert len(tail_lines(f, 5000)) == 3000
        assert tail_lines(f, 0) == []
    path.write_bytes(b"no newline at the end")
    with open(path, "rb") as f:
        assert tail_lines(f, 2) == ["no newline at the end"]


def test_follow_handles_truncation(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("first line\n")
    chunks: list[str] = []

    def sleep(_: float) -> None:  # instead of waiting: truncate, copytruncate-style (same file, shorter)
        path.write_text("x\n")

    f = open(path, "rb")  # noqa: SIM115 - follow() closes it
    f.seek(0, os.SEEK_END)
    chunks.extend(follow(path, f, sleep=sleep, should_stop=lambda: bool(chunks)))
    assert chunks == ["x\n"] and f.closed


# -- configure_logging -----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, pkg = logging.getLogger(), logging.getLogger("imgaudit")
    handlers, levels, hook = list(root.handlers), (root.level, pkg.level), sys.excepthook
    try:
        yield
    finally:
        for h in root.handlers:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(levels[0])
        pkg.setLevel(levels[1])
        sys.excepthook = hook
        logging.captureWarnings(False)


def test_text_log_format_and_idempotence(settings: Settings, restore_logging: None) -> None:
    configure_logging(settings, "t", to_stderr=False)
    path = configure_logging(settings, "t", to_stderr=False)  # twice: still one line per record
    assert path == settings.data_dir / "logs" / "worker-t.log"
    log = logging.getLogger("imgaudit.worker")
    log.info("hello %s", "world", extra={"event": "greeting"})
    log.debug("not at INFO")
    logging.getLogger("somelib").info("libraries stay at WARNING")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    text = path.read_text()
    lines = text.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO imgaudit\.worker hello world", lines[0])
    assert text.count("hello world") == 1 and "not at INFO" not in text and "libraries" not in text
    assert " ERROR imgaudit.worker it failed" in lines[1] and "ValueError: boom" in text


def test_json_log_lines(settings: Settings, restore_logging: None) -> None:
    settings = settings.model_copy(update={"log": settings.log.model_copy(update={"json_lines": True})})
    path = configure_logging(settings, "j", to_stderr=False)
    log = logging.getLogger("imgaudit.worker")
    log.info("batch: %d done", 3, extra={"event": "batch", "timings": {"embed": 0.5}, "odd": Path("/x")})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert (
        first["level"] == "INFO" and first["logger"] == "imgaudit.worker" and first["msg"] == "batch: 3 done"
    )
    assert first["event"] == "batch" and first["timings"] == {"embed": 0.5} and first["odd"] == "/x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert "args" not in first and "exc_info" not in first
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc_info"]


def test_log_to_stderr_and_rotation(
    settings: Settings, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings.model_copy(
        update={"log": settings.log.model_copy(update={"max_bytes": 1024, "backups": 2, "level": "debug"})}
    )
    path = configure_logging(settings, "r", to_stderr=True)
    log = logging.getLogger("imgaudit.test")
    for i in range(100):
        log.debug("line %03d %s", i, "x" * 40)
    assert "line 099" in capsys.readouterr().err
    assert path.stat().st_size <= 1024
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["worker-r.log", "worker-r.log.1", "worker-r.log.2"]
    assert "line 099" in path.read_text()


def test_invalid_log_level(settings: Settings, restore_logging: None) -> None:
    from imgaudit.errors import ConfigError

    settings = settings.model_copy(update={"log": settings.log.model_copy(update={"level": "LOUD"})})
    with pytest.raises(ConfigError, match=r"log\.level"):
        configure_logging(settings, "x", to_stderr=False)


# -- store outages -----------------------------------------------------------------------------------------


def test_the_worker_waits_out_a_store_outage(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The store raising StoreUnavailable (the database away) is waited out, not a crash; the status file
    keeps its last queue depth meanwhile."""
    from imgaudit.errors import StoreUnavailable
    from imgaudit.services.worker import StepReport
    from imgaudit.worker import Worker

    class FlakyService:
        worker_id = "test"
        steps = 0

        def queue_depth(self) -> int:
            if self.steps:
                raise StoreUnavailable("the database is unavailable: OperationalError: gone")
            return 4

        def step(self, on_claimed: object) -> StepReport:
            self.steps += 1
            if self.steps == 1:
                raise StoreUnavailable("the database is unavailable: OperationalError: gone")
            return StepReport()

        def save(self) -> None:
            pass

    worker_settings = settings.worker.model_copy(update={"idle_sleep": 0.01, "status_every": 0})
    settings = settings.model_copy(update={"worker": worker_settings})
    service = FlakyService()
    with caplog.at_level(logging.WARNING, logger="imgaudit.worker"):
        stats = Worker(settings, service, "t").run(once=True)
    assert service.steps == 2 and stats.processed == 0
    assert "database unavailable (the database is unavailable: OperationalError: gone)" in caplog.text
    status = json.loads((settings.data_dir / "run" / "worker-t.json").read_text())
    assert status["state"] == "stopped" and status["queue_depth"] == 4
