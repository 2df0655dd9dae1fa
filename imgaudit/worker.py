"""The worker process: runs ``WorkerService.step`` until told to stop.

SIGTERM or SIGINT asks it to stop: the batch in hand is finished and written, the index snapshot
saved, then the process exits 0. A second signal interrupts the batch, which is released (its items
go back to the queue untouched). A process killed outright (SIGKILL, power loss) leaves its items
claimed; their lease expires and another worker takes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

from imgaudit.config import Settings
from imgaudit.errors import StoreUnavailable
from imgaudit.services.runfiles import status_path, write_status
from imgaudit.services.worker import StepReport, WorkerService, WorkerStats

log = logging.getLogger("imgaudit.worker")


class Worker:
    def __init__(self, settings: Settings, service: WorkerService, name: str) -> None:
        self.settings = settings
        self.service = service
        self.name = name
        self.stats = WorkerStats()
        self.stop = threading.Event()
        self.started = datetime.now(UTC)
        self.state = "starting"
        self._status_at = 0.0

    def install_signal_handlers(self) -> None:
        def ask_to_stop(signum: int, _frame: object) -> None:
            if self.stop.is_set():  # second signal: interrupt the batch in hand
                raise KeyboardInterrupt
            log.info("signal %s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
            self.stop.set()
            self.state = "stopping"

        signal.signal(signal.SIGTERM, ask_to_stop)
        signal.signal(signal.SIGINT, ask_to_stop)

    def status(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "name": self.name,
            "worker_id": self.service.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "state": self.state,
            "started_at": self.started.isoformat(),
            "updated_at": now.isoformat(),
            "uptime_seconds": round((now - self.started).total_seconds(), 1),
            "processed": self.stats.processed,
            "duplicates": self.stats.duplicates,
            "failed": self.stats.failed,
            "lost_leases": self.stats.lost,
            "fed": self.stats.fed,
            "written_back": self.stats.written_back,
            "rate_per_minute": self.stats.rate_per_minute(),
            "busy_seconds": round(self.stats.busy_seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.stats.timings.items()},
            "queue_depth": self._queue_depth,
        }

    def _claimed(self, n: int) -> None:
        """Show "working" while a batch is in hand, not only after it (long batches)."""
        self.state = "working"
        self._report(None, force=True)

    def _report(self, step: StepReport | None, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._status_at >= self.settings.worker.status_every:
            # while the database is away the status file keeps the last known depth
            with contextlib.suppress(StoreUnavailable):
                self._queue_depth = self.service.queue_depth()
            write_status(status_path(self.settings, self.name), self.status())
            self._status_at = now

    def run(self, once: bool = False) -> WorkerStats:
        """Loop until stopped (or, with ``once``, until the queue is empty)."""
        self._queue_depth = self.service.queue_depth()
        self.state = "idle"
        self._report(None, force=True)
        last_save = time.monotonic()
        log.info(
            "worker %s started (pid %d, batch %d)", self.name, os.getpid(), self.settings.worker.batch_size
        )
        try:
            failures_in_a_row = 0
            while not self.stop.is_set():
                self.state = "working"
                try:
                    step = self.service.step(self._claimed)
                    failures_in_a_row = 0
                except StoreUnavailable as exc:
                    # The database went away (restart, failover, network): items claimed by the failed
                    # step come back when their lease expires; wait and reconnect. (The business table
                    # going away is not this: the step carries on without it, see step.external_error.)
                    failures_in_a_row += 1
                    delay = min(30.0, self.settings.worker.idle_sleep * 2 ** min(failures_in_a_row, 5))
                    log.warning("database unavailable (%s); retrying in %.1fs", exc.message, delay)
                    self.state = "waiting_for_database"
                    self.stop.wait(delay)
                    continue
                self.stats.add(step)
                if step.external_error:
                    log.warning("business database unavailable: %s", step.external_error)
                if step.batch is not None:
                    b = step.batch
                    log.info(
                        "batch: %d done, %d failed, %d lost leases in %.2fs",
                        len(b.completions),
                        len(b.failures),
                        len(b.lost),
                        step.seconds,
                        extra={"event": "batch", "timings": dict(b.timings)},
                    )
                    for f in b.failures:
                        log.warning("item %d failed: %s: %s", f.id, f.error.reason, f.error.message)
                if time.monotonic() - last_save >= self.settings.worker.save_every:
                    self.service.save()
                    last_save = time.monotonic()
                if not step.claimed:
                    self.state = "idle"
                    self._report(step)
                    if once:
                        break
                    self.stop.wait(self.settings.worker.idle_sleep)
                else:
                    self._report(step)
        finally:
            self.state = "stopping"
            try:
                self.service.save()
            except StoreUnavailable:
                log.warning("could not save the index snapshot: database unavailable")
            self.state = "stopped"
            self._report(None, force=True)
            log.info("worker %s stopped after %d items", self.name, self.stats.processed)
        return self.stats
