"""Worker logging: one rotating file per worker name, text or JSON Lines, optionally echoed to stderr.

Only the entry points configure logging (library modules just call ``logging.getLogger``), so a test or
an embedding application keeps control of its own handlers. The file lives in the data directory with
the worker's other run files (``data_dir/logs/worker-<name>.log``, see ``imgaudit.services.runfiles``)
so ``imgaudit worker logs`` can find it without being told where it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
import weakref
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from imgaudit.config import Settings
from imgaudit.errors import ConfigError
from imgaudit.services.runfiles import log_path

# The handlers ``configure_logging`` installed: a later call replaces these and leaves any others alone.
_INSTALLED: weakref.WeakSet[logging.Handler] = weakref.WeakSet()

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is worth keeping.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _utc_stamp(created: float) -> str:
    """``2026-11-22T01:02:03.456Z``: sortable, unambiguous across hosts and DST changes."""
    dt = datetime.fromtimestamp(created, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC timestamp> LEVEL logger message`` plus any traceback on the following lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc_stamp(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so log shippers need no parsing rules: ts, level, logger, msg, the
    record's ``extra=`` fields (``event``, ``timings``...) and the traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        row: dict[str, Any] = {
            "ts": _utc_stamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in row:
                row[key] = value
        if record.exc_info:
            row["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            row["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(row, ensure_ascii=False, default=str)


class _WorkerFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file that, for a detached worker, also owns file descriptors 1 and 2.

    ``worker start`` points the child's stdout/stderr at the log file so a crash before logging is set
    up is still recorded. Without help those descriptors would keep writing to the renamed file after a
    rotation; re-pointing them at every rollover keeps tracebacks, C-library warnings and the like in
    the current file.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int, capture_std: bool) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=False)
        self.capture_std = capture_std
        self._point_std_here()

    def _point_std_here(self) -> None:
        if not self.capture_std or self.stream is None:
            return
        for std in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                std.flush()
        fd = self.stream.fileno()
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def doRollover(self) -> None:
        super().doRollover()
        self._point_std_here()


def configure_logging(settings: Settings, name: str, *, to_stderr: bool, capture_std: bool = False) -> Path:
    """Send imgaudit's logs to ``data_dir/logs/worker-<name>.log`` (and stderr when ``to_stderr``).

    The ``imgaudit`` logger gets ``settings.log.level``; the root logger stays at WARNING or above so
    chatty libraries (HTTP clients log every request at INFO) do not drown the worker's own lines.
    ``capture_std`` (detached workers only) keeps file descriptors 1 and 2 on the current log file
    across rotations. Calling this again replaces the handlers it installed before, so nothing is
    logged twice. Returns the log file's path.
    """
    path = log_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    level = logging.getLevelName(settings.log.level.strip().upper())
    if not isinstance(level, int):
        raise ConfigError(f"invalid log.level {settings.log.level!r}: use DEBUG, INFO, WARNING or ERROR")

    formatter: logging.Formatter = JsonFormatter() if settings.log.json_lines else TextFormatter()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h in _INSTALLED]:
        root.removeHandler(handler)
        handler.close()

    handlers: list[logging.Handler] = [
        _WorkerFileHandler(path, settings.log.max_bytes, settings.log.backups, capture_std)
    ]
    if to_stderr:
        stream: TextIO = sys.stderr
        handlers.append(logging.StreamHandler(stream))
    for handler in handlers:
        handler.setFormatter(formatter)
        _INSTALLED.add(handler)
        root.addHandler(handler)

    root.setLevel(max(logging.WARNING, level))
    logging.getLogger("imgaudit").setLevel(level)
    logging.captureWarnings(True)  # warnings.warn() goes to the log too, formatted like the rest
    if capture_std:
        _log_uncaught_exceptions()
    return path


def _log_uncaught_exceptions() -> None:
    """A detached worker's crash becomes one log record (a JSON line in JSON mode), not a raw traceback
    on stderr that log shippers would split into unparseable lines."""
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt | SystemExit):
            previous(exc_type, exc, tb)
            return
        logging.getLogger("imgaudit").critical("worker crashed: %s", exc, exc_info=(exc_type, exc, tb))

    sys.excepthook = hook
